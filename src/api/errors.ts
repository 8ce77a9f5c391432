/** Every failure the runtime reports carries one of these codes. */
export type WebvlmErrorCode =
  | "bad_request"
  | "no_adapter"
  | "device_lost"
  | "out_of_memory"
  | "unsupported_feature"
  | "shape_mismatch"
  | "dtype_mismatch"
  | "limit_exceeded"
  | "image_decode_failed"
  | "image_too_small"
  | "aspect_ratio_too_large"
  | "context_length_exceeded"
  | "model_not_found"
  | "download_failed"
  | "integrity_failed"
  | "quota_exceeded"
  | "missing_tensor"
  | "unsupported_architecture"
  | "aborted"
  | "internal";

export class WebvlmError extends Error {
  readonly code: WebvlmErrorCode;
  readonly details?: Record<string, unknown>;

  constructor(code: WebvlmErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = "WebvlmError";
    this.code = code;
    this.details = details;
  }
}

export function isWebvlmError(e: unknown): e is WebvlmError {
  return e instanceof WebvlmError;
}
