import code from "../../shaders/activation.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

/** Values of the shader's ACT override. */
const ACT = { siluMul: 0, quickGelu: 1, gelu: 2, erf: 3, geluTanh: 4, geluTanhMul: 5 } as const;

interface Window {
  t: Tensor;
  stride: number;
  offset: number;
}

function run(rec: Recorder, act: number, label: string, a: Window, b: Window, rows: number, cols: number, y: Tensor): void {
  if (y.buffer === a.t.buffer || y.buffer === b.t.buffer) {
    throw new WebvlmError("internal", `${label}: out must not alias an input (WebGPU binding rules)`);
  }
  const n = rows * cols;
  rec.dispatch({
    code,
    constants: { ACT: act },
    uniforms: packUniforms("uuuuuu", n, cols, a.stride, a.offset, b.stride, b.offset),
    bindings: [a.t, b.t, y],
    workgroups: grid2d(Math.ceil(n / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label,
  });
}

function unary(rec: Recorder, act: number, label: string, x: Tensor, out?: Tensor): Tensor {
  expectDtype(`${label}.x`, x, ["f32"]);
  const y = out ?? allocTensor(rec.ctx, x.shape, "f32", label);
  expectShape(`${label}.out`, y, x.shape);
  expectDtype(`${label}.out`, y, ["f32"]);
  const n = numel(x.shape);
  const w = { t: x, stride: n, offset: 0 };
  run(rec, act, label, w, w, 1, n, y);
  return y;
}

/** act(gate) * up over same-shaped f32 tensors (separate gate and up). */
function gatedMul(rec: Recorder, act: number, label: string, gate: Tensor, up: Tensor, out?: Tensor): Tensor {
  expectDtype(`${label}.gate`, gate, ["f32"]);
  expectDtype(`${label}.up`, up, ["f32"]);
  expectShape(`${label}.up`, up, gate.shape);
  const y = out ?? allocTensor(rec.ctx, gate.shape, "f32", label);
  expectShape(`${label}.out`, y, gate.shape);
  expectDtype(`${label}.out`, y, ["f32"]);
  const n = numel(gate.shape);
  run(rec, act, label, { t: gate, stride: n, offset: 0 }, { t: up, stride: n, offset: 0 }, 1, n, y);
  return y;
}

/** act(gate) * up on a fused gate|up projection [rows, 2I] (gate columns [0, I), up [I, 2I)) -> [rows, I]. */
function gatedMulFused(rec: Recorder, act: number, label: string, gateUp: Tensor, out?: Tensor): Tensor {
  expectDtype(`${label}.gateUp`, gateUp, ["f32"]);
  expectShape(`${label}.gateUp`, gateUp, [null, null]);
  const [rows, twoI] = gateUp.shape;
  if (twoI % 2 !== 0) throw new WebvlmError("shape_mismatch", `${label}: width ${twoI} is odd`);
  const cols = twoI / 2;
  const y = out ?? allocTensor(rec.ctx, [rows, cols], "f32", label);
  expectShape(`${label}.out`, y, [rows, cols]);
  expectDtype(`${label}.out`, y, ["f32"]);
  run(rec, act, label, { t: gateUp, stride: twoI, offset: 0 }, { t: gateUp, stride: twoI, offset: cols }, rows, cols, y);
  return y;
}

/** SwiGLU: silu(gate) * up, elementwise over same-shaped f32 [..., I] tensors. */
export function siluMul(rec: Recorder, gate: Tensor, up: Tensor, out?: Tensor): Tensor {
  return gatedMul(rec, ACT.siluMul, "siluMul", gate, up, out);
}

/**
 * SwiGLU on a fused gate|up projection: gateUp is [rows, 2I] with gate in columns [0, I)
 * and up in [I, 2I) of each row; returns silu(gate) * up as [rows, I].
 */
export function siluMulFused(rec: Recorder, gateUp: Tensor, out?: Tensor): Tensor {
  return gatedMulFused(rec, ACT.siluMul, "siluMulFused", gateUp, out);
}

/** GeGLU with the tanh GELU: geluTanh(gate) * up, elementwise over same-shaped f32 tensors. */
export function geluTanhMul(rec: Recorder, gate: Tensor, up: Tensor, out?: Tensor): Tensor {
  return gatedMul(rec, ACT.geluTanhMul, "geluTanhMul", gate, up, out);
}

/** geluTanh(gate) * up on a fused gate|up projection [rows, 2I]; returns [rows, I]. */
export function geluTanhMulFused(rec: Recorder, gateUp: Tensor, out?: Tensor): Tensor {
  return gatedMulFused(rec, ACT.geluTanhMul, "geluTanhMulFused", gateUp, out);
}

/** x * sigmoid(1.702 x), elementwise (Qwen2-VL vision MLP). */
export function quickGelu(rec: Recorder, x: Tensor, out?: Tensor): Tensor {
  return unary(rec, ACT.quickGelu, "quickGelu", x, out);
}

/**
 * 0.5 x (1 + erf(x / sqrt 2)), elementwise (torch's exact GELU), with the shader's f32 erf
 * (about 1.15 ulp). For x < -sqrt 2 it uses erfc directly, so the negative tail keeps ~1e-5
 * relative accuracy instead of cancelling. See shaders/activation.wgsl.
 */
export function gelu(rec: Recorder, x: Tensor, out?: Tensor): Tensor {
  return unary(rec, ACT.gelu, "gelu", x, out);
}

/** erf(x), elementwise: the approximation gelu uses, exposed for tests and reuse. */
export function erf(rec: Recorder, x: Tensor, out?: Tensor): Tensor {
  return unary(rec, ACT.erf, "erf", x, out);
}

/**
 * GELU with the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise:
 * torch's gelu(approximate="tanh"), transformers' "gelu_pytorch_tanh" / "gelu_new" (SigLIP,
 * idefics2's vision tower). Computed as x * sigmoid(2u), which equals it exactly and keeps relative
 * accuracy in the negative tail. See shaders/activation.wgsl.
 */
export function geluTanh(rec: Recorder, x: Tensor, out?: Tensor): Tensor {
  return unary(rec, ACT.geluTanh, "geluTanh", x, out);
}
