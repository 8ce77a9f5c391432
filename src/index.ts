// Public API of webvlm.
export { WebvlmError, isWebvlmError, type WebvlmErrorCode } from "./api/errors.ts";
export { acquireGpu, type GpuContext, type AdapterReport, type AcquireOptions, type OptionalFeature } from "./gpu/device.ts";
export { selfCheck, type SelfCheckResult } from "./gpu/selfcheck.ts";
export { Engine, DEFAULT_CONTEXT_TOKENS, type EngineOptions, type EngineStats, type LoadOptions, type MemoryStats, type ModelInfo } from "./engine/engine.ts";
export type * from "./api/types.ts";
export type { ProgressEvent } from "./loader/progress.ts";
export { createEngine, type ChatEngine, type CreateEngineOptions } from "./engine/create.ts";
export {
  listCachedModels, deleteCachedModel, clearCache, storageEstimate, weightCacheAvailable,
  type CachedModelInfo, type CachedFileInfo, type WeightCacheOptions,
} from "./loader/cache_idb.ts";
export {
  openVideo, hasWebCodecs, type VideoFileOptions, type SampledVideoFrame, type OpenedVideo,
} from "./vision/video_browser.ts";
