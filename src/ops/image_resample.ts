import code from "../../shaders/image_resample.wgsl?raw";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { uploadTensor } from "../gpu/transfer.ts";
import { allocRgbxImage, gpuImageBytes, type GpuImage } from "../vision/gpu_image.ts";
import { planResize, type ResizeOptions } from "../vision/resize.ts";
import { PRECISION_BITS, type Coeffs } from "../vision/resample.ts";

/**
 * Pillow's `Image.resize(size, filter, box)` of an 8-bit RGB image on the GPU, bit-identical to the
 * CPU port (vision/resize.ts resize8, itself bit-identical to Pillow): the same plan (planResize),
 * the same fixed-point taps computed once on the CPU, the same int32 sums, shift and clip. A copy
 * or an integer-box crop runs as a pass of single taps of weight 1 << 22, which reproduces each
 * byte exactly. Alpha, if any, must be composited first (only channels 0..2 are resampled).
 * Returns a new RGBX image; the caller releases both.
 */
export function resizeImage(rec: Recorder, img: GpuImage, newW: number, newH: number, opts: ResizeOptions = {}): GpuImage {
  const plan = planResize(img.width, img.height, newW, newH, opts);
  if (plan.kind === "copy") return pass(rec, img, identityTaps(0, newW), newW, newH, 0, false);
  if (plan.kind === "crop") {
    // Columns by a horizontal identity pass over rows [y0, y0 + newH).
    return pass(rec, img, identityTaps(plan.x0, newW), newW, newH, plan.y0, false);
  }
  if (!plan.horizontal) {
    // Only the vertical pass (vertical is set: otherwise the plan would be a copy).
    return pass(rec, img, plan.vertical as Coeffs, img.width, newH, 0, true);
  }
  const rows = plan.last - plan.first;
  const horiz = pass(rec, img, plan.horizontal, newW, rows, plan.first, false);
  if (!plan.vertical) return horiz;
  const out = pass(rec, horiz, plan.vertical, newW, newH, 0, true);
  rec.ctx.pool.release(horiz.buffer);
  return out;
}

/** Taps that copy source index start + o to output o. */
function identityTaps(start: number, n: number): Coeffs {
  const bounds = new Int32Array(n * 2);
  for (let o = 0; o < n; o++) {
    bounds[o * 2] = start + o;
    bounds[o * 2 + 1] = 1;
  }
  return { ksize: 1, bounds, kk: new Int32Array(n).fill(1 << PRECISION_BITS) };
}

function pass(rec: Recorder, src: GpuImage, co: Coeffs, outW: number, rows: number, row0: number, vertical: boolean): GpuImage {
  const table = new Int32Array(co.bounds.length + co.kk.length);
  table.set(co.bounds);
  table.set(co.kk, co.bounds.length);
  const coeffs = uploadTensor(rec.ctx, table, [table.length], "i32", "image_resample.coeffs");
  const out = allocRgbxImage(rec.ctx, outW, rows, "image_resample.out");
  rec.dispatch({
    code,
    uniforms: packUniforms("uuuuuuu", outW, rows, row0, src.channels, src.rowBytes, co.ksize, vertical ? 1 : 0),
    bindings: [
      coeffs,
      { buffer: src.buffer, offset: 0, size: gpuImageBytes(src.rowBytes, src.height) },
      { buffer: out.buffer, offset: 0, size: gpuImageBytes(out.rowBytes, out.height) },
    ],
    workgroups: grid2d(Math.ceil((outW * rows) / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: vertical ? "image_resample.vertical" : "image_resample.horizontal",
  });
  // The recorder submits before the pool hands this buffer out again.
  rec.ctx.pool.release(coeffs.buffer);
  return out;
}
