// Browser weight cache: a CheckpointStore that wraps another one (HTTP,
// usually) and keeps what it fetched in IndexedDB, so a second load of the
// same model reads from disk instead of the network and an interrupted
// download resumes where it stopped.
//
// Layout (one idb-keyval store, "webvlm-cache"/"chunks", array keys so one
// model's records are a key range):
//   ["m", model]              manifest: every file's size, chunking, ETag, present chunks
//   ["f", model, file]        a small file (JSON, tokenizer) stored whole
//   ["c", model, file, i]     chunk i of a large file, as a Blob (read back by slicing,
//                             so a tensor read loads only its bytes, not the whole chunk)
// A chunk and the manifest that lists it are written in one transaction, so
// a failed write (QuotaExceededError, a closed tab) never records a chunk
// that is not there. The model key is the store's description
// ("owner/name@rev" or the base URL).
//
//   ["q", model, key]         a quantized matrix (packedWeightCache), with its checksums and the
//                             identity of the raw files it was derived from
//
// Integrity: every stored chunk and whole file has its SHA-256 in the manifest
// (sha256.ts says why SHA-256 via Web Crypto), computed from the downloaded
// bytes before they are stored. A chunk is verified the first time a load reads
// it (the whole chunk, once per load; later reads of it slice the verified
// Blob), a whole file on every read. What fails (a flipped bit on disk, a
// chunk without a checksum from an older cache) is dropped and fetched again;
// the model never sees bytes that did not verify. Quantized entries carry the
// SHA-256 of their data and scales and a fingerprint of the raw files' (size,
// ETag, Last-Modified); a bad or stale one is deleted and quantized again.
// Where the server publishes a file's SHA-256 (the hub's X-Linked-Etag), the
// whole file is checked against it once, when its download completes.
//
// Validity: a cached file is revalidated once per load with one cheap request
// (store.stat: GET Range 0-0, comparing size, ETag, else Last-Modified); a
// file that changed is downloaded again (its chunks and the model's quantized
// entries dropped). When the server cannot be reached (offline, a network
// error, a 5xx) the cached copy is used without error. An incomplete chunked
// file is reopened on the server instead (a 64 KiB probe that also yields size
// and ETag), with the same consequences when it changed.
import { promisifyRequest, type UseStore } from "idb-keyval";
import { WebvlmError } from "../api/errors.ts";
import type { CheckpointStore, ProgressiveByteSource } from "./checkpoint.ts";
import type { FileValidators } from "./http.ts";
import { Sha256, sha256Hex } from "./sha256.ts";
import { FileProgress, progressEvent, type ProgressCallback } from "./progress.ts";
import {
  cKey, chunkLen, db, fKey, isQuotaError, mKey, summarize, under, weightCacheAvailable,
  DEFAULT_CHUNK_BYTES, type FileEntry, type Manifest, type StorageEstimateLike, type WeightCacheOptions,
} from "./cache_idb_db.ts";

export {
  DEFAULT_CHUNK_BYTES, noStoreFetch, weightCacheAvailable,
  type CachedFileInfo, type CachedModelInfo, type StorageEstimateLike, type WeightCacheOptions,
} from "./cache_idb_db.ts";
export { clearCache, deleteCachedModel, listCachedModels, packedWeightCache, storageEstimate } from "./cache_idb_admin.ts";

// ---------------------------------------------------------------- the caching store

/**
 * Wraps `inner` with the IndexedDB cache. Where IndexedDB cannot be opened
 * (some private modes), returns `inner` itself: loading still works, uncached.
 */
export async function openCachedStore(inner: CheckpointStore, opts: WeightCacheOptions = {}): Promise<CheckpointStore> {
  if (!weightCacheAvailable()) return inner;
  const use = db(opts.dbName);
  let manifest: Manifest | undefined;
  try {
    manifest = await use("readonly", (s) => promisifyRequest(s.get(mKey(inner.description))) as Promise<Manifest | undefined>);
  } catch {
    return inner;
  }
  return new CachedStore(inner, use, manifest ?? summarize(inner.description, {}), opts);
}

class Semaphore {
  private active = 0;
  private waiting: (() => void)[] = [];
  constructor(private readonly max: number) {}
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await f();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

class CachedStore implements CheckpointStore {
  readonly description: string;
  private readonly key: string;
  private readonly chunkBytes: number;
  readonly downloads: Semaphore;
  /** Writes run one after another, each with the manifest as the last one left it. */
  private writes: Promise<unknown> = Promise.resolve();
  /** Bytes this load still has to download, for the quota check. */
  private reserved = 0;
  private persistAsked = false;

  constructor(
    private readonly inner: CheckpointStore,
    private readonly use: UseStore,
    private manifest: Manifest,
    private readonly opts: WeightCacheOptions,
  ) {
    this.description = inner.description;
    this.key = inner.description;
    this.chunkBytes = Math.max(1, Math.trunc(opts.chunkBytes ?? DEFAULT_CHUNK_BYTES));
    this.downloads = new Semaphore(Math.max(1, opts.maxConcurrentDownloads ?? 4));
  }

  locate(file: string): string {
    return this.inner.locate?.(file) ?? `${file} in ${this.description}`;
  }

  entry(file: string): FileEntry | undefined {
    return this.manifest.files[file];
  }

  /** Applies `change` to a copy of the manifest and writes it, with `put` (a record), in one transaction. */
  commit(change: (files: Record<string, FileEntry>) => void, put?: [IDBValidKey, unknown], drop?: IDBKeyRange | IDBKeyRange[]): Promise<void> {
    const run = async (): Promise<void> => {
      const files: Record<string, FileEntry> = JSON.parse(JSON.stringify(this.manifest.files)) as Record<string, FileEntry>;
      change(files);
      const next = summarize(this.key, files);
      try {
        await this.use("readwrite", (s) => {
          for (const d of drop === undefined ? [] : Array.isArray(drop) ? drop : [drop]) s.delete(d);
          if (put) s.put(put[1], put[0]);
          s.put(next, mKey(this.key));
          return promisifyRequest(s.transaction);
        });
      } catch (e) {
        if (isQuotaError(e)) {
          const est = await this.estimate().catch(() => ({}) as StorageEstimateLike);
          throw new WebvlmError("quota_exceeded", `browser storage is full while caching ${this.key} (${this.manifest.bytes} bytes cached; usage ${est.usage ?? "?"} of quota ${est.quota ?? "?"} bytes); free space or load with cache: false`, { key: this.key, cachedBytes: this.manifest.bytes, usage: est.usage, quota: est.quota });
        }
        throw e;
      }
      this.manifest = next;
    };
    const p = this.writes.then(run, run);
    this.writes = p.catch(() => undefined);
    return p;
  }

  private emit(phase: "cache" | "download", file: string, loaded: number, total: number): void {
    this.opts.onProgress?.(progressEvent(phase, file, loaded, total));
  }

  private readonly revalidations = new Map<string, Promise<boolean>>();

  /**
   * Whether `file` (cached as `e`) changed on the server: one cheap request per file and load.
   * False when it did not, when the server cannot say (offline, an error) and when
   * revalidation is off: the cached copy is then used.
   */
  changedOnServer(file: string, e: FileEntry): Promise<boolean> {
    if (this.opts.revalidate === false || !this.inner.stat) return Promise.resolve(false);
    let p = this.revalidations.get(file);
    if (!p) {
      p = this.inner.stat(file).then((v) => differs(e, v), () => false);
      this.revalidations.set(file, p);
    }
    return p;
  }

  /** Drops the model's quantized entries (their raw files changed). */
  dropsDerived(): IDBKeyRange {
    return under("q", this.key);
  }

  async readFile(file: string, onProgress?: (loaded: number, total: number | undefined) => void): Promise<Uint8Array | undefined> {
    const e = this.entry(file);
    if (e?.kind === "absent") return undefined;
    if (e?.kind === "whole" && e.sha256 !== undefined && !(await this.changedOnServer(file, e))) {
      const v = await this.use("readonly", (s) => promisifyRequest(s.get(fKey(this.key, file))) as Promise<unknown>).catch(() => undefined);
      const bytes = await toBytes(v);
      // Verified on every read (small files); a damaged copy is downloaded again below.
      if (bytes && bytes.length === e.size && (await sha256Hex(bytes)) === e.sha256) {
        onProgress?.(bytes.length, bytes.length);
        this.emit("cache", file, bytes.length, bytes.length);
        return bytes;
      }
    }
    let validators: FileValidators = {};
    const bytes = await this.inner.readFile(file, (loaded, total) => {
      onProgress?.(loaded, total);
      this.emit("download", file, loaded, total ?? loaded);
    }, (v) => void (validators = v));
    // Full storage fails the load (quota_exceeded); any other write failure only costs the caching.
    const keep = (e: unknown): void => {
      if (e instanceof WebvlmError) throw e;
    };
    if (bytes === undefined) {
      // "Known absent" only within a real model: a wrong URL or a server hiccup must not stick.
      if (this.entry("config.json")?.kind !== "whole") return undefined;
      await this.commit((f) => void (f[file] = { kind: "absent", size: 0, complete: true })).catch(keep);
      return undefined;
    }
    const sum = await sha256Hex(bytes);
    if (validators.sha256 !== undefined && validators.sha256 !== sum) {
      throw new WebvlmError("integrity_failed", `${this.locate(file)}: SHA-256 ${sum} does not match the server's ${validators.sha256}`, { file, expected: validators.sha256, actual: sum });
    }
    const entry: FileEntry = { kind: "whole", size: bytes.length, complete: true, sha256: sum, etag: validators.etag, lastModified: validators.lastModified };
    await this.commit((f) => void (f[file] = entry), [fKey(this.key, file), bytes]).catch(keep);
    return bytes;
  }

  async openFile(file: string): Promise<ProgressiveByteSource> {
    let e = this.entry(file);
    // Complete, with a published SHA-256 never checked (a chunk went bad before its download
    // ended): check it now; bad chunks are dropped, fetched below and the file checked again.
    if (e?.kind === "chunked" && e.complete && e.sha256 !== undefined && !e.verified && !(await this.changedOnServer(file, e))) {
      await this.verifyWholeFile(file);
      this.wholeChecks.delete(file);
      e = this.entry(file);
    }
    // The stored chunks are the truth (another tab may have added some): reconcile with the keys.
    const keys = await this.use("readonly", (s) => promisifyRequest(s.getAllKeys(under("c", this.key, file))));
    const present = new Set<number>(keys.map((k) => (k as [string, string, string, number])[3]));
    let inner: ProgressiveByteSource | undefined;
    const complete = e?.kind === "chunked" && present.size >= e.chunks!;
    // A complete file is asked about once (cheap); an incomplete one is reopened below anyway.
    const stale = complete && (await this.changedOnServer(file, e!));
    if (!complete || stale) {
      inner = await this.inner.openFile(file);
      const size = inner.size;
      if (size === undefined) return inner; // no size, no chunking: serve uncached
      const v = inner as { etag?: unknown; lastModified?: unknown; sha256?: unknown };
      const tag = typeof v.etag === "string" ? v.etag : undefined;
      const lastModified = typeof v.lastModified === "string" ? v.lastModified : undefined;
      const sha256 = typeof v.sha256 === "string" ? v.sha256 : undefined;
      const changed = stale || !e || e.kind !== "chunked" || differs(e, { size, etag: tag, lastModified, sha256 });
      if (changed) {
        // New, or changed on the server: whatever was stored for it, and derived from it, is stale.
        const cb = this.chunkBytes;
        const fresh: FileEntry = { kind: "chunked", size, chunkBytes: cb, chunks: Math.ceil(size / cb), present: [], sums: {}, etag: tag, lastModified, sha256, complete: size === 0 };
        const drops = [under("c", this.key, file)];
        if (e) drops.push(this.dropsDerived());
        await this.commit((f) => void (f[file] = fresh), undefined, drops);
        present.clear();
        e = fresh;
      } else if ((tag !== undefined && e!.etag === undefined) || (sha256 !== undefined && e!.sha256 === undefined)) {
        const upd = { etag: e!.etag ?? tag, lastModified: e!.lastModified ?? lastModified, sha256: e!.sha256 ?? sha256 };
        await this.commit((f) => void (f[file] = { ...f[file], ...upd }));
        e = { ...e!, ...upd };
      }
    }
    const entry = e!;
    for (const i of present) if (i >= entry.chunks!) present.delete(i);
    let cached = 0;
    for (const i of present) cached += chunkLen(entry, i);
    const missing = entry.size - cached;
    if (missing > 0) {
      try {
        await this.checkQuota(missing, file);
      } catch (err) {
        await inner?.close?.();
        throw err;
      }
    }
    return new CachedSource(this, file, JSON.parse(JSON.stringify(entry)) as FileEntry, present, inner, cached, missing, this.opts.onProgress);
  }

  async openInner(file: string): Promise<ProgressiveByteSource> {
    return this.inner.openFile(file);
  }

  private estimate(): Promise<StorageEstimateLike> {
    if (this.opts.storageEstimate) return this.opts.storageEstimate();
    const st = typeof navigator !== "undefined" ? navigator.storage : undefined;
    return st?.estimate ? st.estimate() : Promise.resolve({});
  }

  /** Fails early when the bytes still to download cannot fit; asks for persistent storage once. */
  private async checkQuota(missing: number, file: string): Promise<void> {
    if (!this.persistAsked && this.opts.persist !== false) {
      this.persistAsked = true;
      const st = typeof navigator !== "undefined" ? navigator.storage : undefined;
      await st?.persist?.().catch(() => false);
    }
    this.reserved += missing;
    const { usage, quota } = await this.estimate();
    if (quota === undefined) return;
    const free = Math.max(0, quota - (usage ?? 0));
    if (this.reserved > free) {
      throw new WebvlmError(
        "quota_exceeded",
        `not enough browser storage to cache ${this.key}: ${this.reserved} bytes still to download (${file}: ${missing}), ${free} free (usage ${usage ?? 0} of quota ${quota}); free space or load with cache: false`,
        { key: this.key, file, needed: this.reserved, free, usage, quota },
      );
    }
  }

  /** Stores chunk i of `file` and lists it, with its SHA-256, in the manifest, atomically. */
  putChunk(file: string, i: number, bytes: Uint8Array, sum: string): Promise<void> {
    return this.commit((f) => {
      const e = f[file];
      if (!e || e.kind !== "chunked") return;
      const p = new Set(e.present ?? []);
      p.add(i);
      e.present = [...p].sort((a, b) => a - b);
      e.sums = { ...(e.sums ?? {}), [String(i)]: sum };
      e.complete = e.present.length >= e.chunks!;
    }, [cKey(this.key, file, i), new Blob([bytes as Uint8Array<ArrayBuffer>])]);
  }

  private wholeChecks = new Map<string, Promise<void>>();

  /**
   * Once a chunked file with a published SHA-256 is complete: hashes it chunk by chunk (each
   * chunk verified against its own sum too) and compares. A mismatch drops the file's chunks
   * and fails the load with integrity_failed; a match is recorded, so it is checked once.
   */
  verifyWholeFile(file: string): Promise<void> {
    let p = this.wholeChecks.get(file);
    if (!p) {
      p = this.checkWhole(file);
      this.wholeChecks.set(file, p);
    }
    return p;
  }

  private async checkWhole(file: string): Promise<void> {
    const e = this.entry(file);
    if (!e || e.kind !== "chunked" || !e.complete || e.verified || e.sha256 === undefined) return;
    const h = new Sha256();
    for (let i = 0; i < e.chunks!; i++) {
      const bytes = await toBytes(await this.getChunk(file, i).catch(() => undefined));
      if (!bytes || bytes.length !== chunkLen(e, i) || (await sha256Hex(bytes)) !== e.sums?.[String(i)]) {
        // A bad chunk: forget it (it is fetched again and the file checked once that completes).
        const drop = (f: Record<string, FileEntry>): void => {
          const x = f[file];
          if (!x) return;
          x.present = (x.present ?? []).filter((j) => j !== i);
          if (x.sums) delete x.sums[String(i)];
          x.complete = false;
        };
        await this.commit(drop, undefined, IDBKeyRange.only(cKey(this.key, file, i))).catch(() => undefined);
        // Check again once the refetched chunk completes the file (not this settled promise).
        this.wholeChecks.delete(file);
        return;
      }
      h.update(bytes);
    }
    const sum = h.hex();
    if (sum !== e.sha256) {
      await this.commit((f) => void (f[file] = { ...f[file], present: [], sums: {}, complete: false }), undefined, [under("c", this.key, file), this.dropsDerived()]).catch(() => undefined);
      throw new WebvlmError("integrity_failed", `${this.locate(file)}: SHA-256 of the downloaded file is ${sum}, the server published ${e.sha256}`, { file, expected: e.sha256, actual: sum });
    }
    await this.commit((f) => void (f[file] = { ...f[file], verified: true })).catch(() => undefined);
  }

  async getChunk(file: string, i: number): Promise<unknown> {
    return this.use("readonly", (s) => promisifyRequest(s.get(cKey(this.key, file, i))) as Promise<unknown>);
  }
}

/** Whether the server's validators say the file is not the one cached as `e`. */
function differs(e: FileEntry, v: FileValidators): boolean {
  if (v.size !== undefined && v.size !== e.size) return true;
  if (v.sha256 !== undefined && e.sha256 !== undefined && e.kind === "chunked") return v.sha256 !== e.sha256;
  if (v.etag !== undefined && e.etag !== undefined) return v.etag !== e.etag;
  if (v.lastModified !== undefined && e.lastModified !== undefined) return v.lastModified !== e.lastModified;
  return false;
}

async function toBytes(v: unknown): Promise<Uint8Array | undefined> {
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (typeof Blob !== "undefined" && v instanceof Blob) return new Uint8Array(await v.arrayBuffer());
  return undefined;
}

/** One large file: stored chunks are read from IndexedDB, missing ones fetched, verified and stored. */
class CachedSource implements ProgressiveByteSource {
  readonly size: number;
  private readonly inflight = new Map<number, Promise<Uint8Array>>();
  /** Stored chunks verified by this load (a handle: the data stays on disk), or undefined when bad. */
  private readonly verified = new Map<number, Promise<Blob | Uint8Array | undefined>>();
  private readonly cacheProgress: FileProgress;
  private readonly downloadProgress: FileProgress;
  private innerOpening?: Promise<ProgressiveByteSource>;
  /** Set by the first failed download or by close(). */
  private stopped?: Error;

  constructor(
    private readonly store: CachedStore,
    private readonly file: string,
    private readonly entry: FileEntry,
    private readonly present: Set<number>,
    private inner: ProgressiveByteSource | undefined,
    cachedBytes: number,
    missingBytes: number,
    emit: ProgressCallback | undefined,
  ) {
    this.size = entry.size;
    this.cacheProgress = new FileProgress("cache", file, cachedBytes, emit);
    this.downloadProgress = new FileProgress("download", file, missingBytes, emit);
  }

  async close(): Promise<void> {
    this.stopped ??= new WebvlmError("aborted", `${this.file} was closed`);
    await this.inner?.close?.();
  }

  async read(offset: number, length: number, onChunk?: (bytes: number) => void): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new WebvlmError("bad_request", `bad range read at ${offset} (+${length}) of ${this.file}`);
    }
    if (offset + length > this.size) {
      throw new WebvlmError("integrity_failed", `${this.file}: wanted ${length} bytes at offset ${offset}, the file has ${this.size} (truncated file?)`, { file: this.file, offset, length, size: this.size });
    }
    const out = new Uint8Array(length);
    if (length === 0) return out;
    const cb = this.entry.chunkBytes!;
    const first = Math.floor(offset / cb);
    const last = Math.floor((offset + length - 1) / cb);
    const parts: Promise<void>[] = [];
    for (let i = first; i <= last; i++) {
      const start = i * cb;
      const a = Math.max(offset, start);
      const b = Math.min(offset + length, start + chunkLen(this.entry, i));
      parts.push(this.part(i, a - start, b - start).then((bytes) => {
        out.set(bytes, a - offset);
        onChunk?.(bytes.length);
      }));
    }
    await Promise.all(parts);
    return out;
  }

  /** Bytes [from, to) of chunk i. */
  private async part(i: number, from: number, to: number): Promise<Uint8Array> {
    const len = chunkLen(this.entry, i);
    if (this.present.has(i)) {
      let check = this.verified.get(i);
      if (!check) {
        check = this.verifyStored(i, len);
        this.verified.set(i, check);
      }
      const v = await check;
      if (v !== undefined) return v instanceof Blob ? new Uint8Array(await v.slice(from, to).arrayBuffer()) : v.subarray(from, to);
      // Lost, damaged or never checksummed: fetch it again (its bytes move from "cache" to "download").
      if (this.present.delete(i)) {
        this.cacheProgress.totalBytes -= len;
        this.downloadProgress.totalBytes += len;
      }
      this.verified.delete(i);
    }
    const bytes = await this.fetchChunk(i);
    return bytes.subarray(from, to);
  }

  /** Reads stored chunk i whole once and checks its SHA-256 against the manifest's. */
  private async verifyStored(i: number, len: number): Promise<Blob | Uint8Array | undefined> {
    const want = this.entry.sums?.[String(i)];
    if (want === undefined) return undefined;
    const got = await this.store.getChunk(this.file, i).catch(() => undefined);
    if (!(got instanceof Blob || got instanceof Uint8Array)) return undefined;
    if ((got instanceof Blob ? got.size : got.length) !== len) return undefined;
    const bytes = await toBytes(got).catch(() => undefined);
    if (!bytes || (await sha256Hex(bytes)) !== want) return undefined;
    this.cacheProgress.update(String(i), len);
    return got;
  }

  private getInner(): Promise<ProgressiveByteSource> {
    if (this.inner) return Promise.resolve(this.inner);
    this.innerOpening ??= this.store.openInner(this.file).then((src) => {
      const tag = (src as { etag?: unknown }).etag;
      if (src.size !== this.entry.size || (typeof tag === "string" && this.entry.etag !== undefined && tag !== this.entry.etag)) {
        void src.close?.();
        throw new WebvlmError("integrity_failed", `${this.store.locate(this.file)} changed on the server since it was cached; delete the cached model and load again`, { file: this.file });
      }
      this.inner = src;
      return src;
    });
    return this.innerOpening;
  }

  private fetchChunk(i: number): Promise<Uint8Array> {
    let p = this.inflight.get(i);
    if (p) return p;
    p = this.store.downloads.run(async () => {
      // After a failure (or close) queued chunks do not start: the load is over.
      if (this.stopped) throw this.stopped;
      const inner = await this.getInner();
      const start = i * this.entry.chunkBytes!;
      const len = chunkLen(this.entry, i);
      let got = 0;
      const bytes = await inner.read(start, len, (n) => {
        got += n;
        this.downloadProgress.update(String(i), got);
      });
      if (bytes.length !== len) {
        throw new WebvlmError("integrity_failed", `${this.file}: chunk ${i} is ${bytes.length} bytes, expected ${len}`, { file: this.file, chunk: i });
      }
      this.downloadProgress.update(String(i), len);
      const sum = await sha256Hex(bytes);
      try {
        await this.store.putChunk(this.file, i, bytes, sum);
        (this.entry.sums ??= {})[String(i)] = sum;
        this.present.add(i);
      } catch (e) {
        // Full storage is the caller's to know; any other write failure only costs the caching.
        if (e instanceof WebvlmError) throw e;
      }
      // The file's download just completed: check it against the server's SHA-256, if published.
      if (this.entry.sha256 !== undefined && this.present.size >= this.entry.chunks!) await this.store.verifyWholeFile(this.file);
      return bytes;
    });
    p.catch((e: unknown) => void (this.stopped ??= e instanceof Error ? e : new Error(String(e))));
    this.inflight.set(i, p);
    p.then(() => this.inflight.delete(i), () => this.inflight.delete(i));
    return p;
  }
}
