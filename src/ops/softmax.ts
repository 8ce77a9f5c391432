import code from "../../shaders/softmax.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

/**
 * Softmax along the last dim in f32 (max-subtracted). x is [..., n] with finite values
 * (mask with a large negative finite number, not -inf: WGSL may assume no infinities).
 * One workgroup per row; out must not share x's buffer.
 */
export function softmax(rec: Recorder, x: Tensor, out?: Tensor): Tensor {
  expectDtype("softmax.x", x, ["f32"]);
  if (x.shape.length < 1) throw new WebvlmError("shape_mismatch", "softmax.x: needs at least one dim");
  const n = x.shape[x.shape.length - 1];
  const y = out ?? allocTensor(rec.ctx, x.shape, "f32", "softmax");
  expectShape("softmax.out", y, x.shape);
  expectDtype("softmax.out", y, ["f32"]);
  if (y.buffer === x.buffer) throw new WebvlmError("internal", "softmax: out must not alias x (WebGPU binding rules)");
  const rows = n === 0 ? 0 : numel(x.shape) / n;
  rec.dispatch({
    code,
    uniforms: packUniforms("uu", rows, n),
    bindings: [x, y],
    workgroups: grid2d(rows, rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "softmax",
  });
  return y;
}
