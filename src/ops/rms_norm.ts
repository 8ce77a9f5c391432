import code from "../../shaders/rms_norm.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

/**
 * RMSNorm over the last dim in f32: x * rsqrt(mean(x^2) + eps) * weight.
 * x is [..., H] (leading dims are rows), weight f32 [H]; out (same shape as x) must not share x's buffer.
 */
export function rmsNorm(rec: Recorder, x: Tensor, weight: Tensor, eps: number, out?: Tensor): Tensor {
  expectDtype("rmsNorm.x", x, ["f32"]);
  expectDtype("rmsNorm.weight", weight, ["f32"]);
  if (x.shape.length < 1) throw new WebvlmError("shape_mismatch", "rmsNorm.x: needs at least one dim");
  const h = x.shape[x.shape.length - 1];
  expectShape("rmsNorm.weight", weight, [h]);
  const y = out ?? allocTensor(rec.ctx, x.shape, "f32", "rmsNorm");
  expectShape("rmsNorm.out", y, x.shape);
  expectDtype("rmsNorm.out", y, ["f32"]);
  if (y.buffer === x.buffer) throw new WebvlmError("internal", "rmsNorm: out must not alias x (WebGPU binding rules)");
  const rows = h === 0 ? 0 : numel(x.shape) / h;
  rec.dispatch({
    code,
    uniforms: packUniforms("uuf", rows, h, eps),
    bindings: [x, weight, y],
    workgroups: grid2d(rows, rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "rmsNorm",
  });
  return y;
}
