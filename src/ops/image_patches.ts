import code from "../../shaders/image_patches.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../gpu/transfer.ts";
import { gpuImageBytes, type GpuImage } from "../vision/gpu_image.ts";
import { normalizeTable, type NormalizeOptions } from "../vision/normalize.ts";

/** The checkpoint's rescale/normalize as the [3 * 256] f32 table the kernels read (the CPU path's values). */
export function uploadNormalizeTable(ctx: GpuContext, opts: NormalizeOptions): Tensor {
  return uploadTensor(ctx, normalizeTable(3, opts), [3 * 256], "f32", "image.normalize_table");
}

/** Where patches are cut from an image and how their rows are ordered. */
export interface PatchGrid {
  patchSize: number;
  /** Patches per grid row / column. */
  gridW: number;
  gridH: number;
  /** Top-left pixel of the grid in the image; outside the image reads `pad` (default 0, 0). */
  x0?: number;
  y0?: number;
  /** Merge windows of m x m patches, each window's patches consecutive (Qwen2-VL; default 1). */
  mergeSize?: number;
  /** Pad bytes for pixels outside the image (default [0, 0, 0]): the processor's 8-bit padding. */
  pad?: readonly [number, number, number];
}

/** Where a kernel writes: `rowOffset` rows into `out` (allocated by the caller), or a new tensor. */
export interface PatchTarget {
  out: Tensor;
  rowOffset: number;
}

function packPad(pad: readonly [number, number, number] = [0, 0, 0]): number {
  if (!pad.every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) throw new WebvlmError("internal", `bad pad bytes ${pad}`);
  return (pad[0] | (pad[1] << 8) | (pad[2] << 16)) >>> 0;
}

function imageBinding(img: GpuImage): { buffer: GPUBuffer; offset: number; size: number } {
  return { buffer: img.buffer, offset: 0, size: gpuImageBytes(img.rowBytes, img.height) };
}

function checkFrames(frames: readonly GpuImage[]): void {
  const f0 = frames[0];
  if (frames.length < 1 || frames.length > 2) throw new WebvlmError("internal", `image_patches: 1 or 2 frames, got ${frames.length}`);
  for (const f of frames) {
    if (f.width !== f0.width || f.height !== f0.height || f.channels !== f0.channels || f.rowBytes !== f0.rowBytes) {
      throw new WebvlmError("shape_mismatch", "image_patches: the frames of one patch differ in size or layout");
    }
    if (f.hasAlpha) throw new WebvlmError("internal", "image_patches: composite alpha first");
  }
}

export function patchTarget(rec: Recorder, rows: number, cols: number, to: PatchTarget | undefined, label: string): { out: Tensor; base: number } {
  if (!to) return { out: allocTensor(rec.ctx, [rows, cols], "f32", label), base: 0 };
  expectDtype(label, to.out, ["f32"]);
  const outCols = numel(to.out.shape.slice(1));
  if (outCols !== cols || to.rowOffset < 0 || to.rowOffset + rows > to.out.shape[0]) {
    throw new WebvlmError("shape_mismatch", `${label}: rows [${to.rowOffset}, ${to.rowOffset + rows}) x ${cols} do not fit [${to.out.shape}]`);
  }
  return { out: to.out, base: to.rowOffset * cols };
}

/**
 * Patch rows [gridH * gridW, 3 * frames * p * p] of one image (1 frame) or one temporal pair
 * (2 frames: Qwen2-VL's temporal_patch_size), normalized through `table`
 * (uploadNormalizeTable): columns (channel, frame, py, px), rows in merge-window order.
 */
export function imagePatches(
  rec: Recorder, frames: readonly GpuImage[], table: Tensor, grid: PatchGrid, to?: PatchTarget,
): Tensor {
  checkFrames(frames);
  const p = grid.patchSize;
  const m = grid.mergeSize ?? 1;
  if (grid.gridW % m !== 0 || grid.gridH % m !== 0) {
    throw new WebvlmError("shape_mismatch", `image_patches: grid ${grid.gridW}x${grid.gridH} is not a multiple of the merge size ${m}`);
  }
  const tps = frames.length;
  const rows = grid.gridW * grid.gridH;
  const cols = 3 * tps * p * p;
  const { out, base } = patchTarget(rec, rows, cols, to, "image_patches");
  const src = frames[0];
  const count = rows * cols;
  rec.dispatch({
    code,
    entryPoint: "patches_u8",
    uniforms: packUniforms("uuuuuuuiiuuuuu", count, base, p, m, tps, grid.gridW, grid.gridH, grid.x0 ?? 0, grid.y0 ?? 0,
      src.width, src.height, src.channels, src.rowBytes, packPad(grid.pad)),
    bindings: [table, imageBinding(frames[0]), imageBinding(frames[tps - 1]), out],
    workgroups: grid2d(Math.ceil(count / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "image_patches",
  });
  return out;
}

/**
 * The normalized region [3, height, width] (planar CHW f32) whose top-left pixel is (x0, y0) in
 * `img`; pixels outside the image read `pad` (the processor's 8-bit padding).
 */
export function imageToChw(
  rec: Recorder, img: GpuImage, table: Tensor,
  region: { x0: number; y0: number; width: number; height: number; pad?: readonly [number, number, number] },
): Tensor {
  checkFrames([img]);
  const out = allocTensor(rec.ctx, [3, region.height, region.width], "f32", "image_chw");
  const count = 3 * region.width * region.height;
  rec.dispatch({
    code,
    entryPoint: "chw_u8",
    uniforms: packUniforms("uuuuuuuiiuuuuu", count, 0, 1, 1, 1, region.width, region.height, region.x0, region.y0,
      img.width, img.height, img.channels, img.rowBytes, packPad(region.pad)),
    bindings: [table, imageBinding(img), imageBinding(img), out],
    workgroups: grid2d(Math.ceil(count / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "image_chw",
  });
  return out;
}
