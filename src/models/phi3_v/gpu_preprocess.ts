// Phi3VImageProcessor on the GPU, bit-identical to the CPU path (image_processor.ts +
// processor.ts phi3vPatchRows): the decoded 8-bit image resized by image_resample.wgsl (Pillow
// BILINEAR), white-padded and normalized into the f32 [3, H, W] HD image by image_patches.wgsl
// (imageToChw reads the pad bytes outside the resized image), the global view by
// image_bicubic_torch.wgsl, and both cut into one tensor of patch rows by chw_patches.wgsl: the
// global view first, then the HD tiles row-major, each 24x24 patches row-major, each (c, y, x).
//
// Portrait images (w < h): the CPU path transposes the 8-bit image, resizes it (Pillow's
// horizontal pass, then its vertical pass, with an 8-bit intermediate), pads its height and
// transposes back. No transposed copy is made here: Pillow's two passes are separable and a pass
// is skipped when its dimension does not change, so the same resize in the original frame is two
// single-pass resizes — first the height alone (the transposed frame's horizontal pass: the same
// taps, the same integer sums, the same 8-bit rounding), then the width alone (its vertical pass)
// — and the padding goes left/right (imageToChw's x0 = -padTop).
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { bicubicTorch } from "../../ops/image_bicubic_torch.ts";
import { chwPatches } from "../../ops/chw_patches.ts";
import { imageToChw } from "../../ops/image_patches.ts";
import { resizeImage } from "../../ops/image_resample.ts";
import { releaseImage, type GpuImage } from "../../vision/gpu_image.ts";
import type { GpuPreprocessor } from "../../vision/gpu_preprocess.ts";
import type { LoadImageOptions } from "../../vision/load_image.ts";
import type { PreparedMedia } from "../family.ts";
import { phi3vHdGeometry, PHI3V_CROP_SIZE, type Phi3VHdGeometry, type Phi3VPreprocessOptions } from "./image_processor.ts";

const S = PHI3V_CROP_SIZE;
const P = 14;
const GRID = S / P;
const CROP_ROWS = GRID * GRID;
const ROW = 3 * P * P;
const WHITE = [255, 255, 255] as const;

/** Bytes of every buffer the GPU path binds for a width x height image (GpuPreprocessor.fits). */
export function phi3vGpuBytes(width: number, height: number, g: Phi3VHdGeometry): number[] {
  // Resize intermediates: the first pass's output (portrait: the height-only resize, width x
  // resizedWidth; landscape: the horizontal pass over at most all source rows), then the result.
  const first = g.transposed ? width * g.resizedWidth * 4 : g.resizedWidth * height * 4;
  const resized = g.resizedWidth * g.resizedHeight * 4;
  const hd = 3 * g.height * g.width * 4;
  const bicubicMid = 3 * g.height * S * 4;
  const rows = (1 + g.hc * g.wc) * CROP_ROWS * ROW * 4;
  return [width * height * 4, first, resized, hd, bicubicMid, rows];
}

/** The HD image and global view of one image on the GPU (the caller releases both). */
export interface Phi3VGpuPixels {
  geometry: Phi3VHdGeometry;
  /** f32 [3, H, W]: the normalized padded HD image (CPU: Phi3VPixels.hd). */
  hd: Tensor;
  /** f32 [3, 336, 336]: PyTorch's bicubic resize of `hd` (CPU: Phi3VPixels.global). */
  global: Tensor;
}

/**
 * Records the HD transform, normalization and global view of a decoded (alpha-free) GPU image;
 * `img` is only read (the caller releases it). Returns tensors the caller releases.
 */
export function recordPhi3VPixels(rec: Recorder, img: GpuImage, table: Tensor, numCrops: number): Phi3VGpuPixels {
  const ctx = rec.ctx;
  const g = phi3vHdGeometry(img.width, img.height, numCrops);
  const resized: GpuImage[] = [];
  try {
    let hd: Tensor;
    if (!g.transposed) {
      // resizedWidth x resizedHeight; white rows above (padTop) and below.
      resized.push(resizeImage(rec, img, g.resizedWidth, g.resizedHeight, { filter: "bilinear" }));
      hd = imageToChw(rec, resized[0], table, { x0: 0, y0: -g.padTop, width: g.width, height: g.height, pad: WHITE });
    } else {
      // The transposed frame's resize to (resizedWidth, resizedHeight), pass by pass in this frame:
      // the height (its horizontal pass) to resizedWidth, then the width (its vertical pass) to
      // resizedHeight. White columns left (padTop) and right.
      resized.push(resizeImage(rec, img, img.width, g.resizedWidth, { filter: "bilinear" }));
      resized.push(resizeImage(rec, resized[0], g.resizedHeight, g.resizedWidth, { filter: "bilinear" }));
      hd = imageToChw(rec, resized[1], table, { x0: -g.padTop, y0: 0, width: g.width, height: g.height, pad: WHITE });
    }
    let global: Tensor;
    try {
      global = bicubicTorch(rec, hd, S, S);
    } catch (e) {
      ctx.pool.release(hd.buffer);
      throw e;
    }
    return { geometry: g, hd, global };
  } finally {
    // Recorded: later users of these buffers come after in stream order.
    for (const r of resized) releaseImage(ctx, r);
  }
}

/**
 * Records the patch rows [(1 + hc*wc) * 576, 3*14*14] of one image (global view first, then the HD
 * tiles row-major): the GPU twin of phi3vPatchRows. The caller releases the result.
 */
export function recordPhi3VPatchRows(rec: Recorder, px: Phi3VGpuPixels): Tensor {
  const { hc, wc } = px.geometry;
  const out = allocTensor(rec.ctx, [(1 + hc * wc) * CROP_ROWS, ROW], "f32", "phi3v.patch_rows");
  const grid = { patchSize: P, gridW: GRID, gridH: GRID };
  chwPatches(rec, px.global, grid, { out, rowOffset: 0 });
  for (let r = 0; r < hc; r++) {
    for (let c = 0; c < wc; c++) {
      chwPatches(rec, px.hd, { ...grid, x0: c * S, y0: r * S }, { out, rowOffset: (1 + r * wc + c) * CROP_ROWS });
    }
  }
  return out;
}

/** The payload fields of one image prepared on the GPU (Phi3VImagePayload with a Tensor). */
export interface Phi3VGpuPayload {
  height: number;
  width: number;
  hc: number;
  wc: number;
  numImgTokens: number;
  patchRows: Tensor;
}

/**
 * One request image through the GPU path: decoded to the GPU (the CPU path's LoadImageOptions),
 * processed, its patch rows left on the GPU in the payload. Null when the device cannot bind
 * one of its buffers (the caller takes the CPU path).
 */
export async function preparePhi3VGpu(
  gp: GpuPreprocessor, source: unknown, opts: Phi3VPreprocessOptions, numCrops: number, load: LoadImageOptions, signal?: AbortSignal,
): Promise<PreparedMedia | null> {
  const ctx: GpuContext = gp.ctx;
  const img = await gp.loadImage(source, signal, load);
  let rows: Tensor | null = null;
  let payload: Phi3VGpuPayload;
  try {
    const g = phi3vHdGeometry(img.width, img.height, numCrops);
    if (!gp.fits(...phi3vGpuBytes(img.width, img.height, g))) return null;
    const rec = new Recorder(ctx);
    const px = recordPhi3VPixels(rec, img, gp.normalizeTable({ mean: opts.imageMean, std: opts.imageStd }), numCrops);
    try {
      rows = recordPhi3VPatchRows(rec, px);
      rec.submit();
    } finally {
      ctx.pool.release(px.hd.buffer);
      ctx.pool.release(px.global.buffer);
    }
    payload = { height: g.height, width: g.width, hc: g.hc, wc: g.wc, numImgTokens: g.numImgTokens, patchRows: rows };
  } catch (e) {
    if (rows) ctx.pool.release(rows.buffer);
    throw e;
  } finally {
    releaseImage(ctx, img);
  }
  // gp.media releases `rows` itself when hashing fails.
  return gp.media("image", payload.numImgTokens, [payload.patchRows], payload);
}
