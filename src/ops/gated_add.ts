import code from "../../shaders/gated_add.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

export interface GatedAddOptions {
  /** Element of `gate` that holds the scalar; default 0. */
  gateIndex?: number;
  /** "tanh" (default): residual + tanh(g) x. "oneMinusTanh": residual + (1 - tanh(g)) x (mllama's gated position embedding). */
  form?: "tanh" | "oneMinusTanh";
  /**
   * How x's rows cover residual's when x has fewer (rows a multiple of xRows): "repeat", x row
   * r % xRows (a per-patch table over every tile); "interleave", x row r / (rows / xRows) (one
   * vector per tile over its patches). Required when the row counts differ.
   */
  broadcast?: "repeat" | "interleave";
  /** u32 or i32 [rows]: rows with 0 keep the residual unchanged (mllama's full-text-row mask). */
  rowMask?: Tensor;
  /** Destination with residual's shape; pass `residual` itself to add in place. Default: a new tensor. */
  out?: Tensor;
}

function sameView(a: Tensor, b: Tensor): boolean {
  return a.buffer === b.buffer && a.offset === b.offset;
}

/**
 * out = residual + tanh(gate[gateIndex]) * x over f32 [..., cols] tensors, the gate read on the GPU
 * (a 1-element weight such as mllama's cross_attn_attn_gate), so no readback is needed.
 */
export function gatedAdd(rec: Recorder, residual: Tensor, x: Tensor, gate: Tensor, opts: GatedAddOptions = {}): Tensor {
  expectDtype("gatedAdd.residual", residual, ["f32"]);
  expectDtype("gatedAdd.x", x, ["f32"]);
  expectDtype("gatedAdd.gate", gate, ["f32"]);
  const shape = residual.shape;
  if (shape.length < 1) throw new WebvlmError("shape_mismatch", "gatedAdd: residual is a scalar");
  const cols = shape[shape.length - 1];
  const n = numel(shape);
  const rows = cols === 0 ? 0 : n / cols;
  if (x.shape[x.shape.length - 1] !== cols) {
    throw new WebvlmError("shape_mismatch", `gatedAdd: x [${x.shape}] and residual [${shape}] differ in the last axis`);
  }
  const xRows = cols === 0 ? 0 : numel(x.shape) / cols;
  let xDiv = 1;
  if (xRows !== rows) {
    if (!opts.broadcast || xRows === 0 || rows % xRows !== 0) {
      throw new WebvlmError("shape_mismatch", `gatedAdd: x has ${xRows} rows for ${rows} residual rows (broadcast: ${opts.broadcast ?? "none"})`);
    }
    if (opts.broadcast === "interleave") xDiv = rows / xRows;
  }
  const gateIndex = opts.gateIndex ?? 0;
  if (!Number.isInteger(gateIndex) || gateIndex < 0 || gateIndex >= numel(gate.shape)) {
    throw new WebvlmError("shape_mismatch", `gatedAdd: gateIndex ${gateIndex} outside gate [${gate.shape}]`);
  }
  if (opts.rowMask) {
    expectDtype("gatedAdd.rowMask", opts.rowMask, ["u32", "i32"]);
    if (numel(opts.rowMask.shape) < rows) throw new WebvlmError("shape_mismatch", `gatedAdd: rowMask [${opts.rowMask.shape}] shorter than ${rows} rows`);
  }
  const out = opts.out ?? allocTensor(rec.ctx, shape, "f32", "gatedAdd");
  expectDtype("gatedAdd.out", out, ["f32"]);
  expectShape("gatedAdd.out", out, shape);
  const inPlace = sameView(out, residual);
  // WebGPU forbids a buffer bound writable and readable in one dispatch; in place uses one binding.
  const reads = [x, gate, ...(opts.rowMask ? [opts.rowMask] : []), ...(inPlace ? [] : [residual])];
  if (reads.some((t) => t.buffer === out.buffer)) {
    throw new WebvlmError("internal", "gatedAdd: out may only alias residual exactly (same buffer and offset)");
  }
  rec.dispatch({
    code,
    entryPoint: inPlace ? "inplace" : "main",
    uniforms: packUniforms(
      "uuuuuuu",
      n, cols, xRows, xDiv, gateIndex, opts.form === "oneMinusTanh" ? 1 : 0, opts.rowMask ? 1 : 0,
    ),
    bindings: [x, gate, opts.rowMask ?? gate, ...(inPlace ? [out] : [residual, out])],
    workgroups: grid2d(Math.ceil(n / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "gatedAdd",
  });
  return out;
}
