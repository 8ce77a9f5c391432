// Image -> Qwen2-VL pixel_values + grid_thw, the transformers
// Qwen2VLImageProcessor path (PIL backend): smart_resize, PIL BICUBIC resize,
// rescale + normalize in float32, patchify.
import { WebvlmError } from "../../api/errors.ts";
import { normalizeRgb8ToChw, type NormalizeOptions } from "../../vision/normalize.ts";
import { patchify } from "./patchify.ts";
import { resizeRgb8 } from "../../vision/resize.ts";
import {
  DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, requestedResize, smartResize, type ResizedSize,
} from "./smart_resize.ts";

export interface PreprocessOptions extends NormalizeOptions {
  /** Area bounds for smart_resize (preprocessor_config: 3136 / 12845056). */
  minPixels?: number;
  maxPixels?: number;
  /** Explicit target size; both or neither (qwen_vl_utils rounds them to 28). */
  resizedHeight?: number;
  resizedWidth?: number;
  patchSize?: number;
  mergeSize?: number;
  temporalPatchSize?: number;
}

export interface PreprocessedImage {
  /** [grid t*h*w, 3*temporalPatchSize*patchSize^2] float32, row-major */
  pixelValues: Float32Array;
  grid: [number, number, number];
  resizedWidth: number;
  resizedHeight: number;
}

/** The size an image will be resized to, without doing the work. */
export function targetSize(width: number, height: number, opts: PreprocessOptions = {}): ResizedSize {
  const factor = (opts.patchSize ?? 14) * (opts.mergeSize ?? 2);
  const hasH = opts.resizedHeight !== undefined;
  const hasW = opts.resizedWidth !== undefined;
  if (hasH !== hasW) {
    throw new WebvlmError("bad_request", "resized_height and resized_width must be given together");
  }
  if (hasH && hasW) {
    return requestedResize(opts.resizedHeight as number, opts.resizedWidth as number, { factor });
  }
  return smartResize(height, width, {
    factor,
    minPixels: opts.minPixels ?? DEFAULT_MIN_PIXELS,
    maxPixels: opts.maxPixels ?? DEFAULT_MAX_PIXELS,
  });
}

/** Resize (PIL-exact) an RGB8 interleaved image to the processor's target size. */
export function resizeForModel(
  rgb: Uint8Array, width: number, height: number, opts: PreprocessOptions = {},
): { rgb: Uint8Array; width: number; height: number } {
  const size = targetSize(width, height, opts);
  return { rgb: resizeRgb8(rgb, width, height, size.width, size.height), width: size.width, height: size.height };
}

/** RGB8 interleaved image -> pixel_values and grid_thw for one still image. */
export function preprocessImage(
  rgb: Uint8Array, width: number, height: number, opts: PreprocessOptions = {},
): PreprocessedImage {
  const r = resizeForModel(rgb, width, height, opts);
  const chw = normalizeRgb8ToChw(r.rgb, r.width, r.height, opts);
  const { pixelValues, grid } = patchify([chw], r.height, r.width, {
    patchSize: opts.patchSize,
    temporalPatchSize: opts.temporalPatchSize,
    mergeSize: opts.mergeSize,
  });
  return { pixelValues, grid, resizedWidth: r.width, resizedHeight: r.height };
}
