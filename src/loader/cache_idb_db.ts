// The weight cache's IndexedDB layout (cache_idb.ts describes it): options, manifest and file
// entry types, the database handle, record keys and the manifest arithmetic shared by the caching
// store and the management API.
import { createStore, type UseStore } from "idb-keyval";
import type { FetchFn } from "./http.ts";
import type { ProgressCallback } from "./progress.ts";

export const DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024;
export const DEFAULT_DB = "webvlm-cache";
export const OBJECT_STORE = "chunks";

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
  /** Ask the server once per load whether each cached file changed (default true; see the top of this file). */
  revalidate?: boolean;
}

export interface FileEntry {
  /** chunked: a large file stored in chunks; whole: a small file; absent: known not to exist. */
  kind: "chunked" | "whole" | "absent";
  size: number;
  chunkBytes?: number;
  chunks?: number;
  /** Indices of the stored chunks. */
  present?: number[];
  etag?: string;
  lastModified?: string;
  complete: boolean;
  /** SHA-256 (hex) of each stored chunk, by index (chunked files). */
  sums?: Record<string, string>;
  /** SHA-256 (hex) of the file (whole files: of the stored bytes; chunked: as the server published it). */
  sha256?: string;
  /** A chunked file whose whole-file sha256 was checked after its download. */
  verified?: boolean;
}

export interface Manifest {
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
export function db(name = DEFAULT_DB): UseStore {
  let s = stores.get(name);
  if (!s) stores.set(name, (s = createStore(name, OBJECT_STORE)));
  return s;
}

export const mKey = (model: string): IDBValidKey => ["m", model];
export const fKey = (model: string, file: string): IDBValidKey => ["f", model, file];
export const cKey = (model: string, file: string, i: number): IDBValidKey => ["c", model, file, i];
export const qKey = (model: string, key: string): IDBValidKey => ["q", model, key];
// [] sorts after every string and number, so [...prefix, []] bounds a prefix's range.
export const under = (...prefix: IDBValidKey[]): IDBKeyRange => IDBKeyRange.bound(prefix, [...prefix, []]);

/** `fetch` (or the global one) with the HTTP cache bypassed: cached files live in IndexedDB instead. */
export function noStoreFetch(f?: FetchFn): FetchFn {
  return (input, init) => (f ?? globalThis.fetch.bind(globalThis))(input, { ...init, cache: "no-store" });
}

/** Whether this environment has IndexedDB (browsers, workers). */
export function weightCacheAvailable(): boolean {
  return typeof indexedDB !== "undefined" && typeof IDBKeyRange !== "undefined";
}

export function isQuotaError(e: unknown): boolean {
  const name = (e as { name?: string } | null)?.name;
  return name === "QuotaExceededError" || (e as { code?: number } | null)?.code === 22;
}

export function chunkLen(e: FileEntry, i: number): number {
  const cb = e.chunkBytes!;
  return Math.max(0, Math.min(cb, e.size - i * cb));
}

export function storedBytes(e: FileEntry): number {
  if (e.kind === "whole") return e.size;
  if (e.kind !== "chunked") return 0;
  return (e.present ?? []).reduce((s, i) => s + chunkLen(e, i), 0);
}

export function summarize(key: string, files: Record<string, FileEntry>): Manifest {
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

export function info(m: Manifest): CachedModelInfo {
  const files = Object.entries(m.files)
    .filter(([, e]) => e.kind !== "absent")
    .map(([file, e]) => ({ file, size: e.size, cachedBytes: storedBytes(e), complete: e.complete }));
  return { key: m.key, bytes: m.bytes, complete: m.complete, files, updated: m.updated };
}
