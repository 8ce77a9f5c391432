import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "../api/types.ts";
import type { EngineStats, LoadOptions, ModelInfo } from "../engine/engine.ts";
import type { ProgressEvent } from "../loader/progress.ts";
import type { CheckpointLocation } from "../loader/checkpoint.ts";

/** A request as it crosses to the worker: no AbortSignal (not cloneable); aborts go by id. */
export type WorkerChatRequest = Omit<ChatCompletionRequest, "signal">;

/** The worker's side, exposed with comlink. Streams arrive in batches through a proxied callback. */
export interface WorkerEngineApi {
  init(): Promise<{ adapter: string }>;
  /** `id` names the load for abort(id) (the page's LoadOptions.signal). */
  load(id: number, location: Exclude<CheckpointLocation, { store: unknown }>, opts: Omit<LoadOptions, "onProgress" | "signal">, onProgress?: (e: ProgressEvent) => void): Promise<ModelInfo>;
  unload(): Promise<void>;
  stats(): Promise<EngineStats>;
  complete(id: number, req: WorkerChatRequest): Promise<ChatCompletion>;
  stream(id: number, req: WorkerChatRequest, onChunks: (chunks: ChatCompletionChunk[]) => void): Promise<void>;
  abort(id: number): void;
}
