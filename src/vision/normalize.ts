// Rescale + normalize as the transformers processor does it, bit for bit:
//   rescale:   f32(f64(x) * (1/255))          (image_transforms.rescale upcasts, then casts)
//   normalize: f32(f32(v - f32(mean)) / f32(std))   (numpy in float32, mean/std cast to f32)
import { WebvlmError } from "../api/errors.ts";

/** OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, the Qwen2-VL preprocessor_config values. */
export const IMAGE_MEAN: readonly [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const IMAGE_STD: readonly [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

export interface NormalizeOptions {
  mean?: readonly [number, number, number];
  std?: readonly [number, number, number];
}

/**
 * RGB8 interleaved (HWC) -> float32 planar CHW, the layout the processor
 * builds (data_format = channels_first) before patchifying.
 */
export function normalizeRgb8ToChw(
  rgb: Uint8Array, width: number, height: number, opts: NormalizeOptions = {},
): Float32Array {
  const n = width * height;
  if (rgb.length !== n * 3) {
    throw new WebvlmError("shape_mismatch", `normalize: expected ${n * 3} bytes, got ${rgb.length}`);
  }
  const mean = opts.mean ?? IMAGE_MEAN;
  const std = opts.std ?? IMAGE_STD;
  const scale = 1 / 255;
  const out = new Float32Array(n * 3);
  // Only 256 distinct inputs per channel: precompute them.
  const lut = new Float32Array(768);
  for (let c = 0; c < 3; c++) {
    const m = Math.fround(mean[c]);
    const s = Math.fround(std[c]);
    for (let x = 0; x < 256; x++) {
      const v = Math.fround(x * scale);
      lut[c * 256 + x] = Math.fround(v - m) / s; // the store rounds to f32; f64 division then
      // rounding equals f32 division for f32 operands
    }
  }
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    out[i] = lut[rgb[p]];
    out[n + i] = lut[256 + rgb[p + 1]];
    out[2 * n + i] = lut[512 + rgb[p + 2]];
  }
  return out;
}
