import prefillCode from "../../shaders/attention_prefill.wgsl?raw";
import decodeCode from "../../shaders/attention_decode.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";
import type { KvCache } from "./kv_cache.ts";

/**
 * Rows of heads inside an f32 tensor: row i, element c at i * rowStride + colOffset + c.
 * Lets q/k/v be read from a fused qkv row [S, (Hq + 2 Hkv) * D], separate tensors or a KV cache.
 * k and v may also be f16 tensors (packed pairs, e.g. an f16 KV cache); strides and offsets
 * then count f16 elements, and k and v must share the dtype.
 */
export interface RowView {
  tensor: Tensor;
  /** Elements per row; default: the tensor's row width (product of shape[1:]). */
  rowStride?: number;
  /** Element column where head 0 starts; default 0. */
  colOffset?: number;
}

/** Checks that `rows` rows of `width` elements fit; returns stride and offset. */
export function resolveView(
  name: string, view: RowView, rows: number, width: number, dtypes: readonly string[] = ["f32"],
): { stride: number; off: number } {
  expectDtype(name, view.tensor, dtypes);
  const stride = view.rowStride ?? numel(view.tensor.shape.slice(1));
  const off = view.colOffset ?? 0;
  if (!Number.isInteger(stride) || !Number.isInteger(off) || off < 0 || off + width > stride) {
    throw new WebvlmError("shape_mismatch", `${name}: columns [${off}, ${off + width}) outside row stride ${stride}`);
  }
  if (rows > 0 && (rows - 1) * stride + off + width > numel(view.tensor.shape)) {
    throw new WebvlmError("shape_mismatch", `${name}: ${rows} rows of stride ${stride} exceed [${view.tensor.shape}]`);
  }
  return { stride, off };
}

export type AttentionMask =
  /** Query i (absolute position past + i) sees keys 0..past + i; k/v hold past + Sq rows. */
  | { kind: "causal"; past?: number }
  /**
   * Bidirectional inside each segment [cu[s], cu[s+1]) of the Sq rows, nothing across (u32 [n+1],
   * cu[0] = 0, cu[n] = Sq; rows past cu[n] get no keys). k/v hold the same Sq rows.
   */
  | { kind: "segments"; cuSeqlens: Tensor }
  /**
   * Bidirectional over kvLength keys that need not be the query rows (Sq != Skv): a perceiver's
   * latents over [image | latents] keys, CLIP/SigLIP encoders (kvLength = Sq).
   */
  | { kind: "full"; kvLength: number }
  /**
   * Query i sees keys [ranges[2i], ranges[2i+1]) of kvLength (u32 [Sq, 2]; hi <= lo is an empty
   * row): cross-attention from text rows to the image(s) each may see (mllama).
   */
  | { kind: "ranges"; ranges: Tensor; kvLength: number };

/** A per-key 0/1 mask, combined with the mask kind's key ranges. */
export interface KeyMask {
  /** u32 or i32 [>= Skv]: key j is visible only where keep[j] != 0 (padded patches / tiles are 0). */
  keep: Tensor;
  /**
   * "all" (default): the mask applies to every query row (SigLIP's patch mask, idefics2's
   * perceiver). "maskedRows": only to rows i whose own keep[i] is 0, real rows see every key
   * (self-attention, Sq == Skv): mllama's vision encoder masks (1 - m_i)(1 - m_j), so padded
   * queries see only real keys while real queries also see padding.
   */
  rows?: "all" | "maskedRows";
}

/**
 * What a query row whose key range is empty gets. "zero" (default): a zero output, as Meta's
 * reference mllama (and torchtune) give text rows before any image. "attendAll": softmax over every
 * key [0, Skv) with the key mask ignored, which is what transformers' mllama computes (it multiplies
 * such a row's additive mask by 0, leaving it unmasked, and zeroes only the MLP branch later).
 * A row with a non-empty range whose keys are all removed by the key mask always gets zeros.
 */
export type EmptyRows = "zero" | "attendAll";

export interface AttentionPrefillOptions {
  numHeads: number;
  numKvHeads: number;
  /** Any head dim in [1, 256]. */
  headDim: number;
  /** Default headDim^-0.5. */
  scale?: number;
  mask: AttentionMask;
  keyMask?: KeyMask;
  emptyRows?: EmptyRows;
  /** [Sq, numHeads * headDim] f32, not aliasing q/k/v; allocated when absent. */
  out?: Tensor;
}

const MAX_HEAD_DIM = 256;

function checkHeads(numHeads: number, numKvHeads: number, headDim: number): number {
  if (!Number.isInteger(headDim) || headDim < 1 || headDim > MAX_HEAD_DIM) {
    throw new WebvlmError("unsupported_feature", `attention: headDim ${headDim} must be an integer in [1, ${MAX_HEAD_DIM}]`);
  }
  if (!Number.isInteger(numKvHeads) || numKvHeads < 1 || numHeads % numKvHeads !== 0) {
    throw new WebvlmError("shape_mismatch", `attention: ${numHeads} heads not a multiple of ${numKvHeads} kv heads`);
  }
  return numHeads / numKvHeads;
}

function checkLength(name: string, n: number): number {
  if (!Number.isInteger(n) || n < 0) throw new WebvlmError("bad_request", `attention: ${name} ${n}`);
  return n;
}

function checkKeep(keep: Tensor, need: number): void {
  expectDtype("attention.keyMask", keep, ["u32", "i32"]);
  if (numel(keep.shape) < need) {
    throw new WebvlmError("shape_mismatch", `attention.keyMask: [${keep.shape}] has fewer than ${need} entries`);
  }
}

/** Prefill tile shape: BR rows ((query, head) pairs) and BC keys per tile, TPR threads per row. */
export interface PrefillTiles {
  br: number;
  bc: number;
  tpr: number;
}

/** Workgroup bytes of attention_prefill.wgsl for a tile shape (each variable rounded to 16 bytes). */
export function prefillWorkgroupBytes(D: number, t: PrefillTiles): number {
  const rs = Math.ceil(D / 4) + 1;
  const r16 = (bytes: number) => Math.ceil(bytes / 16) * 16;
  return (
    r16(16 * t.br * rs) + r16(16 * t.bc * rs) + r16(4 * t.br * (t.bc + 1)) + r16(4 * t.bc) +
    6 * r16(4 * t.br) + 2 * 16
  );
}

/**
 * The prefill tile for head dim D under a workgroup-storage limit. Each thread owns at most 8
 * vec4 output columns, so D <= 128 uses 4 threads per row and larger D 8. Tiles are tried from
 * the fastest down: many rows per tile share each K/V tile load, many keys per tile mean fewer
 * barriers. At D = 256 and the 16 KiB minimum limit this ends at 4 rows x 8 keys.
 */
export function prefillTiles(D: number, limit: number): PrefillTiles {
  const tpr = Math.ceil(D / 4) <= 32 ? 4 : 8;
  const shapes: [number, number][] = [[16, 32], [16, 16], [16, 8], [8, 16], [8, 8], [4, 8]];
  for (const [br, bc] of shapes) {
    const t = { br, bc, tpr };
    if (bc >= tpr && prefillWorkgroupBytes(D, t) <= limit) return t;
  }
  throw new WebvlmError("limit_exceeded", `attention: workgroup storage ${limit} too small for headDim ${D}`);
}

const MASK_MODES = { causal: 0, segments: 1, full: 2, ranges: 3 } as const;

/** k/v views (f32, or f16 for an f16 cache: both the same); returns the shaders' KV_F16 constant. */
function resolveKv(
  k: RowView, v: RowView, rows: number, width: number,
): { kv: { stride: number; off: number }; vv: { stride: number; off: number }; f16: boolean } {
  const kv = resolveView("attention.k", k, rows, width, ["f32", "f16"]);
  const vv = resolveView("attention.v", v, rows, width, [k.tensor.dtype]);
  return { kv, vv, f16: k.tensor.dtype === "f16" };
}

/**
 * Prefill / encoder / cross attention: out[i, h] = softmax(q_i . K^T * scale + mask) V over the
 * kv head h / group. Sq = q.tensor.shape[0]; Skv from the mask kind. Flash-attention kernel; one
 * pass, f32 arithmetic; k/v f32 or f16 (an f16 KV cache, read with unpack2x16float).
 */
export function attentionPrefill(rec: Recorder, q: RowView, k: RowView, v: RowView, opts: AttentionPrefillOptions): Tensor {
  const { numHeads, numKvHeads, headDim: D } = opts;
  const group = checkHeads(numHeads, numKvHeads, D);
  const sq = q.tensor.shape[0];
  const mask = opts.mask;
  let past = 0;
  let skv: number;
  let numSegments = 0;
  let rows: Tensor = q.tensor; // bound but never read unless the kind has a rows table
  switch (mask.kind) {
    case "causal":
      past = checkLength("past", mask.past ?? 0);
      skv = past + sq;
      break;
    case "segments":
      expectDtype("attention.cuSeqlens", mask.cuSeqlens, ["u32", "i32"]);
      if (mask.cuSeqlens.shape.length !== 1 || mask.cuSeqlens.shape[0] < 2) {
        throw new WebvlmError("shape_mismatch", `attention.cuSeqlens: expected [numSegments + 1], got [${mask.cuSeqlens.shape}]`);
      }
      rows = mask.cuSeqlens;
      numSegments = rows.shape[0] - 1;
      skv = sq;
      break;
    case "full":
      skv = checkLength("kvLength", mask.kvLength);
      break;
    case "ranges":
      expectDtype("attention.ranges", mask.ranges, ["u32", "i32"]);
      expectShape("attention.ranges", mask.ranges, [sq, 2]);
      rows = mask.ranges;
      skv = checkLength("kvLength", mask.kvLength);
      break;
  }
  let maskMode = 0;
  let keep: Tensor = q.tensor; // bound but never read without a key mask
  if (opts.keyMask) {
    keep = opts.keyMask.keep;
    checkKeep(keep, skv);
    maskMode = opts.keyMask.rows === "maskedRows" ? 2 : 1;
    if (maskMode === 2 && (sq !== skv || mask.kind === "causal")) {
      throw new WebvlmError("bad_request", `attention: keyMask rows "maskedRows" needs bidirectional self-attention (Sq ${sq}, Skv ${skv})`);
    }
  }
  const qv = resolveView("attention.q", q, sq, numHeads * D);
  const { kv, vv, f16 } = resolveKv(k, v, skv, numKvHeads * D);
  const out = opts.out ?? allocTensor(rec.ctx, [sq, numHeads * D], "f32", "attention");
  expectDtype("attention.out", out, ["f32"]);
  expectShape("attention.out", out, [sq, numHeads * D]);
  const tiles = prefillTiles(D, rec.ctx.limits.maxComputeWorkgroupStorageSize);
  rec.dispatch({
    code: prefillCode,
    constants: { D, BR: tiles.br, BC: tiles.bc, TPR: tiles.tpr, ...(f16 ? { KV_F16: true } : {}) },
    uniforms: packUniforms(
      "uuuuuuuuuuuuuuuf",
      sq, skv, numHeads, group, qv.stride, qv.off, kv.stride, kv.off, vv.stride, vv.off,
      past, MASK_MODES[mask.kind], numSegments, maskMode, opts.emptyRows === "attendAll" ? 1 : 0,
      opts.scale ?? D ** -0.5,
    ),
    bindings: [q.tensor, k.tensor, v.tensor, rows, keep, out],
    workgroups: [Math.ceil((sq * group) / tiles.br), numKvHeads, 1],
    label: "attention_prefill",
  });
  return out;
}

export interface AttentionDecodeOptions {
  numHeads: number;
  /** Default headDim^-0.5. */
  scale?: number;
  /** Keys [lo, hi) of the first `length` the row may see; default all of them. */
  keyRange?: readonly [number, number];
  /** u32 or i32 [>= length]: key j is visible only where keyMask[j] != 0. */
  keyMask?: Tensor;
  /** When keyRange is empty; see EmptyRows. */
  emptyRows?: EmptyRows;
  /** [1, numHeads * headDim] f32; allocated when absent. */
  out?: Tensor;
}

const DECODE_WG = 64; // keys per sub-tile in the partial pass (shader constant WG)
const MAX_CHUNKS = 256;
const MAX_GROUP = 16; // heads per decode workgroup (shader constant MAXG)

/** Workgroup bytes of attention_decode.wgsl's partial entry with G heads per workgroup. */
export function decodeWorkgroupBytes(D: number, G: number): number {
  return 2 * 16 * G * Math.ceil(D / 4) + 4 * G * DECODE_WG + 4 * DECODE_WG + 3 * 4 * MAX_GROUP;
}

/** Heads per decode workgroup: the largest divisor of the group (<= 16) that fits the limit. */
export function decodeHeadsPerWorkgroup(D: number, group: number, limit: number): number {
  for (let g = Math.min(group, MAX_GROUP); g >= 1; g--) {
    if (group % g === 0 && decodeWorkgroupBytes(D, g) <= limit) return g;
  }
  throw new WebvlmError("limit_exceeded", `attention: decode needs ${decodeWorkgroupBytes(D, 1)} bytes of workgroup storage`);
}

/** Decode attention of one query row (row 0 of q) over the cache's first `length` rows (f32 or f16). */
export function attentionDecode(rec: Recorder, q: RowView, cache: KvCache, length: number, opts: AttentionDecodeOptions): Tensor {
  if (length > cache.maxSeq) {
    throw new WebvlmError("context_length_exceeded", `attention: length ${length} > cache size ${cache.maxSeq}`);
  }
  if (length > cache.capacity) {
    throw new WebvlmError("internal", `attention: length ${length} > the cache's ${cache.capacity} allocated rows`);
  }
  return attentionDecodeViews(rec, q, { tensor: cache.k }, { tensor: cache.v }, length, {
    ...opts,
    numKvHeads: cache.numKvHeads,
    headDim: cache.headDim,
  });
}

/**
 * Flash-decoding over k/v views: pass 1 splits the visible keys into chunks (multiples of 64,
 * at most 256 chunks) per kv head (per slice of its query heads when workgroup memory is short),
 * pass 2 merges the chunks of each head.
 */
export function attentionDecodeViews(
  rec: Recorder, q: RowView, k: RowView, v: RowView, length: number,
  opts: AttentionDecodeOptions & { numKvHeads: number; headDim: number },
): Tensor {
  const { numHeads, numKvHeads, headDim: D } = opts;
  const group = checkHeads(numHeads, numKvHeads, D);
  if (!Number.isInteger(length) || length < 1) throw new WebvlmError("bad_request", `attention: decode length ${length}`);
  let [lo, hi] = opts.keyRange ?? [0, length];
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 0 || hi > length) {
    throw new WebvlmError("bad_request", `attention: decode keyRange [${lo}, ${hi}) outside [0, ${length})`);
  }
  let keep: Tensor | undefined = opts.keyMask;
  if (hi <= lo) {
    // The row's emptiness is known here, so attendAll is a host-side choice of range and mask.
    if (opts.emptyRows === "attendAll") [lo, hi, keep] = [0, length, undefined];
    else hi = lo;
  }
  if (keep) checkKeep(keep, length);
  const qv = resolveView("attention.q", q, 1, numHeads * D);
  const { kv, vv, f16 } = resolveKv(k, v, length, numKvHeads * D);
  const out = opts.out ?? allocTensor(rec.ctx, [1, numHeads * D], "f32", "attention");
  expectDtype("attention.out", out, ["f32"]);
  expectShape("attention.out", out, [1, numHeads * D]);
  const G = decodeHeadsPerWorkgroup(D, group, rec.ctx.limits.maxComputeWorkgroupStorageSize);

  const keys = hi - lo;
  const tilesPerChunk = Math.max(1, Math.ceil(Math.ceil(keys / DECODE_WG) / MAX_CHUNKS));
  const chunkSize = tilesPerChunk * DECODE_WG;
  const numChunks = Math.max(1, Math.ceil(keys / chunkSize)); // an empty row still writes its zeros
  const uniforms = packUniforms(
    "uuuuuuuuuuuuf",
    lo, hi, chunkSize, numChunks, numHeads, group / G, qv.off, kv.stride, kv.off, vv.stride, vv.off,
    keep ? 1 : 0, opts.scale ?? D ** -0.5,
  );
  // Scratch partials; released once recorded: later users of the buffer come after us in stream order.
  const part = allocTensor(rec.ctx, [numHeads * numChunks * (D + 2)], "f32", "attention_partials");
  rec.dispatch({
    code: decodeCode,
    entryPoint: "partial",
    constants: { D, GROUP: G, ...(f16 ? { KV_F16: true } : {}) },
    uniforms,
    bindings: [part, q.tensor, k.tensor, v.tensor, keep ?? q.tensor],
    workgroups: [numChunks, numHeads / G, 1],
    label: "attention_decode_partial",
  });
  rec.dispatch({
    code: decodeCode,
    entryPoint: "combine",
    constants: { D },
    uniforms,
    bindings: [part, out],
    workgroups: [numHeads, 1, 1],
    label: "attention_decode_combine",
  });
  rec.ctx.pool.release(part.buffer);
  return out;
}
