// Target-size rules of the Qwen2-VL processor and of qwen_vl_utils (also used for video-file frames).
// smartResize follows transformers' image_processing_qwen2_vl.smart_resize;
// requestedResize follows qwen_vl_utils.fetch_image for explicit
// resized_height/resized_width (its smart_resize clamps to `factor` instead of
// raising). All float steps are IEEE doubles, as in CPython.
import { WebvlmError } from "../api/errors.ts";

/** preprocessor_config.json of the Qwen2-VL checkpoints. */
export const DEFAULT_MIN_PIXELS = 3136;
export const DEFAULT_MAX_PIXELS = 12845056;
/** patch_size * merge_size */
export const DEFAULT_FACTOR = 28;
export const MAX_ASPECT_RATIO = 200;

export interface SmartResizeOptions {
  factor?: number;
  minPixels?: number;
  maxPixels?: number;
}

export interface ResizedSize {
  height: number;
  width: number;
}

/** Python 3 round(): ties go to the even neighbour. */
export function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function checkPositiveInt(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v <= 0) {
    throw new WebvlmError("bad_request", `${name} must be a positive integer, got ${v}`, { [name]: v });
  }
}

function checkAspect(height: number, width: number): void {
  const ratio = Math.max(height, width) / Math.min(height, width);
  if (ratio > MAX_ASPECT_RATIO) {
    throw new WebvlmError(
      "aspect_ratio_too_large",
      `absolute aspect ratio must be smaller than ${MAX_ASPECT_RATIO}, got ${ratio}`,
      { height, width, ratio },
    );
  }
}

// Shared tail of both variants: rescale into [minPixels, maxPixels].
function fitPixels(
  height: number, width: number, hBar: number, wBar: number,
  factor: number, minPixels: number, maxPixels: number,
): ResizedSize {
  if (hBar * wBar > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    hBar = Math.floor(height / beta / factor) * factor;
    wBar = Math.floor(width / beta / factor) * factor;
  } else if (hBar * wBar < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    hBar = Math.ceil((height * beta) / factor) * factor;
    wBar = Math.ceil((width * beta) / factor) * factor;
  }
  // transformers would hand a zero size to PIL and fail there; say why instead.
  if (hBar <= 0 || wBar <= 0) {
    throw new WebvlmError(
      "bad_request",
      `max_pixels ${maxPixels} is too small for a ${width}x${height} image`,
      { height, width, maxPixels },
    );
  }
  return { height: hBar, width: wBar };
}

function resolveOptions(opts: SmartResizeOptions): [number, number, number] {
  const factor = opts.factor ?? DEFAULT_FACTOR;
  const minPixels = opts.minPixels ?? DEFAULT_MIN_PIXELS;
  const maxPixels = opts.maxPixels ?? DEFAULT_MAX_PIXELS;
  checkPositiveInt("factor", factor);
  if (!(minPixels >= 0) || !(maxPixels > 0)) {
    throw new WebvlmError("bad_request", `bad min_pixels/max_pixels: ${minPixels}/${maxPixels}`, { minPixels, maxPixels });
  }
  return [factor, minPixels, maxPixels];
}

/**
 * transformers' smart_resize: both sides multiples of `factor`, area within
 * [minPixels, maxPixels], aspect kept as closely as possible.
 * Throws image_too_small (a side < factor) or aspect_ratio_too_large (> 200).
 */
export function smartResize(height: number, width: number, opts: SmartResizeOptions = {}): ResizedSize {
  const [factor, minPixels, maxPixels] = resolveOptions(opts);
  checkPositiveInt("height", height);
  checkPositiveInt("width", width);
  if (height < factor || width < factor) {
    throw new WebvlmError(
      "image_too_small",
      `height:${height} or width:${width} must be larger than factor:${factor}`,
      { height, width, factor },
    );
  }
  checkAspect(height, width);
  const hBar = pyRound(height / factor) * factor;
  const wBar = pyRound(width / factor) * factor;
  return fitPixels(height, width, hBar, wBar, factor, minPixels, maxPixels);
}

/**
 * Size for a request's explicit resized_height/resized_width, as
 * qwen_vl_utils.fetch_image computes it: its smart_resize with the default
 * bounds (3136..12845056 — the checkpoint's values), sides clamped up to
 * `factor` rather than rejected. The transformers processor then sees a size
 * that is already a fixed point of smartResize.
 */
export function requestedResize(
  resizedHeight: number, resizedWidth: number, opts: SmartResizeOptions = {},
): ResizedSize {
  const [factor, minPixels, maxPixels] = resolveOptions(opts);
  checkPositiveInt("resized_height", resizedHeight);
  checkPositiveInt("resized_width", resizedWidth);
  checkAspect(resizedHeight, resizedWidth);
  const hBar = Math.max(factor, pyRound(resizedHeight / factor) * factor);
  const wBar = Math.max(factor, pyRound(resizedWidth / factor) * factor);
  return fitPixels(resizedHeight, resizedWidth, hBar, wBar, factor, minPixels, maxPixels);
}
