// createEngine(): the Engine in this thread, or the same interface backed by a module worker.
import * as Comlink from "comlink";
import { WebvlmError } from "../api/errors.ts";
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "../api/types.ts";
import { createFetchAdapter } from "../api/fetch.ts";
import { installErrorTransfer } from "../worker/errors.ts";
import { transferableBitmap } from "../vision/decode_browser.ts";
import type { WorkerEngineApi } from "../worker/protocol.ts";
import { Engine, type EngineStats, type LoadOptions, type ModelInfo } from "./engine.ts";
import { pump } from "./pump.ts";
import type { CheckpointLocation } from "../loader/checkpoint.ts";

export interface CreateEngineOptions {
  /** Run the GPU work in a dedicated module worker (default: true in browsers, false in Node). */
  worker?: boolean;
}

/** What both engines offer. */
export interface ChatEngine {
  load(location: CheckpointLocation, opts?: LoadOptions): Promise<ModelInfo>;
  unload(): Promise<void>;
  readonly model: ModelInfo | null;
  /** GPU memory (weights, KV cache allocated / used, activations, pool slack) and work counts. */
  stats(): Promise<EngineStats>;
  readonly chat: {
    readonly completions: {
      create(req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
      create(req: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
    };
  };
  readonly fetch: typeof fetch;
  /** Ends the worker (or releases the device). */
  terminate(): Promise<void>;
}

const inBrowser = typeof window !== "undefined" && typeof Worker !== "undefined";

export async function createEngine(opts: CreateEngineOptions = {}): Promise<ChatEngine> {
  if (!(opts.worker ?? inBrowser)) {
    const e = await Engine.create();
    return Object.assign(e, {
      async terminate() {
        await e.unload();
        e.gpu.destroy();
      },
    });
  }
  return WorkerEngine.start();
}

class WorkerEngine implements ChatEngine {
  private nextId = 1;
  model: ModelInfo | null = null;
  readonly fetch: typeof fetch = createFetchAdapter(this);
  readonly chat = {
    completions: {
      create: ((req: ChatCompletionRequest) => (req.stream ? Promise.resolve(this.stream(req)) : this.complete(req))) as ChatEngine["chat"]["completions"]["create"],
    },
  };

  private constructor(
    private readonly worker: Worker,
    private readonly api: Comlink.Remote<WorkerEngineApi>,
  ) {}

  static async start(): Promise<WorkerEngine> {
    installErrorTransfer();
    const worker = new Worker(new URL("../worker/worker.ts", import.meta.url), { type: "module", name: "webvlm" });
    const e = new WorkerEngine(worker, Comlink.wrap<WorkerEngineApi>(worker));
    await e.api.init();
    return e;
  }

  async load(location: CheckpointLocation, opts: LoadOptions = {}): Promise<ModelInfo> {
    if (typeof location === "object" && "store" in location) {
      throw new WebvlmError("bad_request", "a custom CheckpointStore cannot cross to the worker; use createEngine({ worker: false })");
    }
    const { onProgress, signal, ...rest } = opts;
    location = pageRelative(location);
    // The signal cannot be cloned: an abort goes to the worker by the load's id, like a request's.
    const { id, detach } = this.abortById(signal);
    try {
      this.model = await this.api.load(id, location, rest, onProgress ? Comlink.proxy(onProgress) : undefined);
    } finally {
      detach();
    }
    return this.model;
  }

  async unload(): Promise<void> {
    await this.api.unload();
    this.model = null;
  }

  stats(): Promise<EngineStats> {
    return this.api.stats();
  }

  async terminate(): Promise<void> {
    this.worker.terminate();
  }

  /** A new id whose abort(id) is sent to the worker when `signal` fires (or has fired). */
  private abortById(signal: AbortSignal | undefined): { id: number; detach: () => void } {
    const id = this.nextId++;
    const onAbort = (): void => void this.api.abort(id);
    if (signal?.aborted) queueMicrotask(onAbort);
    signal?.addEventListener("abort", onAbort);
    return { id, detach: () => signal?.removeEventListener("abort", onAbort) };
  }

  private withSignal(req: ChatCompletionRequest): { id: number; wire: Omit<ChatCompletionRequest, "signal">; detach: () => void } {
    const { signal, ...wire } = req;
    return { ...this.abortById(signal), wire };
  }

  private async complete(req: ChatCompletionRequest): Promise<ChatCompletion> {
    const { id, wire, detach } = this.withSignal(req);
    const ports: MessagePort[] = [];
    try {
      const { request, transfers, ports: p } = await bitmapsForWorker(wire);
      ports.push(...p);
      return await this.api.complete(id, Comlink.transfer(request, transfers));
    } finally {
      for (const port of ports) port.close();
      detach();
    }
  }

  private async *stream(req: ChatCompletionRequest): AsyncGenerator<ChatCompletionChunk> {
    const { id, wire, detach } = this.withSignal(req);
    const ports: MessagePort[] = [];
    try {
      yield* pump<ChatCompletionChunk>(async (push) => {
        const { request, transfers, ports: p } = await bitmapsForWorker(wire);
        ports.push(...p);
        await this.api.stream(id, Comlink.transfer(request, transfers), Comlink.proxy((chunks: ChatCompletionChunk[]) => push(...chunks)));
      }, () => void this.api.abort(id)); // leaving the loop early aborts the generation in the worker
    } finally {
      for (const port of ports) port.close();
      detach();
    }
  }
}

/**
 * <img>, canvases and ImageBitmaps cannot be cloned to a worker: they become ImageBitmaps
 * (decoded pixels, no re-encoding) moved with a transfer list. Blobs/Files/ImageData clone as-is.
 * A video file crosses as its Blob/bytes or absolute URL (a <video> element as its src), and its
 * on_progress callback as a MessagePort.
 */
async function bitmapsForWorker(
  req: Omit<ChatCompletionRequest, "signal">,
): Promise<{ request: Omit<ChatCompletionRequest, "signal">; transfers: Transferable[]; ports: MessagePort[] }> {
  const transfers: Transferable[] = [];
  const ports: MessagePort[] = []; // progress channels' page ends, closed when the request ends
  // Copies down to the parts: the caller's request is not modified.
  const messages = req.messages.map((m) => (typeof m.content === "string" ? m : { ...m, content: m.content.map((p) => ({ ...p })) }));
  let count = 0;
  const convert = async (v: unknown): Promise<unknown> => {
    const isImg = typeof HTMLImageElement !== "undefined" && v instanceof HTMLImageElement;
    const isCanvas = (typeof HTMLCanvasElement !== "undefined" && v instanceof HTMLCanvasElement) || (typeof OffscreenCanvas !== "undefined" && v instanceof OffscreenCanvas);
    const isBitmap = typeof ImageBitmap !== "undefined" && v instanceof ImageBitmap;
    count++;
    if (!isImg && !isCanvas && !isBitmap) return v;
    // Typed errors for undecodable or cross-origin (tainted) images instead of a DataCloneError later.
    const bitmap = await transferableBitmap(v as HTMLImageElement | HTMLCanvasElement | OffscreenCanvas | ImageBitmap, `image ${count}`);
    transfers.push(bitmap);
    return bitmap;
  };
  for (const m of messages) {
    if (typeof m.content === "string") continue;
    for (const part of m.content) {
      if (part.type === "image") part.image = await convert(part.image);
      else if (part.type === "video" && Array.isArray(part.video)) part.video = await Promise.all((part.video as unknown[]).map(convert));
      else if (part.type === "video") {
        // A video file: Blobs/Files/bytes clone as they are; a <video> element cannot cross, its src does
        // (as an absolute URL: blob: URLs of this page are readable in its worker); relative URLs are the page's.
        const v = part.video;
        if (typeof HTMLVideoElement !== "undefined" && v instanceof HTMLVideoElement) {
          const src = v.currentSrc || v.src;
          if (!src) throw new WebvlmError("unsupported_feature", "a <video> element without a src (a MediaStream) cannot be sampled as a file: give its frames as a list");
          part.video = src;
        } else if (typeof v === "string" && typeof globalThis.location !== "undefined") {
          part.video = new URL(v, globalThis.location.href).href;
        }
        // The progress callback cannot be cloned: a MessagePort carries (decoded, total) back.
        const onProgress = part.on_progress;
        if (typeof onProgress === "function") {
          const channel = new MessageChannel();
          channel.port1.onmessage = (e: MessageEvent<[number, number]>) => onProgress(e.data[0], e.data[1]);
          part.on_progress = channel.port2 as unknown as typeof onProgress;
          transfers.push(channel.port2);
          ports.push(channel.port1);
        }
      }
    }
  }
  // The prefill progress callback crosses as a MessagePort too, (done, total) coming back.
  let onPrefill: unknown = req.on_prefill_progress;
  if (typeof onPrefill === "function") {
    const cb = onPrefill as (done: number, total: number) => void;
    const channel = new MessageChannel();
    channel.port1.onmessage = (e: MessageEvent<[number, number]>) => cb(e.data[0], e.data[1]);
    onPrefill = channel.port2;
    transfers.push(channel.port2);
    ports.push(channel.port1);
  }
  const request = { ...req, messages, ...(onPrefill !== undefined ? { on_prefill_progress: onPrefill as ChatCompletionRequest["on_prefill_progress"] } : {}) };
  return { request, transfers, ports };
}

/** Relative URLs are the page's, not the worker script's. */
function pageRelative(location: Exclude<CheckpointLocation, { store: unknown }>): Exclude<CheckpointLocation, { store: unknown }> {
  const abs = (u: string): string => (typeof globalThis.location !== "undefined" && /^\.{0,2}\//.test(u) ? new URL(u, globalThis.location.href).href : u);
  if (typeof location === "string") return abs(location);
  if ("url" in location) return { url: abs(location.url) };
  if ("baseUrl" in location) return { baseUrl: abs(location.baseUrl) };
  return location;
}
