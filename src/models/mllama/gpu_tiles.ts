// MllamaImageProcessor on the GPU, bit-identical to processMllamaImage + mllamaPatchRows: the image
// decoded to the GPU (alpha over white as the CPU path's loadImage), resized by image_resample.wgsl
// with the checkpoint's Pillow filter to the fit-to-canvas size, then each tile of the padded canvas
// cut into the patch conv's input rows by image_patches.wgsl (grid origin = the tile's origin in the
// canvas). The CPU path pads with uint8 0 BEFORE rescale/normalize, so canvas pixels past the
// resized image are exactly the kernel's 8-bit pad [0, 0, 0] read through the normalize table
// (-mean/std). Tiles numTiles..maxImageTiles-1 are exact 0.0 after normalization in the CPU path
// (they are not part of the canvas): their rows are cleared with clearBuffer, not cut.
// The rows of all max_image_tiles tiles go into one tensor f32 [T * n, 3 * p * p] that the vision
// tower reads as its patch GEMM input directly (vision.ts); nothing is uploaded from the CPU.
import { contentHash } from "../common/content_hash.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { imagePatches } from "../../ops/image_patches.ts";
import { resizeImage } from "../../ops/image_resample.ts";
import { gpuImageBytes, releaseImage, type GpuImage } from "../../vision/gpu_image.ts";
import type { GpuPreprocessor } from "../../vision/gpu_preprocess.ts";
import type { LoadImageOptions } from "../../vision/load_image.ts";
import type { NormalizeOptions } from "../../vision/normalize.ts";
import type { PreparedMedia } from "../family.ts";
import { mllamaImageLayout, type MllamaImageLayout, type MllamaPreprocessOptions } from "./image_processor.ts";

/** Transformers' convert_to_rgb composites transparent images over opaque white. */
const WHITE: readonly [number, number, number] = [255, 255, 255];

/** What both paths pass to loadImage: no EXIF rotation (PIL images as opened); transparency over white. */
export function mllamaLoadOptions(label: string, pp: MllamaPreprocessOptions): LoadImageOptions {
  return { label, ...(pp.doConvertRgb ? { alphaBackground: WHITE } : {}) };
}

/** The CPU path's rescale/normalize settings (processMllamaImage's normalize8ToChw options). */
export function mllamaNormalizeOptions(pp: MllamaPreprocessOptions): NormalizeOptions {
  return { mean: pp.imageMean, std: pp.imageStd, rescaleFactor: pp.rescaleFactor, doRescale: pp.doRescale, doNormalize: pp.doNormalize };
}

/** Patch rows of one image: [maxImageTiles * (tile / p)^2, 3 * p * p] (mllamaPatchRows' layout). */
export function mllamaPatchRowShape(pp: Pick<MllamaPreprocessOptions, "tileSize" | "maxImageTiles">, patchSize: number): [number, number] {
  const side = pp.tileSize / patchSize;
  return [pp.maxImageTiles * side * side, 3 * patchSize * patchSize];
}

/** Content key of a prepared image: its geometry and the key of its pixel data. */
export function mllamaGeometryHash(layout: Pick<MllamaImageLayout, "aspectRatioId" | "numTiles" | "grid">, pixels: ArrayBufferView): string {
  return contentHash([new Int32Array([layout.aspectRatioId, layout.numTiles, layout.grid.rows, layout.grid.cols]), pixels]);
}

/** One image prepared on the GPU: its layout and the patch rows tensor (the caller owns it). */
export interface MllamaGpuTiles {
  layout: MllamaImageLayout;
  rows: Tensor;
}

/**
 * Records and submits the GPU preprocessing of one decoded image (8-bit, alpha already handled):
 * resize, pad, normalize, tile and patchify into a new tensor [T * n, 3 * p * p]. Null when the
 * GPU path cannot run it (patch size not dividing the tile, an empty resized side, or buffers past
 * the device's limits): the caller takes the CPU path. Does not release `img`.
 */
export function mllamaTilesGpu(gp: GpuPreprocessor, img: GpuImage, pp: MllamaPreprocessOptions, patchSize: number): MllamaGpuTiles | null {
  const tile = pp.tileSize;
  const p = patchSize;
  if (!Number.isSafeInteger(p) || p < 1 || tile % p !== 0) return null;
  const layout = mllamaImageLayout(img.height, img.width, pp);
  const { grid, numTiles, resizedWidth: rw, resizedHeight: rh } = layout;
  const [rowCount, width] = mllamaPatchRowShape(pp, p);
  if (rw < 1 || rh < 1) return null;
  // The source, the resize's horizontal pass (at most every source row), its output, the rows.
  if (!gp.fits(gpuImageBytes(img.rowBytes, img.height), rw * Math.max(rh, img.height) * 4, rowCount * width * 4)) return null;
  const ctx = gp.ctx;
  const side = tile / p;
  const n = side * side;
  const table = gp.normalizeTable(mllamaNormalizeOptions(pp));
  const rows = allocTensor(ctx, [rowCount, width], "f32", "mllama.patch_rows");
  const rec = new Recorder(ctx);
  let resized: GpuImage | null = null;
  try {
    // Image.resize is always called; an unchanged size is a copy (the CPU's resize8 does the same).
    resized = resizeImage(rec, img, rw, rh, { filter: pp.resample });
    // split_to_tiles: tile t = r * cols + c covers canvas rows [r * tile, ...), cols [c * tile, ...);
    // canvas pixels past the resized image read the uint8 pad 0 (pad bottom/right before normalize).
    for (let r = 0; r < grid.rows; r++) {
      for (let c = 0; c < grid.cols; c++) {
        imagePatches(rec, [resized], table, { patchSize: p, gridW: side, gridH: side, x0: c * tile, y0: r * tile, pad: [0, 0, 0] }, {
          out: rows,
          rowOffset: (r * grid.cols + c) * n,
        });
      }
    }
    // Tiles numTiles.. of max_image_tiles: exact 0.0 (pooled memory is undefined: clear it).
    const used = numTiles * n * width * 4;
    if (used < rowCount * width * 4) rec.commandEncoder().clearBuffer(rows.buffer, rows.offset + used, rowCount * width * 4 - used);
    rec.submit();
  } catch (e) {
    ctx.pool.release(rows.buffer);
    throw e;
  } finally {
    // Recorded (or failed): later users of the buffer come after this submit in stream order.
    if (resized) releaseImage(ctx, resized);
  }
  return { layout, rows };
}

/**
 * One request image through the GPU path: decoded to the GPU with the CPU path's LoadImageOptions,
 * then mllamaTilesGpu. Null where the GPU path cannot run it (the caller prepares it on the CPU).
 * `payload` builds the family's payload from the layout and the rows tensor.
 */
export async function prepareMllamaImageGpu(
  gp: GpuPreprocessor, source: unknown, signal: AbortSignal | undefined, label: string, pp: MllamaPreprocessOptions, patchSize: number,
  payload: (layout: MllamaImageLayout, rows: Tensor) => unknown,
): Promise<PreparedMedia | null> {
  const img = await gp.loadImage(source, signal, mllamaLoadOptions(label, pp));
  let done: MllamaGpuTiles | null;
  try {
    done = mllamaTilesGpu(gp, img, pp, patchSize);
  } finally {
    releaseImage(gp.ctx, img);
  }
  if (!done) return null;
  const item = await gp.media("image", 0, [done.rows], payload(done.layout, done.rows));
  // The GPU key covers the rows; the geometry (aspect ratio id, tiles) joins it, as on the CPU path.
  return { ...item, hash: mllamaGeometryHash(done.layout, new TextEncoder().encode(item.hash)) };
}
