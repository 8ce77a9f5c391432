// Weight-cache checks driven by test/e2e/weight-cache.test.ts: window.__cache.load() loads a
// model with the in-thread engine and the IndexedDB cache, answers one greedy question and
// reports the answer, the error code and the progress bytes per phase; list/remove expose
// the cache management API.
import { Engine } from "../../src/engine/engine.ts";
import { createStore, get, keys, set } from "idb-keyval";
import { deleteCachedModel, listCachedModels, type CachedModelInfo } from "../../src/loader/cache_idb.ts";
import type { ProgressEvent } from "../../src/loader/progress.ts";

export interface CacheLoadOptions {
  model: string;
  chunkBytes: number;
  maxTokens: number;
  /** Pretend the origin has this many bytes of quota (and nothing used). */
  quota?: number;
  /** Weight format of the LLM's linear layers (default f32). */
  quantization?: "f32" | "q4";
  /** WeightCacheOptions.revalidate (default on: one 1-byte request per cached file and load). */
  revalidate?: boolean;
}

export interface CacheLoadReport {
  text?: string;
  error?: string;
  errorCode?: string;
  /** Per phase, the sum over files of the largest loadedBytes seen ("cache", "download" for the weight files only). */
  weightBytes: Record<string, number>;
  phases: string[];
}

async function load(o: CacheLoadOptions): Promise<CacheLoadReport> {
  const latest = new Map<string, ProgressEvent>();
  const phases = new Set<string>();
  const onProgress = (e: ProgressEvent): void => {
    phases.add(e.phase);
    const k = `${e.phase}\u0000${e.file}`;
    if ((latest.get(k)?.loadedBytes ?? -1) < e.loadedBytes) latest.set(k, e);
  };
  const report = (): Pick<CacheLoadReport, "weightBytes" | "phases"> => {
    const weightBytes: Record<string, number> = {};
    for (const e of latest.values()) {
      if (e.file.endsWith(".safetensors")) weightBytes[e.phase] = (weightBytes[e.phase] ?? 0) + e.loadedBytes;
    }
    return { weightBytes, phases: [...phases].sort() };
  };
  const engine = await Engine.create();
  try {
    await engine.load(o.model, {
      quantization: o.quantization ?? "f32",
      embedding: "f32",
      vision: "f32",
      onProgress,
      cache: {
        chunkBytes: o.chunkBytes,
        ...(o.revalidate === undefined ? {} : { revalidate: o.revalidate }),
        storageEstimate: o.quota === undefined ? undefined : async () => ({ usage: 0, quota: o.quota }),
      },
    });
    const r = await engine.chat.completions.create({
      messages: [{ role: "user", content: "Hello, who are you?" }],
      max_tokens: o.maxTokens,
      temperature: 0,
    });
    await engine.unload();
    return { text: r.choices[0].message.content, ...report() };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return { error: String(err.message ?? e), errorCode: err.code, ...report() };
  } finally {
    engine.gpu.destroy();
  }
}

declare global {
  interface Window {
    __cache: {
      load(o: CacheLoadOptions): Promise<CacheLoadReport>;
      list(): Promise<CachedModelInfo[]>;
      remove(key: string): Promise<boolean>;
      storedChunks(key: string, file: string): Promise<number[]>;
      corruptChunk(key: string, file: string, i: number): Promise<void>;
      corruptPacked(key: string): Promise<string>;
      hashSpeed(): Promise<number>;
      patchManifest(key: string, file: string, patch: Record<string, unknown>): Promise<Record<string, unknown>>;
    };
  }
}

/** Chunk indices actually in IndexedDB (read behind the cache's back, to check its manifest). */
async function storedChunks(key: string, file: string): Promise<number[]> {
  const all = await keys(createStore("webvlm-cache", "chunks"));
  return all
    .filter((k): k is [string, string, string, number] => Array.isArray(k) && k[0] === "c" && k[1] === key && k[2] === file)
    .map((k) => k[3])
    .sort((a, b) => a - b);
}

const raw = () => createStore("webvlm-cache", "chunks");

/** Flips one byte in the middle of stored chunk i, behind the cache's back (its manifest is untouched). */
async function corruptChunk(key: string, file: string, i: number): Promise<void> {
  const k = ["c", key, file, i];
  const v = await get<Blob>(k, raw());
  if (!(v instanceof Blob)) throw new Error(`no stored chunk ${i} of ${file}`);
  const bytes = new Uint8Array(await v.arrayBuffer());
  bytes[bytes.length >> 1] ^= 0x5a;
  await set(k, new Blob([bytes]), raw());
}

/** Flips one bit in the codes of one stored quantized matrix; returns its key. */
async function corruptPacked(key: string): Promise<string> {
  const all = (await keys(raw())).filter((k): k is [string, string, string] => Array.isArray(k) && k[0] === "q" && k[1] === key);
  if (all.length === 0) throw new Error(`no quantized entries for ${key}`);
  const k = all[0];
  const rec = await get<{ packed: { data: Uint32Array } }>(k, raw());
  rec!.packed.data[rec!.packed.data.length >> 1] ^= 1 << 5;
  await set(k, rec, raw());
  return k[2];
}

/** Changes one file's manifest entry behind the cache's back ({} to read it); returns the entry. */
async function patchManifest(key: string, file: string, patch: Record<string, unknown>): Promise<Record<string, unknown>> {
  const m = await get<{ files: Record<string, Record<string, unknown>> }>(["m", key], raw());
  if (!m?.files[file]) throw new Error(`no manifest entry for ${file}`);
  Object.assign(m.files[file], patch);
  if (Object.keys(patch).length > 0) await set(["m", key], m, raw());
  return m.files[file];
}

/** MB/s of crypto.subtle SHA-256 over 64 MiB in 1 MiB chunks (the cache's per-chunk check). */
async function hashSpeed(): Promise<number> {
  const chunk = new Uint8Array(1 << 20);
  for (let o = 0; o < chunk.length; o += 65536) crypto.getRandomValues(chunk.subarray(o, o + 65536));
  const t0 = performance.now();
  for (let i = 0; i < 64; i++) await crypto.subtle.digest("SHA-256", chunk);
  return (64 * 1.048576) / ((performance.now() - t0) / 1000);
}

window.__cache = {
  load,
  list: () => listCachedModels(),
  remove: (key) => deleteCachedModel(key),
  storedChunks,
  corruptChunk,
  corruptPacked,
  hashSpeed,
  patchManifest,
};
document.getElementById("log")!.textContent = "ready";
