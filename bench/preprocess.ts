// Image preprocessing, CPU path vs GPU path, for Qwen2-VL's processor (smart_resize to the
// checkpoint's pixel budget, Pillow BICUBIC, rescale + normalize, patchify), from decoded RGB8
// pixels to patch rows ready for the vision tower: the CPU path ends with the rows uploaded, the
// GPU path with one RGB8 upload, image_resample + image_patches, and the GPU idle. Both give
// bit-identical values (test/vision/gpu_preprocess.test.ts); this measures only time.
import type { GpuContext } from "../src/gpu/device.ts";
import { Recorder } from "../src/gpu/recorder.ts";
import type { Tensor } from "../src/gpu/tensor.ts";
import { uploadTensor } from "../src/gpu/transfer.ts";
import { preprocessImage, targetSize } from "../src/models/qwen2_vl/image_processor.ts";
import { imagePatches, uploadNormalizeTable } from "../src/ops/image_patches.ts";
import { resizeImage } from "../src/ops/image_resample.ts";
import { releaseImage, uploadImage8 } from "../src/vision/gpu_image.ts";
import { median, randomRgb } from "./bench_common.ts";

export interface PreprocessRow {
  /** Input image size [w, h] and the size smart_resize gives it. */
  image: [number, number];
  resized: [number, number];
  /** Patch rows (pixel_values rows) and the LLM tokens they become. */
  patches: number;
  llmTokens: number;
  /** Median wall time of the CPU path (preprocessImage + upload of the rows). */
  cpuMs: number;
  /** Median wall time of the GPU path (RGB8 upload, resize, patchify, GPU idle). */
  gpuMs: number;
}

/** Qwen2-VL's GPU preprocessing of RGB8 pixels: patch rows [t*h*w, 1176] on the GPU (caller releases). */
export function gpuPatchRows(gpu: GpuContext, table: Tensor, rgb: Uint8Array, w: number, h: number, maxPixels?: number): { rows: Tensor; grid: [number, number, number] } {
  const size = targetSize(w, h, { maxPixels });
  const img = uploadImage8(gpu, rgb, w, h, 3);
  const rec = new Recorder(gpu);
  const resized = resizeImage(rec, img, size.width, size.height, { filter: "bicubic" });
  const grid: [number, number, number] = [1, size.height / 14, size.width / 14];
  const rows = imagePatches(rec, [resized, resized], table, { patchSize: 14, gridW: grid[2], gridH: grid[1], mergeSize: 2 });
  rec.submit();
  releaseImage(gpu, img);
  releaseImage(gpu, resized);
  return { rows, grid };
}

/** Qwen2-VL's CPU preprocessing of RGB8 pixels, rows uploaded (caller releases). */
export function cpuPatchRows(gpu: GpuContext, rgb: Uint8Array, w: number, h: number, maxPixels?: number): { rows: Tensor; grid: [number, number, number] } {
  const p = preprocessImage(rgb, w, h, { maxPixels });
  return { rows: uploadTensor(gpu, p.pixelValues, [p.pixelValues.length / 1176, 1176], "f32", "pixel_values"), grid: p.grid };
}

/** CPU vs GPU preprocessing time for each image size (random pixels; sizes [w, h]). */
export async function benchPreprocess(gpu: GpuContext, sizes: readonly [number, number][], repeats: number, log: (s: string) => void): Promise<PreprocessRow[]> {
  const table = uploadNormalizeTable(gpu, {});
  const rows: PreprocessRow[] = [];
  for (const [w, h] of sizes) {
    const rgb = randomRgb(w, h, 11);
    const size = targetSize(w, h);
    const time = (make: () => { rows: Tensor }) => median(repeats, async () => {
      const r = make();
      await gpu.device.queue.onSubmittedWorkDone();
      gpu.pool.release(r.rows.buffer);
    });
    const cpuMs = await time(() => cpuPatchRows(gpu, rgb, w, h));
    const gpuMs = await time(() => gpuPatchRows(gpu, table, rgb, w, h));
    const patches = (size.width / 14) * (size.height / 14);
    rows.push({ image: [w, h], resized: [size.width, size.height], patches, llmTokens: patches / 4, cpuMs, gpuMs });
    log(`preprocess ${w}x${h} -> ${size.width}x${size.height}: CPU ${cpuMs.toFixed(1)} ms, GPU ${gpuMs.toFixed(1)} ms`);
  }
  gpu.pool.release(table.buffer);
  return rows;
}
