// The dedicated module worker that owns the GPUDevice and the in-thread Engine.
import * as Comlink from "comlink";
import type { ChatCompletionChunk } from "../api/types.ts";
import { Engine } from "../engine/engine.ts";
import { installErrorTransfer } from "./errors.ts";
import type { WorkerEngineApi, WorkerChatRequest } from "./protocol.ts";

installErrorTransfer();

let engine: Engine | null = null;
const aborts = new Map<number, AbortController>();
/** Aborts that arrived before their request registered (messages race with async setup). */
const abortedEarly = new Set<number>();

async function getEngine(): Promise<Engine> {
  engine ??= await Engine.create();
  return engine;
}

/** Registers the request's controller before anything awaits, so an abort is never lost. */
function withAbort<T>(id: number, run: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const ac = new AbortController();
  aborts.set(id, ac);
  if (abortedEarly.delete(id)) ac.abort();
  return run(ac.signal).finally(() => aborts.delete(id));
}

// Chunks are sent at most every BATCH_MS, so a fast stream is not one message per token.
const BATCH_MS = 16;

const api: WorkerEngineApi = {
  async init() {
    const e = await getEngine();
    return { adapter: `${e.gpu.adapter.vendor} ${e.gpu.adapter.architecture} ${e.gpu.adapter.description}`.trim() };
  },
  load(id, location, opts, onProgress) {
    return withAbort(id, async (signal) =>
      (await getEngine()).load(location, { ...opts, signal, onProgress: onProgress ? (e) => void onProgress(e) : undefined }));
  },
  async unload() {
    await engine?.unload();
  },
  async stats() {
    return (await getEngine()).stats();
  },
  complete(id, req: WorkerChatRequest) {
    return withAbort(id, async (signal) => (await getEngine()).chat.completions.create({ ...req, stream: false, signal }));
  },
  async stream(id, req: WorkerChatRequest, onChunks) {
    await withAbort(id, async (signal) => {
      const s = await (await getEngine()).chat.completions.create({ ...req, stream: true, signal });
      let batch: ChatCompletionChunk[] = [];
      let last = 0;
      for await (const c of s) {
        batch.push(c);
        const now = performance.now();
        if (now - last >= BATCH_MS) {
          await onChunks(batch);
          batch = [];
          last = now;
        }
      }
      if (batch.length) await onChunks(batch);
    });
  },
  abort(id) {
    const ac = aborts.get(id);
    if (ac) ac.abort();
    else abortedEarly.add(id);
  },
};

Comlink.expose(api);
