import code from "../../shaders/chw_patches.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, type Tensor } from "../gpu/tensor.ts";
import { patchTarget, type PatchGrid, type PatchTarget } from "./image_patches.ts";

/**
 * Patch rows [gridH * gridW, 3 * p * p] (columns (channel, py, px), rows row-major) of an f32
 * [3, H, W] tensor, the grid's top-left pixel at (x0, y0) and inside the tensor (no padding,
 * no merge windows): Phi-3.5-vision's global view after its float bicubic resize.
 */
export function chwPatches(rec: Recorder, chw: Tensor, grid: PatchGrid, to?: PatchTarget): Tensor {
  expectDtype("chw_patches", chw, ["f32"]);
  const [c, h, w] = chw.shape;
  const p = grid.patchSize;
  const x0 = grid.x0 ?? 0;
  const y0 = grid.y0 ?? 0;
  if (chw.shape.length !== 3 || c !== 3 || x0 < 0 || y0 < 0 || x0 + grid.gridW * p > w || y0 + grid.gridH * p > h || (grid.mergeSize ?? 1) !== 1) {
    throw new WebvlmError("shape_mismatch", `chw_patches: a ${grid.gridW}x${grid.gridH} grid of ${p}-pixel patches at (${x0}, ${y0}) is not inside [${chw.shape}]`);
  }
  const rows = grid.gridW * grid.gridH;
  const cols = 3 * p * p;
  const { out, base } = patchTarget(rec, rows, cols, to, "chw_patches");
  const count = rows * cols;
  rec.dispatch({
    code,
    uniforms: packUniforms("uuuuuuuu", count, base, p, grid.gridW, x0, y0, w, h),
    bindings: [chw, out],
    workgroups: grid2d(Math.ceil(count / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "chw_patches",
  });
  return out;
}
