import code from "../../shaders/layer_norm.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

/**
 * LayerNorm over the last dim in f32 (torch semantics, biased variance, two-pass):
 * (x - mean) / sqrt(var + eps) * weight + bias. x is [..., H]; weight and bias f32 [H];
 * out (same shape as x) must not share x's buffer.
 */
export function layerNorm(rec: Recorder, x: Tensor, weight: Tensor, bias: Tensor, eps: number, out?: Tensor): Tensor {
  expectDtype("layerNorm.x", x, ["f32"]);
  expectDtype("layerNorm.weight", weight, ["f32"]);
  expectDtype("layerNorm.bias", bias, ["f32"]);
  if (x.shape.length < 1) throw new WebvlmError("shape_mismatch", "layerNorm.x: needs at least one dim");
  const h = x.shape[x.shape.length - 1];
  expectShape("layerNorm.weight", weight, [h]);
  expectShape("layerNorm.bias", bias, [h]);
  const y = out ?? allocTensor(rec.ctx, x.shape, "f32", "layerNorm");
  expectShape("layerNorm.out", y, x.shape);
  expectDtype("layerNorm.out", y, ["f32"]);
  if (y.buffer === x.buffer) throw new WebvlmError("internal", "layerNorm: out must not alias x (WebGPU binding rules)");
  const rows = h === 0 ? 0 : numel(x.shape) / h;
  rec.dispatch({
    code,
    uniforms: packUniforms("uuf", rows, h, eps),
    bindings: [x, weight, bias, y],
    workgroups: grid2d(rows, rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "layerNorm",
  });
  return y;
}
