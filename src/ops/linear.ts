import gemvCode from "../../shaders/gemv.wgsl?raw";
import gemvQCode from "../../shaders/gemv_q.wgsl?raw";
import gemvRowsCode from "../../shaders/gemv_rows.wgsl?raw";
import matmulCode from "../../shaders/matmul.wgsl?raw";
import matmulQCode from "../../shaders/matmul_q.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Binding, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";
import { rmsNorm } from "./rms_norm.ts";
import { GROUP_SIZE, paddedCols, type ShardedWeight, type Weight } from "../quant/formats.ts";

/** Largest M that takes the GEMV (weight-streaming) path; x rows go up to 4 per workgroup. */
export const GEMV_MAX_M = 8;
/**
 * Rows up to this K take gemv_rows.wgsl (one thread per output element): for rows of a few
 * vec4s the lane teams' tree reduction costs more than it saves.
 */
export const ROWS_MAX_K = 256;
/** Threads per GEMV workgroup. */
const GEMV_THREADS = 256;
/** Output tile of the GEMM kernels (must match matmul*.wgsl). */
const GEMM_TILE = 64;

export type LinearKernel = "gemv" | "gemv_rows" | "gemm";

function isSharded(w: Weight | ShardedWeight): w is ShardedWeight {
  return (w as ShardedWeight).shards !== undefined;
}

/**
 * The kernel linear() uses for M rows of x and this weight: GEMV for small M when x and weight
 * rows start on vec4 boundaries (K % 4 == 0; K % 8 == 0 for f16) — the one-thread-per-output
 * variant for short rows — else the tiled GEMM.
 */
export function linearKernel(m: number, w: Weight): LinearKernel {
  if (m > GEMV_MAX_M) return "gemm";
  if (w.cols % (w.format === "f16" ? 8 : 4) !== 0) return "gemm";
  return w.cols <= ROWS_MAX_K ? "gemv_rows" : "gemv";
}

/** GEMV workgroup shape: LANES threads along K per team, TEAMS teams, R rows per team, MROWS x rows. */
export interface GemvConfig {
  LANES: number;
  TEAMS: number;
  R: number;
  MROWS: number;
}

/**
 * Heuristic GEMV shape (to be tuned on real GPUs; see the bench). Lanes cover a row's units
 * (q groups or weight vec4s) in few steps, at most 64 so short rows still give many workgroups;
 * R rows per team reuse each x load but cut the workgroup count, so it grows with N.
 */
export function gemvConfig(m: number, n: number, rowUnits: number): GemvConfig {
  const MROWS = m === 1 ? 1 : m === 2 ? 2 : 4;
  let LANES = 8;
  while (LANES < rowUnits && LANES < 64) LANES *= 2;
  const R = Math.min(8 / MROWS, n >= 4096 ? 4 : n >= 1024 ? 2 : 1);
  return { LANES, TEAMS: GEMV_THREADS / LANES, R, MROWS };
}

/**
 * x vec4s per row that the q GEMV stages in workgroup memory at a time (its XC): the whole row
 * when it fits beside the reduction scratch, else the largest multiple of one group (8 vec4s).
 */
export function gemvStagedVec4s(cfg: GemvConfig, k: number, storageLimit: number): number {
  const scratch = 4 * (cfg.R * cfg.MROWS + cfg.MROWS) * cfg.LANES * cfg.TEAMS;
  const fit = Math.floor((storageLimit - scratch) / (16 * cfg.MROWS) / 8) * 8;
  if (fit < 8) throw new WebvlmError("limit_exceeded", `linear: workgroup storage ${storageLimit} too small for the q GEMV`);
  return Math.min(fit, Math.ceil(k / 32) * 8);
}

function checkWeight(name: string, w: Weight): void {
  if (w.format === "q4" || w.format === "q8") {
    const groups = w.paddedCols / GROUP_SIZE;
    if (w.paddedCols !== paddedCols(w.cols)) {
      throw new WebvlmError("shape_mismatch", `${name}: paddedCols ${w.paddedCols} for ${w.cols} cols`);
    }
    expectDtype(`${name}.data`, w.data, ["u32"]);
    expectShape(`${name}.data`, w.data, [w.rows, (w.paddedCols * (w.format === "q4" ? 4 : 8)) / 32]);
    expectDtype(`${name}.scales`, w.scales, ["f16"]);
    expectShape(`${name}.scales`, w.scales, [w.rows, groups]);
    if (w.zeros) {
      // One byte per group, 4 per u32 word (formats.ts); the tensor's shape is free, its size is not.
      expectDtype(`${name}.zeros`, w.zeros, ["u32"]);
      const words = w.zeros.shape.reduce((a, d) => a * d, 1);
      const want = Math.ceil((w.rows * groups) / 4);
      if (words !== want) {
        throw new WebvlmError("shape_mismatch", `${name}.zeros: ${words} u32 words for ${w.rows}x${groups} zero points (want ${want})`);
      }
    }
  } else {
    expectDtype(`${name}.data`, w.data, [w.format]);
    expectShape(`${name}.data`, w.data, [w.rows, w.cols]);
  }
}

export interface LinearOptions {
  /**
   * Add the product into `out` instead of overwriting it: out += x W^T (+ bias). The residual
   * stream's add fused into o_proj / down_proj saves a dispatch and a pass over the row.
   */
  accumulate?: boolean;
  /**
   * y = rmsNorm(x, weight, eps) W^T: on the GEMV paths (decode) the norm is computed inside the
   * kernel (x scaled by the weight as it is read, the row's mean square reduced beside the dot
   * products), saving the norm's dispatch and its output; on the GEMM path rmsNorm runs first.
   */
  rmsNorm?: { weight: Tensor; eps: number };
  /** GEMV workgroup shape instead of gemvConfig's heuristic (benchmarks sweep it to tune the heuristic). */
  gemvShape?: GemvConfig;
}

/**
 * y = x @ W^T + bias. x: f32 [M, K]; W: [N, K] (PyTorch Linear layout) in any weight format, or
 * sharded along N (one dispatch per shard, each writing its column slice of y); bias: f32 [N].
 */
export function linear(rec: Recorder, x: Tensor, w: Weight | ShardedWeight, bias?: Tensor, out?: Tensor, opts: LinearOptions = {}): Tensor {
  const N = w.rows;
  const K = w.cols;
  expectDtype("linear.x", x, ["f32"]);
  expectShape("linear.x", x, [null, K]);
  const M = x.shape[0];
  if (bias) {
    expectDtype("linear.bias", bias, ["f32"]);
    expectShape("linear.bias", bias, [N]);
  }
  const shards = isSharded(w) ? w.shards : [{ rowStart: 0, weight: w }];
  let next = 0;
  for (const [i, s] of shards.entries()) {
    const sw = s.weight;
    if (s.rowStart !== next || sw.cols !== K || sw.format !== w.format) {
      throw new WebvlmError("shape_mismatch", `linear: shard ${i} (rows from ${s.rowStart}, ${sw.rows}x${sw.cols} ${sw.format}) does not continue a ${w.format} [${N}, ${K}] weight at row ${next}`);
    }
    checkWeight(`linear.w[${i}]`, sw);
    next += sw.rows;
  }
  if (next !== N) throw new WebvlmError("shape_mismatch", `linear: shards cover ${next} of ${N} rows`);

  if (opts.accumulate && !out) throw new WebvlmError("bad_request", "linear: accumulate needs an out tensor to add into");
  const norm = opts.rmsNorm;
  if (norm) {
    expectDtype("linear.rmsNorm.weight", norm.weight, ["f32"]);
    expectShape("linear.rmsNorm.weight", norm.weight, [K]);
    if (M > 0 && shards.some((s) => linearKernel(M, s.weight) === "gemm")) {
      // The tiled GEMM has no fused norm: normalize first (prefill; the norm is cheap next to it).
      const normed = rmsNorm(rec, x, norm.weight, norm.eps);
      const y = linear(rec, normed, w, bias, out, { accumulate: opts.accumulate });
      rec.ctx.pool.release(normed.buffer);
      return y;
    }
  }
  const y = out ?? allocTensor(rec.ctx, [M, N], "f32", "linear");
  expectDtype("linear.out", y, ["f32"]);
  expectShape("linear.out", y, [M, N]);
  if (y.buffer === x.buffer || (bias && y.buffer === bias.buffer)) {
    throw new WebvlmError("internal", "linear: out must not share a buffer with x or bias");
  }
  if (M === 0 || N === 0) return y;
  for (const s of shards) dispatchShard(rec, x, s.weight, s.rowStart, bias, y, M, N, opts.accumulate ?? false, norm, opts.gemvShape);
  return y;
}

function dispatchShard(
  rec: Recorder, x: Tensor, w: Weight, col: number, bias: Tensor | undefined, y: Tensor, M: number, outStride: number,
  accumulate: boolean, norm: LinearOptions["rmsNorm"], shape: GemvConfig | undefined,
): void {
  const { limits } = rec.ctx;
  const N = w.rows;
  const K = w.cols;
  const quant = w.format === "q4" || w.format === "q8";
  // The bias flag is a uniform, not an override: half the pipelines for a negligible branch.
  const uniforms = packUniforms("uuuuuuuf", M, N, K, col, outStride, bias ? 1 : 0, accumulate ? 1 : 0, norm?.eps ?? 0);
  const constants: Record<string, number | boolean> = quant ? { BITS: w.format === "q4" ? 4 : 8 } : { WEIGHT_F16: w.format === "f16" };
  // Zero points: a separate entry point of each q kernel (the only one that references the zeros
  // binding, so the symmetric pipelines' auto layouts and bind groups stay as they were).
  const zeros = quant ? w.zeros : undefined;
  if (zeros) constants.ZEROS = true;
  // The fused norm is a pipeline constant: its per-element scaling must cost nothing when off.
  if (norm) constants.NORM = true;
  // Without a bias the slot still has to be bound (layout "auto"); x is read-only, so reuse it.
  const weightBindings: Binding[] = quant ? [w.data, w.scales] : [w.data];
  const kernel = linearKernel(M, w);
  const bindings: Binding[] = [x, ...weightBindings, bias ?? x, y];
  // The GEMV kernels bind the norm weight last (x again when there is none); the GEMM has no slot.
  if (kernel !== "gemm") bindings.push(norm?.weight ?? x);
  // The zeros come after every other binding (auto layout numbers them in order).
  if (zeros) bindings.push(zeros);
  const label = `linear ${w.format}${zeros ? "+z" : ""} ${M}x${N}x${K}${norm ? " +norm" : ""}${accumulate ? " +=" : ""}`;

  if (kernel === "gemv_rows") {
    const [gx, gy] = grid2d(Math.ceil(N / 64), limits.maxComputeWorkgroupsPerDimension);
    rec.dispatch({
      code: gemvRowsCode,
      entryPoint: quant ? (zeros ? "quant_zeros" : "quant") : "dense",
      constants,
      uniforms,
      bindings,
      workgroups: [gx, gy, M],
      label: `${label} gemv_rows`,
    });
  } else if (kernel === "gemv") {
    const rowUnits = quant ? paddedCols(K) / GROUP_SIZE : K / (w.format === "f16" ? 8 : 4);
    const cfg = shape ?? gemvConfig(M, N, rowUnits);
    const [gx, gy] = grid2d(Math.ceil(N / (cfg.TEAMS * cfg.R)), limits.maxComputeWorkgroupsPerDimension);
    if (quant) constants.XC = gemvStagedVec4s(cfg, K, limits.maxComputeWorkgroupStorageSize);
    rec.dispatch({
      code: quant ? gemvQCode : gemvCode,
      entryPoint: zeros ? "main_zeros" : "main",
      constants: { ...constants, ...cfg },
      uniforms,
      bindings,
      workgroups: [gx, gy, Math.ceil(M / cfg.MROWS)],
      label: `${label} gemv`,
    });
  } else {
    rec.dispatch({
      code: quant ? matmulQCode : matmulCode,
      entryPoint: zeros ? "main_zeros" : "main",
      constants,
      uniforms,
      bindings,
      workgroups: [Math.ceil(N / GEMM_TILE), Math.ceil(M / GEMM_TILE)],
      label: `${label} gemm`,
    });
  }
}
