import code from "../../shaders/add.wgsl?raw";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

/** out = a + b, elementwise over same-shaped f32 tensors. */
export function add(rec: Recorder, a: Tensor, b: Tensor, out?: Tensor): Tensor {
  expectDtype("add.a", a, ["f32"]);
  expectDtype("add.b", b, ["f32"]);
  expectShape("add.b", b, a.shape);
  const y = out ?? allocTensor(rec.ctx, a.shape, "f32", "add");
  expectShape("add.out", y, a.shape);
  const n = numel(a.shape);
  rec.dispatch({
    code,
    uniforms: packUniforms("u", n),
    bindings: [a, b, y],
    workgroups: grid2d(Math.ceil(n / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "add",
  });
  return y;
}
