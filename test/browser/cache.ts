// Weight-cache checks driven by test/e2e/weight-cache.test.ts: window.__cache.load() loads a
// model with the in-thread engine and the IndexedDB cache, answers one greedy question and
// reports the answer, the error code and the progress bytes per phase; list/remove expose
// the cache management API.
import { Engine } from "../../src/engine/engine.ts";
import { createStore, keys } from "idb-keyval";
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

window.__cache = { load, list: () => listCachedModels(), remove: (key) => deleteCachedModel(key), storedChunks };
document.getElementById("log")!.textContent = "ready";
