import code from "../../shaders/rope.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, numel, type Tensor } from "../gpu/tensor.ts";
import { reserveKv, writeKvRows, type KvCache } from "./kv_cache.ts";

export interface RopeOptions {
  numHeads: number;
  headDim: number;
  /** Element column of head 0 inside a row (e.g. 0 for q in a fused qkv row). Default 0. */
  colOffset?: number;
  /** Elements per row of x. Default x.shape[1]. */
  rowStride?: number;
  /** RoPE base; ignored when invFreq is given. */
  theta?: number;
  /**
   * inv_freq [headDim / 2] computed on the CPU (llama3-scaled, longrope, ... rope specs); replaces
   * the theta / restartPerSection computation. Frequency j still takes its position from the
   * section containing j.
   */
  invFreq?: ArrayLike<number>;
  /**
   * cos and sin are multiplied by this (transformers' attention_scaling: longrope / yarn's
   * attention factor, which scales q.k by its square). Default 1 (exact: no change).
   */
  scaling?: number;
  /**
   * Frequency counts per position row (sum = headDim / 2): [headDim/2] for 1-D RoPE,
   * [16, 24, 24] for Qwen2-VL M-RoPE, [20, 20] for the vision 2-D rotary.
   */
  sections: readonly number[];
  /**
   * true: the frequency index restarts in each section and the exponent's denominator is
   * 2 * sectionSize (vision: inv[k] = theta^(-2k/40) per axis); false: inv[j] = theta^(-2j/headDim).
   */
  restartPerSection?: boolean;
}

const MAX_HALF = 128;

/**
 * inv_freq as torch computes it in f32: 1 / (theta ** (arange(0, dim, 2) / dim)), each step
 * rounded to f32 (pow evaluated in f64, then rounded: the correctly rounded f32 result).
 */
export function ropeInvFreq(theta: number, headDim: number, sections: readonly number[], restart: boolean): Float32Array {
  const f = Math.fround;
  const half = headDim / 2;
  const inv = new Float32Array(half);
  let j = 0;
  for (const size of restart ? sections : [half]) {
    const dim = restart ? 2 * size : headDim;
    for (let k = 0; k < size; k++) inv[j++] = f(1 / f(Math.pow(theta, f((2 * k) / dim))));
  }
  return inv;
}

/**
 * Rotates `numHeads` heads of `headDim` in place in each row of x (f32), rotate_half style.
 * positions: i32/u32, [numSections, S] (or [S] with one section); S = its last dimension.
 * To rotate q and k of a fused qkv row in one dispatch, pass numHeads = Hq + Hkv, colOffset 0
 * (k's heads directly follow q's).
 * Accuracy: angles are reduced exactly up to ~51000 rad (positions to 32768 and beyond).
 */
export function applyRope(rec: Recorder, x: Tensor, positions: Tensor, opts: RopeOptions): Tensor {
  const { u, threads } = ropeUniforms(x, positions, opts, 0, 0);
  rec.dispatch({
    code,
    uniforms: u,
    bindings: [x, positions],
    workgroups: grid2d(Math.ceil(threads / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "rope",
  });
  return x;
}

export interface RopeKvOptions extends Omit<RopeOptions, "numHeads" | "colOffset"> {
  numQHeads: number;
}

/**
 * A decoder layer's RoPE and KV append in one dispatch: in fused q|k|v rows (x f32, S rows of
 * rowStride; q's heads, then cache.numKvHeads k heads, then as many v heads), q and k are rotated
 * in place, rotated k goes to cache rows [position, position + S) and v beside it. Same result as
 * applyRope over q|k followed by appendKv (which is what an f16 cache gets: two dispatches).
 */
export function ropeAppendKv(rec: Recorder, x: Tensor, positions: Tensor, cache: KvCache, position: number, opts: RopeKvOptions): void {
  const { numQHeads, headDim } = opts;
  const Hkv = cache.numKvHeads;
  if (cache.headDim !== headDim) throw new WebvlmError("shape_mismatch", `rope+kv: head dim ${headDim} vs the cache's ${cache.headDim}`);
  const rowStride = opts.rowStride ?? numel(x.shape.slice(1));
  if ((numQHeads + 2 * Hkv) * headDim > rowStride) {
    throw new WebvlmError("shape_mismatch", `rope+kv: ${numQHeads} q + 2 x ${Hkv} kv heads of ${headDim} exceed row stride ${rowStride}`);
  }
  const { u, threads, S } = ropeUniforms(x, positions, { ...opts, numHeads: numQHeads + Hkv, colOffset: 0, rowStride }, numQHeads, position);
  reserveKv(rec, cache, position, S);
  if (cache.dtype === "f16") {
    // An f16 cache: rotate q|k in place, then store k and v as f16 pairs (kv_append).
    applyRope(rec, x, positions, { ...opts, numHeads: numQHeads + Hkv, colOffset: 0, rowStride });
    const kv = { tensor: x, rowStride };
    writeKvRows(rec, cache.k, cache.v, { ...kv, colOffset: numQHeads * headDim }, { ...kv, colOffset: (numQHeads + Hkv) * headDim },
      position, S, Hkv * headDim, cache.rowStride);
    cache.length = position + S;
    return;
  }
  rec.dispatch({
    code,
    entryPoint: "main_kv",
    uniforms: u,
    bindings: [x, positions, cache.k, cache.v],
    workgroups: grid2d(Math.ceil(threads / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "rope+kv_append",
  });
  cache.length = position + S;
}

/** Checks shapes and packs rope.wgsl's uniform block (qHeads/position: main_kv only). */
function ropeUniforms(x: Tensor, positions: Tensor, opts: RopeOptions, qHeads: number, position: number): { u: ArrayBuffer; threads: number; S: number } {
  const { numHeads, headDim, sections } = opts;
  expectDtype("rope.x", x, ["f32"]);
  expectDtype("rope.positions", positions, ["i32", "u32"]);
  const half = headDim / 2;
  if (!Number.isInteger(half) || half < 1 || half > MAX_HALF) {
    throw new WebvlmError("shape_mismatch", `rope: headDim ${headDim} must be even and <= ${2 * MAX_HALF}`);
  }
  if (sections.length < 1 || sections.length > 3 || sections.reduce((a, b) => a + b, 0) !== half) {
    throw new WebvlmError("shape_mismatch", `rope: sections [${sections}] must be 1..3 counts summing to ${half}`);
  }
  const nsec = sections.length;
  const pshape = positions.shape;
  const S = pshape[pshape.length - 1];
  const prow = pshape.length === 1 ? 1 : pshape[0];
  if (pshape.length > 2 || prow < nsec) {
    throw new WebvlmError("shape_mismatch", `rope: positions [${pshape}] need ${nsec} row(s) of S`);
  }
  if (x.shape.length < 1) throw new WebvlmError("shape_mismatch", "rope: x must have rows");
  const rowStride = opts.rowStride ?? numel(x.shape.slice(1));
  const colOffset = opts.colOffset ?? 0;
  if (colOffset + numHeads * headDim > rowStride) {
    throw new WebvlmError("shape_mismatch", `rope: heads [${colOffset}, +${numHeads * headDim}) exceed row stride ${rowStride}`);
  }
  if (S > 0 && (S - 1) * rowStride + colOffset + numHeads * headDim > numel(x.shape)) {
    throw new WebvlmError("shape_mismatch", `rope: ${S} rows of stride ${rowStride} exceed x [${x.shape}]`);
  }

  let inv: ArrayLike<number>;
  if (opts.invFreq) {
    if (opts.invFreq.length !== half) throw new WebvlmError("shape_mismatch", `rope: invFreq has ${opts.invFreq.length} entries, expected headDim/2 = ${half}`);
    inv = opts.invFreq;
  } else {
    if (opts.theta === undefined) throw new WebvlmError("bad_request", "rope: neither theta nor invFreq given");
    inv = ropeInvFreq(opts.theta, headDim, sections, opts.restartPerSection ?? false);
  }
  const scaling = opts.scaling ?? 1;
  if (!Number.isFinite(scaling) || scaling <= 0) throw new WebvlmError("bad_request", `rope: scaling ${scaling} must be a positive number`);
  const bound0 = nsec > 1 ? sections[0] : half;
  const bound1 = nsec > 2 ? sections[0] + sections[1] : half;
  const u = new ArrayBuffer(48 + MAX_HALF * 4);
  const ui = new Uint32Array(u, 0, 12);
  ui.set([S, rowStride, colOffset, numHeads, half, bound0, bound1, S, 0, qHeads, position]);
  new Float32Array(u, 44, 1)[0] = scaling;
  new Float32Array(u, 48, MAX_HALF).set(inv);
  return { u, threads: S * numHeads * half, S };
}
