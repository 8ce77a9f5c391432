// Public API of webvlm. Later issues add createEngine and the chat API here.
export { WebvlmError, isWebvlmError, type WebvlmErrorCode } from "./api/errors.ts";
export { acquireGpu, type GpuContext, type AdapterReport, type AcquireOptions, type OptionalFeature } from "./gpu/device.ts";
export { selfCheck, type SelfCheckResult } from "./gpu/selfcheck.ts";
