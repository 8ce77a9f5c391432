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
// Validity: a complete file is served with no request at all (the manifest
// says what exists). An incomplete one is reopened on the server first (a
// 64 KiB probe that also yields size and ETag); if either changed, the file's
// chunks are dropped and it is downloaded again. A "main"-revision hub model
// that changes on the server after it was fully cached keeps its cached bytes
// until deleteCachedModel.
import { createStore, get, promisifyRequest, set, type UseStore } from "idb-keyval";
import type { PackedQuant } from "../quant/pack.ts";
import type { PackedWeightCache } from "../quant/packed_cache.ts";
import { WebvlmError } from "../api/errors.ts";
import type { CheckpointStore, ProgressiveByteSource } from "./checkpoint.ts";
import type { FetchFn } from "./http.ts";
import { FileProgress, progressEvent, type ProgressCallback } from "./progress.ts";

export const DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024;
const DEFAULT_DB = "webvlm-cache";
const OBJECT_STORE = "chunks";

export interface StorageEstimateLike {
  usage?: number;
  quota?: number;
}

export interface WeightCacheOptions {
  /** Bytes per stored chunk (and per Range request) of a large file; default 32 MiB. Files already cached keep theirs. */
  chunkBytes?: number;
  /** IndexedDB database name (default "webvlm-cache"). */
  dbName?: string;
  /** Chunks downloaded at once (default 4). */
  maxConcurrentDownloads?: number;
  /** Ask navigator.storage.persist() before the first download (default true). */
  persist?: boolean;
  /** Replaces navigator.storage.estimate() (tests, or a caller's own budget). */
  storageEstimate?: () => Promise<StorageEstimateLike>;
  /** "cache" events for bytes read from IndexedDB, "download" events for bytes fetched. */
  onProgress?: ProgressCallback;
}

interface FileEntry {
  /** chunked: a large file stored in chunks; whole: a small file; absent: known not to exist. */
  kind: "chunked" | "whole" | "absent";
  size: number;
  chunkBytes?: number;
  chunks?: number;
  /** Indices of the stored chunks. */
  present?: number[];
  etag?: string;
  complete: boolean;
}

interface Manifest {
  version: 1;
  key: string;
  files: Record<string, FileEntry>;
  /** Bytes stored (whole files + present chunks). */
  bytes: number;
  /** Every chunked file has all its chunks. */
  complete: boolean;
  updated: number;
}

export interface CachedFileInfo {
  file: string;
  size: number;
  cachedBytes: number;
  complete: boolean;
}

export interface CachedModelInfo {
  key: string;
  bytes: number;
  complete: boolean;
  files: CachedFileInfo[];
  updated: number;
}

// ---------------------------------------------------------------- database

const stores = new Map<string, UseStore>();
function db(name = DEFAULT_DB): UseStore {
  let s = stores.get(name);
  if (!s) stores.set(name, (s = createStore(name, OBJECT_STORE)));
  return s;
}

const mKey = (model: string): IDBValidKey => ["m", model];
const fKey = (model: string, file: string): IDBValidKey => ["f", model, file];
const cKey = (model: string, file: string, i: number): IDBValidKey => ["c", model, file, i];
const qKey = (model: string, key: string): IDBValidKey => ["q", model, key];
// [] sorts after every string and number, so [...prefix, []] bounds a prefix's range.
const under = (...prefix: IDBValidKey[]): IDBKeyRange => IDBKeyRange.bound(prefix, [...prefix, []]);

/** `fetch` (or the global one) with the HTTP cache bypassed: cached files live in IndexedDB instead. */
export function noStoreFetch(f?: FetchFn): FetchFn {
  return (input, init) => (f ?? globalThis.fetch.bind(globalThis))(input, { ...init, cache: "no-store" });
}

/** Whether this environment has IndexedDB (browsers, workers). */
export function weightCacheAvailable(): boolean {
  return typeof indexedDB !== "undefined" && typeof IDBKeyRange !== "undefined";
}

function isQuotaError(e: unknown): boolean {
  const name = (e as { name?: string } | null)?.name;
  return name === "QuotaExceededError" || (e as { code?: number } | null)?.code === 22;
}

function chunkLen(e: FileEntry, i: number): number {
  const cb = e.chunkBytes!;
  return Math.max(0, Math.min(cb, e.size - i * cb));
}

function storedBytes(e: FileEntry): number {
  if (e.kind === "whole") return e.size;
  if (e.kind !== "chunked") return 0;
  return (e.present ?? []).reduce((s, i) => s + chunkLen(e, i), 0);
}

function summarize(key: string, files: Record<string, FileEntry>): Manifest {
  let bytes = 0;
  let chunked = 0;
  let complete = true;
  for (const e of Object.values(files)) {
    bytes += storedBytes(e);
    if (e.kind === "chunked") {
      chunked++;
      complete &&= e.complete;
    }
  }
  return { version: 1, key, files, bytes, complete: complete && chunked > 0, updated: Date.now() };
}

function info(m: Manifest): CachedModelInfo {
  const files = Object.entries(m.files)
    .filter(([, e]) => e.kind !== "absent")
    .map(([file, e]) => ({ file, size: e.size, cachedBytes: storedBytes(e), complete: e.complete }));
  return { key: m.key, bytes: m.bytes, complete: m.complete, files, updated: m.updated };
}

// ---------------------------------------------------------------- management API

/** Every cached model, with its stored bytes. */
export async function listCachedModels(opts: { dbName?: string } = {}): Promise<CachedModelInfo[]> {
  const all = await db(opts.dbName)("readonly", (s) => promisifyRequest(s.getAll(under("m"))) as Promise<Manifest[]>);
  return all.map(info);
}

/** Removes one model's files and manifest; false when it was not cached. */
export async function deleteCachedModel(key: string, opts: { dbName?: string } = {}): Promise<boolean> {
  return db(opts.dbName)("readwrite", async (s) => {
    const had = (await promisifyRequest(s.count(mKey(key)))) > 0;
    s.delete(under("c", key));
    s.delete(under("f", key));
    s.delete(under("q", key));
    s.delete(mKey(key));
    await promisifyRequest(s.transaction);
    return had;
  });
}

/** Removes every cached model. */
export async function clearCache(opts: { dbName?: string } = {}): Promise<void> {
  await db(opts.dbName)("readwrite", (s) => {
    s.clear();
    return promisifyRequest(s.transaction);
  });
}

/** navigator.storage's usage/quota (bytes) and whether storage is persistent; {} where unknown. */
export async function storageEstimate(): Promise<{ usage?: number; quota?: number; persisted?: boolean }> {
  const st = typeof navigator !== "undefined" ? navigator.storage : undefined;
  if (!st?.estimate) return {};
  const e = await st.estimate();
  const persisted = st.persisted ? await st.persisted().catch(() => undefined) : undefined;
  return { usage: e.usage, quota: e.quota, persisted };
}

/**
 * Quantized weights of one cached model (kept beside its files, deleted with it), so a second
 * load skips quantizing. A failed write (quota) only means the next load quantizes again.
 */
export function packedWeightCache(modelKey: string, opts: { dbName?: string } = {}): PackedWeightCache {
  const use = db(opts.dbName);
  return {
    async get(key) {
      try {
        return await get<PackedQuant>(qKey(modelKey, key), use);
      } catch {
        return undefined;
      }
    },
    async put(key, packed) {
      try {
        await set(qKey(modelKey, key), packed, use);
      } catch (e) {
        if (!isQuotaError(e)) throw e;
      }
    },
  };
}

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
  commit(change: (files: Record<string, FileEntry>) => void, put?: [IDBValidKey, unknown], drop?: IDBKeyRange): Promise<void> {
    const run = async (): Promise<void> => {
      const files: Record<string, FileEntry> = JSON.parse(JSON.stringify(this.manifest.files)) as Record<string, FileEntry>;
      change(files);
      const next = summarize(this.key, files);
      try {
        await this.use("readwrite", (s) => {
          if (drop) s.delete(drop);
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

  async readFile(file: string, onProgress?: (loaded: number, total: number | undefined) => void): Promise<Uint8Array | undefined> {
    const e = this.entry(file);
    if (e?.kind === "absent") return undefined;
    if (e?.kind === "whole") {
      const v = await this.use("readonly", (s) => promisifyRequest(s.get(fKey(this.key, file))) as Promise<unknown>).catch(() => undefined);
      const bytes = await toBytes(v);
      if (bytes && bytes.length === e.size) {
        onProgress?.(bytes.length, bytes.length);
        this.emit("cache", file, bytes.length, bytes.length);
        return bytes;
      }
    }
    const bytes = await this.inner.readFile(file, (loaded, total) => {
      onProgress?.(loaded, total);
      this.emit("download", file, loaded, total ?? loaded);
    });
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
    await this.commit((f) => void (f[file] = { kind: "whole", size: bytes.length, complete: true }), [fKey(this.key, file), bytes]).catch(keep);
    return bytes;
  }

  async openFile(file: string): Promise<ProgressiveByteSource> {
    let e = this.entry(file);
    // The stored chunks are the truth (another tab may have added some): reconcile with the keys.
    const keys = await this.use("readonly", (s) => promisifyRequest(s.getAllKeys(under("c", this.key, file))));
    const present = new Set<number>(keys.map((k) => (k as [string, string, string, number])[3]));
    let inner: ProgressiveByteSource | undefined;
    if (!e || e.kind !== "chunked" || present.size < e.chunks!) {
      inner = await this.inner.openFile(file);
      const size = inner.size;
      if (size === undefined) return inner; // no size, no chunking: serve uncached
      const etag = (inner as { etag?: unknown }).etag;
      const tag = typeof etag === "string" ? etag : undefined;
      const changed = !e || e.kind !== "chunked" || e.size !== size || (e.etag !== undefined && tag !== undefined && e.etag !== tag);
      if (changed) {
        // New, or changed on the server: whatever was stored for it is stale.
        const cb = this.chunkBytes;
        const fresh: FileEntry = { kind: "chunked", size, chunkBytes: cb, chunks: Math.ceil(size / cb), present: [], etag: tag, complete: size === 0 };
        await this.commit((f) => void (f[file] = fresh), undefined, under("c", this.key, file));
        present.clear();
        e = fresh;
      } else if (tag !== undefined && e!.etag === undefined) {
        const withTag = { ...e!, etag: tag };
        await this.commit((f) => void (f[file] = { ...f[file], etag: tag }));
        e = withTag;
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
    return new CachedSource(this, file, entry, present, inner, cached, missing, this.opts.onProgress);
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

  /** Stores chunk i of `file` and lists it in the manifest, atomically. */
  putChunk(file: string, i: number, bytes: Uint8Array): Promise<void> {
    return this.commit((f) => {
      const e = f[file];
      if (!e || e.kind !== "chunked") return;
      const p = new Set(e.present ?? []);
      p.add(i);
      e.present = [...p].sort((a, b) => a - b);
      e.complete = e.present.length >= e.chunks!;
    }, [cKey(this.key, file, i), new Blob([bytes as Uint8Array<ArrayBuffer>])]);
  }

  async getChunk(file: string, i: number): Promise<unknown> {
    return this.use("readonly", (s) => promisifyRequest(s.get(cKey(this.key, file, i))) as Promise<unknown>);
  }
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
  private readonly blobs = new Map<number, Blob | Uint8Array>();
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
      let v = this.blobs.get(i);
      if (v === undefined) {
        const got = await this.store.getChunk(this.file, i).catch(() => undefined);
        if (got instanceof Blob || got instanceof Uint8Array) v = got;
      }
      const size = v instanceof Blob ? v.size : v?.length;
      if (v !== undefined && size === len) {
        this.blobs.set(i, v); // a handle: the data stays on disk
        this.cacheProgress.update(String(i), len);
        return v instanceof Blob ? new Uint8Array(await v.slice(from, to).arrayBuffer()) : v.subarray(from, to);
      }
      this.present.delete(i); // lost or damaged: fetch it again
    }
    const bytes = await this.fetchChunk(i);
    return bytes.subarray(from, to);
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
      try {
        await this.store.putChunk(this.file, i, bytes);
        this.present.add(i);
      } catch (e) {
        // Full storage is the caller's to know; any other write failure only costs the caching.
        if (e instanceof WebvlmError) throw e;
      }
      return bytes;
    });
    p.catch((e: unknown) => void (this.stopped ??= e instanceof Error ? e : new Error(String(e))));
    this.inflight.set(i, p);
    p.then(() => this.inflight.delete(i), () => this.inflight.delete(i));
    return p;
  }
}
