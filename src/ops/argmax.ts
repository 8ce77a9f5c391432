import code from "../../shaders/argmax.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import { STORAGE_USAGE } from "../gpu/pool.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";

/** Rows up to this count may use the two-stage (split-row) kernel. */
const MAX_SPLIT_ROWS = 32;
/** Workgroups per row in stage 1, at most. */
const MAX_PARTS = 128;
/** Elements per stage-1 workgroup, at least (about 4 per invocation). */
const MIN_CHUNK = 1024;
/** Rows this long and longer are split when there are few rows (decode: 1 row of ~152k logits). */
const SPLIT_MIN_N = 8192;

/**
 * One small (32 KiB) scratch per device for stage-1 partials ([rows, parts, (key, index)] u32).
 * Shared safely: each call records stage 1 and stage 2 back to back in one command stream,
 * and dispatches run in order, so a later call only overwrites it after the earlier stage 2
 * has read it. Not a pool buffer (so never handed to another op, nor destroyed by
 * pool.clear()); it goes with the device. A pooled temporary would be unsafe here: released
 * before submit, a queue.writeBuffer into its next owner would land before our dispatches.
 */
const scratches = new WeakMap<GpuContext, GPUBuffer>();

function scratch(ctx: GpuContext): GPUBuffer {
  let b = scratches.get(ctx);
  if (!b) {
    b = ctx.device.createBuffer({ size: MAX_SPLIT_ROWS * MAX_PARTS * 2 * 4, usage: STORAGE_USAGE, label: "argmax.partials" });
    scratches.set(ctx, b);
  }
  return b;
}

export interface ArgmaxOptions {
  /** Force the split-row (two-stage) kernel on or off; default: by shape. Split needs rows <= 32. */
  split?: boolean;
}

/**
 * Index of the maximum along the last dim of f32 x [..., n] -> u32 [rows]. Ties give the
 * lowest index (torch.argmax); -0 == +0; a NaN counts as larger than everything, so a row
 * holding NaN yields its first NaN's index (as torch). Comparison is on the f32 bits, so
 * it holds under any float optimisation. Few long rows (decode's one row of logits) run
 * split over many workgroups plus a small second pass.
 */
export function argmax(rec: Recorder, x: Tensor, out?: Tensor, options: ArgmaxOptions = {}): Tensor {
  expectDtype("argmax.x", x, ["f32"]);
  if (x.shape.length < 1) throw new WebvlmError("shape_mismatch", "argmax.x: needs at least one dim");
  const n = x.shape[x.shape.length - 1];
  if (n === 0) throw new WebvlmError("shape_mismatch", "argmax.x: empty last dim");
  const rows = numel(x.shape) / n;
  const y = out ?? allocTensor(rec.ctx, [rows], "u32", "argmax");
  expectShape("argmax.out", y, [rows]);
  expectDtype("argmax.out", y, ["u32"]);
  if (y.buffer === x.buffer) throw new WebvlmError("internal", "argmax: out must not alias x (WebGPU binding rules)");
  const split = options.split ?? (rows <= MAX_SPLIT_ROWS && n >= SPLIT_MIN_N);
  if (split && rows > MAX_SPLIT_ROWS) {
    throw new WebvlmError("internal", `argmax: split kernel supports at most ${MAX_SPLIT_ROWS} rows, got ${rows}`);
  }
  if (!split) {
    rec.dispatch({
      code,
      entryPoint: "single",
      uniforms: packUniforms("uuuu", rows, n, 0, 0),
      bindings: [x, y],
      workgroups: grid2d(rows, rec.ctx.limits.maxComputeWorkgroupsPerDimension),
      label: "argmax",
    });
    return y;
  }
  // Equal-sized chunks with none empty: parts = ceil(n / chunk) after rounding chunk up.
  const chunk = Math.ceil(n / Math.min(MAX_PARTS, Math.max(1, Math.ceil(n / MIN_CHUNK))));
  const parts = Math.ceil(n / chunk);
  const uniforms = packUniforms("uuuu", rows, n, parts, chunk);
  const partials = { buffer: scratch(rec.ctx), offset: 0, size: rows * parts * 2 * 4 };
  rec.dispatch({ code, entryPoint: "stage1", uniforms, bindings: [x, partials], workgroups: [parts, rows], label: "argmax.stage1" });
  rec.dispatch({ code, entryPoint: "stage2", uniforms, bindings: [partials, y], workgroups: [rows], label: "argmax.stage2" });
  return y;
}
