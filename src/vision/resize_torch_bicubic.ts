// PyTorch's `F.interpolate(x, size, mode="bicubic", align_corners=False)` without antialias, on a
// float32 CHW tensor, as ATen's CPU kernel computes it (UpSample.h + UpSampleKernel.cpp):
//   scale  = f32(in) / out                        (area_pixel_compute_scale, float32)
//   src    = scale * (o + 0.5) - 0.5              (area_pixel_compute_source_index, cubic: no clamp at 0)
//   i0     = min(floor(src), in - 1), t = clamp(src - i0, 0, 1)      (guard_index_and_lambda)
//   taps   = i0-1 .. i0+2, each clamped to [0, in-1]
//   w      = [c2(t + 1), c1(t), c1(1 - t), c2((1 - t) + 1)], Keys cubic with A = -0.75:
//            c1(z) = ((A + 2) z - (A + 3)) z z + 1,  c2(z) = ((A z - 5A) z + 8A) z - 4A
// every step in float32. The kernel sums, per output pixel, over the 4 rows of (the sum over the
// 4 columns), in tap order, in float32: that equals a width pass then a height pass with a float32
// intermediate, which is how it is done here (per axis, so each source row is filtered once).
// No clamping of the result (bicubic overshoots). Phi-3-vision's global 336x336 view is this
// resize of the normalized HD image; a GPU port can reuse the per-axis taps (torchBicubicTaps).
import { WebvlmError } from "../api/errors.ts";
import type { Chw32 } from "./canvas.ts";

/** Keys' cubic convolution constant in PyTorch's upsample_bicubic2d. */
export const TORCH_BICUBIC_A = -0.75;

/** One axis of a resize: for each output index, 4 source indices (clamped) and their weights. */
export interface TorchBicubicTaps {
  inSize: number;
  outSize: number;
  /** [outSize * 4] source indices, already clamped to [0, inSize - 1]. */
  index: Int32Array;
  /** [outSize * 4] float32 weights, in the same order. */
  weight: Float32Array;
}

const f = Math.fround;

// c1 / c2 of ATen's cubic_convolution1 / cubic_convolution2, each operation rounded to float32.
function cubic1(z: number): number {
  const A = f(TORCH_BICUBIC_A);
  return f(f(f(f(f(f(A + 2) * z) - f(A + 3)) * z) * z) + 1);
}

function cubic2(z: number): number {
  const A = f(TORCH_BICUBIC_A);
  return f(f(f(f(f(f(A * z) - f(5 * A)) * z) + f(8 * A)) * z) - f(4 * A));
}

function checkSize(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v <= 0 || v > 1 << 24) {
    throw new WebvlmError("bad_request", `torch bicubic resize: ${name} must be a positive integer up to 2^24, got ${v}`, { [name]: v });
  }
}

/** The taps and weights of one axis resized from inSize to outSize samples. */
export function torchBicubicTaps(inSize: number, outSize: number): TorchBicubicTaps {
  checkSize("inSize", inSize);
  checkSize("outSize", outSize);
  const index = new Int32Array(outSize * 4);
  const weight = new Float32Array(outSize * 4);
  const scale = f(inSize / outSize);
  for (let o = 0; o < outSize; o++) {
    const src = f(f(scale * f(o + 0.5)) - 0.5);
    const i0 = Math.min(Math.floor(src), inSize - 1);
    const t = Math.min(Math.max(f(src - i0), 0), 1);
    const t2 = f(1 - t);
    const w = [cubic2(f(t + 1)), cubic1(t), cubic1(t2), cubic2(f(t2 + 1))];
    for (let k = 0; k < 4; k++) {
      index[o * 4 + k] = Math.min(Math.max(i0 - 1 + k, 0), inSize - 1);
      weight[o * 4 + k] = w[k];
    }
  }
  return { inSize, outSize, index, weight };
}

/** (((s0 w0 + s1 w1) + s2 w2) + s3 w3), each product and sum rounded to float32. */
function tapSum(a: number, b: number, c: number, d: number, w: Float32Array, k: number): number {
  return f(f(f(f(a * w[k]) + f(b * w[k + 1])) + f(c * w[k + 2])) + f(d * w[k + 3]));
}

/** Resizes a float32 CHW image to outWidth x outHeight (PyTorch bicubic, align_corners=False). */
export function resizeTorchBicubicChw(img: Chw32, outWidth: number, outHeight: number): Chw32 {
  const { width: w, height: h, channels: c, data } = img;
  checkSize("width", w);
  checkSize("height", h);
  if (!Number.isSafeInteger(c) || c <= 0 || data.length !== w * h * c) {
    throw new WebvlmError("shape_mismatch", `torch bicubic resize: ${w}x${h}x${c} needs ${w * h * c} values, got ${data.length}`);
  }
  const tx = torchBicubicTaps(w, outWidth);
  const ty = torchBicubicTaps(h, outHeight);
  // Width pass: [c, h, outWidth].
  const mid = new Float32Array(c * h * outWidth);
  for (let row = 0; row < c * h; row++) {
    const src = row * w;
    const dst = row * outWidth;
    for (let o = 0; o < outWidth; o++) {
      const k = o * 4;
      const ix = tx.index;
      mid[dst + o] = tapSum(data[src + ix[k]], data[src + ix[k + 1]], data[src + ix[k + 2]], data[src + ix[k + 3]], tx.weight, k);
    }
  }
  // Height pass: [c, outHeight, outWidth].
  const out = new Float32Array(c * outHeight * outWidth);
  for (let ch = 0; ch < c; ch++) {
    const plane = ch * h * outWidth;
    for (let o = 0; o < outHeight; o++) {
      const k = o * 4;
      const r0 = plane + ty.index[k] * outWidth;
      const r1 = plane + ty.index[k + 1] * outWidth;
      const r2 = plane + ty.index[k + 2] * outWidth;
      const r3 = plane + ty.index[k + 3] * outWidth;
      const dst = (ch * outHeight + o) * outWidth;
      for (let x = 0; x < outWidth; x++) out[dst + x] = tapSum(mid[r0 + x], mid[r1 + x], mid[r2 + x], mid[r3 + x], ty.weight, k);
    }
  }
  return { data: out, width: outWidth, height: outHeight, channels: c };
}
