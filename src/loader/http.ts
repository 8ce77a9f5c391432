// HTTP access to checkpoint files: whole small files (JSON, tokenizer) and a
// Range-request ByteSource for safetensors, so each tensor is its own request
// and a checkpoint is never held whole in memory. Works wherever a global
// fetch exists (browsers, Node >= 18, workers).
//
// Failure policy (one place, so every caller agrees):
//   404 (and the hub's 401 RepoNotFound)  -> model_not_found, naming the URL
//   408/425/429/5xx, network errors, a body cut short -> retried with
//     exponential backoff; a cut body resumes from the last byte received;
//     after maxRetries consecutive failures without progress -> download_failed
//   other HTTP errors                      -> download_failed with the status
//   fewer bytes than asked (file too short, 416) or the file's ETag changing
//     between requests                     -> integrity_failed
//   signal aborted                         -> aborted
import { WebvlmError } from "../api/errors.ts";
import type { ByteSource } from "./safetensors.ts";

export type FetchFn = (input: string, init?: RequestInit) => Promise<Response>;

export interface HttpOptions {
  /** Defaults to the global fetch. */
  fetch?: FetchFn;
  signal?: AbortSignal;
  /** Extra request headers (e.g. Authorization for gated hub repos). */
  headers?: Record<string, string>;
  /** Consecutive failed attempts allowed before giving up (default 4). */
  maxRetries?: number;
  /** First backoff delay; doubles per failure (default 300 ms). */
  retryDelayMs?: number;
  /** Cap on one backoff delay, Retry-After included (default 8 s). */
  maxRetryDelayMs?: number;
}

// ---------------------------------------------------------------- hub URLs

let hubBase = "https://huggingface.co";

/** Where hub ids resolve; tests point it at a local server. */
export function setHubBaseUrl(url: string): void {
  hubBase = url.replace(/\/+$/, "");
}

export function getHubBaseUrl(): string {
  return hubBase;
}

/** Hub repo ids: "owner/name", optionally "@revision" (a branch, tag, commit or refs/pr/N). */
const HUB_ID = /^([A-Za-z0-9][\w.-]*\/[\w.-]+)(?:@(\S+))?$/;

export function parseHubId(id: string): { repo: string; revision: string } | undefined {
  const m = HUB_ID.exec(id);
  if (!m || m[1].includes("..")) return undefined;
  return { repo: m[1], revision: m[2] ?? "main" };
}

/** https://huggingface.co/{repo}/resolve/{revision}/{file}, as huggingface_hub's hf_hub_url builds it. */
export function hubFileUrl(repo: string, file: string, revision = "main", base = hubBase): string {
  // The revision is quoted whole ("refs/pr/1" -> "refs%2Fpr%2F1"); file paths keep their slashes.
  return `${base.replace(/\/+$/, "")}/${repo}/resolve/${encodeURIComponent(revision)}/${encodePath(file)}`;
}

/** A file under a static base URL (which must end in "/"). */
export function staticFileUrl(base: string, file: string): string {
  return new URL(encodePath(file), base).href;
}

function encodePath(file: string): string {
  return file.split("/").map(encodeURIComponent).join("/");
}

// ---------------------------------------------------------------- shared plumbing

interface Resolved {
  fetch: FetchFn;
  signal?: AbortSignal;
  headers: Record<string, string>;
  maxRetries: number;
  retryDelayMs: number;
  maxRetryDelayMs: number;
}

function resolveOptions(o: HttpOptions): Resolved {
  const f = o.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
  if (!f) throw new WebvlmError("unsupported_feature", "no fetch() in this environment; pass options.fetch");
  return {
    fetch: f,
    signal: o.signal,
    headers: o.headers ?? {},
    maxRetries: Math.max(0, o.maxRetries ?? 4),
    retryDelayMs: Math.max(0, o.retryDelayMs ?? 300),
    maxRetryDelayMs: Math.max(0, o.maxRetryDelayMs ?? 8000),
  };
}

const RETRY_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);

function abortedError(url: string): WebvlmError {
  return new WebvlmError("aborted", `download of ${url} was aborted`, { url });
}

function checkAbort(o: Resolved, url: string): void {
  if (o.signal?.aborted) throw abortedError(url);
}

/** A transient failure worth retrying; carries what to report if retries run out. */
class Transient extends Error {
  constructor(message: string, readonly status?: number, readonly retryAfterMs?: number) {
    super(message);
  }
}

/** Maps a non-success status to a final error or a Transient to retry. */
function statusError(res: Response, url: string): WebvlmError | Transient {
  const s = res.status;
  // The hub answers 401 (not 404) for repos that do not exist, so as not to leak private names.
  const hubCode = res.headers.get("x-error-code");
  if (s === 404 || s === 410 || (s === 401 && hubCode === "RepoNotFound")) {
    return new WebvlmError("model_not_found", `not found: ${url} (HTTP ${s})`, { url, status: s });
  }
  if (RETRY_STATUS.has(s)) {
    const ra = Number(res.headers.get("retry-after"));
    return new Transient(`HTTP ${s} ${res.statusText}`.trim(), s, Number.isFinite(ra) && ra > 0 ? ra * 1000 : undefined);
  }
  const hint = s === 401 || s === 403 ? " (gated or private repo? pass an Authorization header)" : "";
  return new WebvlmError("download_failed", `HTTP ${s} ${res.statusText} for ${url}${hint}`.replace(/ +/g, " "), { url, status: s });
}

function sleep(ms: number, o: Resolved, url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (o.signal?.aborted) return reject(abortedError(url));
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortedError(url));
    };
    const t = setTimeout(() => {
      o.signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    o.signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Runs `attempt` until it succeeds, retrying Transient failures (and network
 * errors) with backoff. `progressed` says whether the failed attempt received
 * any bytes: progress resets the count, so a flaky link that keeps delivering
 * still finishes while a dead one stops after maxRetries tries.
 */
async function withRetries<T>(o: Resolved, url: string, attempt: () => Promise<T>, progressed: () => boolean): Promise<T> {
  let failures = 0;
  for (;;) {
    checkAbort(o, url);
    let transient: Transient;
    try {
      return await attempt();
    } catch (e) {
      if (o.signal?.aborted) throw abortedError(url);
      if (e instanceof WebvlmError) throw e;
      transient = e instanceof Transient ? e : new Transient(networkMessage(e));
    }
    failures = progressed() ? 1 : failures + 1;
    if (failures > o.maxRetries) {
      throw new WebvlmError("download_failed", `download of ${url} failed after ${failures} attempts: ${transient.message}`, {
        url,
        status: transient.status,
        attempts: failures,
      });
    }
    const backoff = Math.min(o.maxRetryDelayMs, o.retryDelayMs * 2 ** (failures - 1));
    const delay = Math.min(o.maxRetryDelayMs, transient.retryAfterMs ?? backoff * (0.75 + 0.5 * Math.random()));
    await sleep(delay, o, url);
  }
}

function networkMessage(e: unknown): string {
  const err = e as { message?: string; cause?: { message?: string; code?: string } };
  const cause = err?.cause?.code ?? err?.cause?.message;
  return `${err?.message ?? String(e)}${cause ? ` (${cause})` : ""}`;
}

async function doFetch(o: Resolved, url: string, extra: Record<string, string>): Promise<Response> {
  try {
    return await o.fetch(url, { headers: { ...o.headers, ...extra }, signal: o.signal, redirect: "follow" });
  } catch (e) {
    if (o.signal?.aborted) throw abortedError(url);
    throw new Transient(networkMessage(e));
  }
}

/** Drains a response we will not read (frees the connection); errors do not matter. */
function discard(res: Response): void {
  res.body?.cancel().catch(() => undefined);
}

// ---------------------------------------------------------------- validators

/** What identifies a file's version on the server (for the cache's revalidation). */
export interface FileValidators {
  size?: number;
  etag?: string;
  lastModified?: string;
  /** The whole file's SHA-256 (hex) where the server publishes it (the hub's X-Linked-Etag for LFS files). */
  sha256?: string;
}

const SHA256_TAG = /^(?:W\/)?"?([0-9a-f]{64})"?$/i;

/**
 * ETag, Last-Modified and, where given, the file's SHA-256: the hub's X-Linked-Etag (an LFS
 * file's sha256) or, when `etagIsSha256` (hub URLs, whose CDN answers with the LFS oid as ETag
 * after the redirect), a 64-hex ETag.
 */
export function validatorsOf(res: Response, etagIsSha256 = false): FileValidators {
  const etag = res.headers.get("etag") ?? undefined;
  const lastModified = res.headers.get("last-modified") ?? undefined;
  const linked = SHA256_TAG.exec(res.headers.get("x-linked-etag")?.trim() ?? "")?.[1];
  const fromEtag = etagIsSha256 && etag && !etag.startsWith("W/") ? SHA256_TAG.exec(etag.trim())?.[1] : undefined;
  const sha = linked ?? fromEtag;
  return { etag, lastModified, sha256: sha?.toLowerCase() };
}

export interface ProbeOptions extends HttpOptions {
  etagIsSha256?: boolean;
}

/**
 * One conditional-style request that costs one byte: GET with Range: bytes=0-0, read for the
 * file's validators and size (Content-Range's total). No retries: a failure (offline) is the
 * caller's to ignore.
 */
export async function probeFile(url: string, opts: ProbeOptions = {}): Promise<FileValidators> {
  const o = { ...resolveOptions(opts), maxRetries: 0 };
  checkAbort(o, url);
  let res: Response;
  try {
    res = await o.fetch(url, { headers: { ...o.headers, Range: "bytes=0-0" }, signal: o.signal, redirect: "follow" });
  } catch (e) {
    if (o.signal?.aborted) throw abortedError(url);
    throw new WebvlmError("download_failed", `cannot reach ${url}: ${networkMessage(e)}`, { url });
  }
  discard(res);
  if (res.status === 416) {
    // An empty file: nothing at byte 0.
    const total = parseContentRange(res.headers.get("content-range")?.replace("*", "0-0") ?? null)?.total;
    return { ...validatorsOf(res, opts.etagIsSha256), size: total ?? 0 };
  }
  if (res.status !== 206 && res.status !== 200) {
    const err = statusError(res, url);
    throw err instanceof WebvlmError ? err : new WebvlmError("download_failed", `${url}: ${err.message}`, { url, status: res.status });
  }
  let size: number | undefined;
  if (res.status === 206) size = parseContentRange(res.headers.get("content-range"))?.total;
  else {
    const len = res.headers.get("content-length");
    if (len !== null && !res.headers.get("content-encoding")) size = Number(len);
  }
  return { ...validatorsOf(res, opts.etagIsSha256), size };
}

// ---------------------------------------------------------------- whole files

export interface FetchFileOptions extends HttpOptions {
  /** Bytes received so far and the expected total (Content-Length, when sent). */
  onProgress?: (loaded: number, total: number | undefined) => void;
  /** The answering response's validators (ETag, Last-Modified, SHA-256 when published). */
  onValidators?: (v: FileValidators) => void;
  /** Treat a 64-hex ETag as the file's SHA-256 (hub URLs). */
  etagIsSha256?: boolean;
}

/**
 * GETs a whole (small) file. Returns undefined for a 404 when `optional`,
 * so "this checkpoint has no chat_template.jinja" is not an error.
 */
export async function fetchFile(url: string, opts: FetchFileOptions = {}, optional = false): Promise<Uint8Array | undefined> {
  const o = resolveOptions(opts);
  let progressed = false;
  return withRetries(o, url, async () => {
    progressed = false;
    const res = await doFetch(o, url, {});
    if (!res.ok) {
      discard(res);
      const err = statusError(res, url);
      if (optional && err instanceof WebvlmError && err.code === "model_not_found") return undefined;
      throw err;
    }
    opts.onValidators?.(validatorsOf(res, opts.etagIsSha256));
    const lenHeader = res.headers.get("content-length");
    // A compressed body's Content-Length counts compressed bytes: no total then.
    const total = lenHeader !== null && !res.headers.get("content-encoding") ? Number(lenHeader) : undefined;
    const chunks: Uint8Array[] = [];
    let loaded = 0;
    if (res.body) {
      const reader = res.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          chunks.push(value);
          loaded += value.length;
          progressed = true;
          opts.onProgress?.(loaded, total);
        }
      } catch (e) {
        if (o.signal?.aborted) throw abortedError(url);
        throw new Transient(`connection lost after ${loaded} bytes: ${networkMessage(e)}`);
      }
    }
    if (total !== undefined && loaded < total) throw new Transient(`body ended after ${loaded} of ${total} bytes`);
    const out = new Uint8Array(loaded);
    let p = 0;
    for (const c of chunks) {
      out.set(c, p);
      p += c.length;
    }
    opts.onProgress?.(loaded, total ?? loaded);
    return out;
  }, () => progressed);
}

// ---------------------------------------------------------------- ranged reads

export interface HttpSourceOptions extends HttpOptions {
  /**
   * Bytes fetched at open (one Range request that also yields the size);
   * later reads inside them cost no request. 64 KiB holds most safetensors
   * headers, so a shard's header is one small request. Default 65536.
   */
  prefixBytes?: number;
  /** Treat a 64-hex ETag as the file's SHA-256 (hub URLs). */
  etagIsSha256?: boolean;
}

interface ContentRange {
  start: number;
  end: number;
  total?: number;
}

function parseContentRange(v: string | null): ContentRange | undefined {
  const m = v === null ? null : /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(v.trim());
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === "*" ? undefined : Number(m[3]) };
}

/**
 * A ByteSource over one URL using Range requests. A server that ignores
 * Range (answers 200 with the whole file) still works: the body is read only
 * up to the last byte needed and then cancelled.
 */
export class HttpByteSource implements ByteSource {
  size?: number;
  /** The file's ETag at open; a later response with another ETag is a changed file. */
  etag?: string;
  /** The file's Last-Modified at open. */
  lastModified?: string;
  /** The whole file's SHA-256 (hex), where the server published it (see validatorsOf). */
  sha256?: string;
  /** False once the server answered a Range request with 200. */
  rangeSupported = true;
  /** HTTP requests made (retries included), for diagnostics and tests. */
  requests = 0;
  private prefix = new Uint8Array(0);
  private readonly o: Resolved;
  private readonly etagIsSha256: boolean;

  private constructor(readonly url: string, opts: HttpSourceOptions) {
    this.o = resolveOptions(opts);
    this.etagIsSha256 = opts.etagIsSha256 ?? false;
  }

  /** Opens `url`: fetches the prefix and learns the size and ETag. */
  static async open(url: string, opts: HttpSourceOptions = {}): Promise<HttpByteSource> {
    const src = new HttpByteSource(url, opts);
    const want = Math.max(1, Math.trunc(opts.prefixBytes ?? 65536));
    const buf = new Uint8Array(want);
    const got = await src.fill(buf, 0, undefined, true);
    src.prefix = buf.subarray(0, got);
    // Size unknown (Content-Range total "*") but the file ended early: that is its size.
    if (src.size === undefined && got < want) src.size = got;
    return src;
  }

  /**
   * Reads exactly `length` bytes at `offset` (fewer is integrity_failed).
   * `onChunk(n)` is told of every n bytes received, for progress.
   */
  async read(offset: number, length: number, onChunk?: (bytes: number) => void): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new WebvlmError("bad_request", `bad range read at ${offset} (+${length}) of ${this.url}`);
    }
    if (length === 0) return new Uint8Array(0);
    if (offset + length <= this.prefix.length) {
      onChunk?.(length);
      return this.prefix.slice(offset, offset + length);
    }
    if (this.size !== undefined && offset + length > this.size) throw this.short(offset, length, this.size - offset);
    const out = new Uint8Array(length);
    const got = await this.fill(out, offset, onChunk, false);
    if (got < length) throw this.short(offset, length, got);
    return out;
  }

  private short(offset: number, length: number, got: number): WebvlmError {
    return new WebvlmError(
      "integrity_failed",
      `${this.url}: wanted ${length} bytes at offset ${offset}, the file has only ${Math.max(0, got)} there (truncated file?)`,
      { url: this.url, offset, length, got: Math.max(0, got), size: this.size },
    );
  }

  /**
   * Fills `out` with the bytes from `offset`, resuming after a cut connection.
   * Returns the count filled; less than out.length only at end of file, and
   * then only when `allowShort` (otherwise integrity_failed).
   */
  private async fill(out: Uint8Array, offset: number, onChunk: ((n: number) => void) | undefined, allowShort: boolean): Promise<number> {
    // `st.got` survives a failed attempt, so the retry resumes where the cut happened.
    const st = { got: 0 };
    let before = 0;
    return withRetries(this.o, this.url, async () => {
      const got = st.got;
      before = got;
      const start = offset + got;
      const end = offset + out.length - 1;
      this.requests++;
      const res = await doFetch(this.o, this.url, { Range: `bytes=${start}-${end}` });
      if (res.status === 416) {
        discard(res);
        // Nothing at `start`: the file ends before it.
        const total = parseContentRange(res.headers.get("content-range")?.replace("*", "0-0") ?? null)?.total;
        if (total !== undefined) this.size = total;
        if (allowShort) return got;
        throw this.short(offset, out.length, got);
      }
      if (res.status !== 206 && res.status !== 200) {
        discard(res);
        throw statusError(res, this.url);
      }
      this.checkEtag(res);
      let skip = 0;
      let available: number | undefined; // bytes this response promises from `start`
      if (res.status === 206) {
        const cr = parseContentRange(res.headers.get("content-range"));
        if (!cr || cr.start !== start || cr.end < cr.start) {
          discard(res);
          throw new WebvlmError("download_failed", `${this.url}: asked for bytes ${start}-${end}, got Content-Range ${JSON.stringify(res.headers.get("content-range"))}`, { url: this.url, status: 206 });
        }
        if (cr.total !== undefined) this.size = cr.total;
        available = cr.end - cr.start + 1;
      } else {
        // Range ignored: the body is the whole file; skip to `start`.
        this.rangeSupported = false;
        skip = start;
        const len = res.headers.get("content-length");
        if (len !== null && !res.headers.get("content-encoding")) {
          this.size = Number(len);
          available = Math.max(0, this.size - start);
        }
      }
      await this.consume(res, out, st, skip, onChunk);
      if (st.got === out.length) return st.got;
      if (available !== undefined && offset + st.got < start + available) {
        throw new Transient(`body ended after ${offset + st.got - start} of ${available} bytes`);
      }
      // The response was complete and the file simply ends here.
      if (this.size === undefined) this.size = offset + st.got;
      if (allowShort) return st.got;
      throw this.short(offset, out.length, st.got);
    }, () => st.got > before);
  }

  /** Copies the body into out[got..], dropping `skip` leading bytes; cancels once full. */
  private async consume(res: Response, out: Uint8Array, st: { got: number }, skip: number, onChunk?: (n: number) => void): Promise<void> {
    if (!res.body) return;
    const reader = res.body.getReader();
    try {
      while (st.got < out.length) {
        const { done, value } = await reader.read();
        if (done) return;
        let chunk = value;
        if (skip > 0) {
          const s = Math.min(skip, chunk.length);
          skip -= s;
          chunk = chunk.subarray(s);
        }
        const n = Math.min(chunk.length, out.length - st.got);
        if (n === 0) continue;
        out.set(chunk.subarray(0, n), st.got);
        st.got += n;
        onChunk?.(n);
      }
    } catch (e) {
      if (this.o.signal?.aborted) throw abortedError(this.url);
      throw new Transient(`connection lost after ${st.got} bytes: ${networkMessage(e)}`);
    } finally {
      // Full (or failed): stop the rest of the body, e.g. a 200 whole-file answer.
      reader.cancel().catch(() => undefined);
    }
  }

  private checkEtag(res: Response): void {
    const tag = res.headers.get("etag");
    if (this.etag === undefined && this.lastModified === undefined && this.sha256 === undefined) {
      const v = validatorsOf(res, this.etagIsSha256);
      this.lastModified = v.lastModified;
      this.sha256 = v.sha256;
    }
    if (tag === null) return;
    if (this.etag === undefined) this.etag = tag;
    else if (tag !== this.etag) {
      discard(res);
      throw new WebvlmError("integrity_failed", `${this.url} changed on the server while it was being read (ETag ${this.etag} -> ${tag})`, {
        url: this.url,
        etag: this.etag,
        newEtag: tag,
      });
    }
  }
}
