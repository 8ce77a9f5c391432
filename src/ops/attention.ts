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
 */
export interface RowView {
  tensor: Tensor;
  /** Elements per row; default: the tensor's row width (product of shape[1:]). */
  rowStride?: number;
  /** Element column where head 0 starts; default 0. */
  colOffset?: number;
}

/** Checks that `rows` rows of `width` elements fit; returns stride and offset. */
export function resolveView(name: string, view: RowView, rows: number, width: number): { stride: number; off: number } {
  expectDtype(name, view.tensor, ["f32"]);
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
   * cu[0] = 0, cu[n] = Sq; rows past cu[n] get zeros). k/v hold the same Sq rows.
   */
  | { kind: "segments"; cuSeqlens: Tensor };

export interface AttentionPrefillOptions {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Default headDim^-0.5. */
  scale?: number;
  mask: AttentionMask;
  /** [Sq, numHeads * headDim] f32, not aliasing q/k/v; allocated when absent. */
  out?: Tensor;
}

const BR = 16; // tile rows ((query, head-in-group) pairs) per workgroup

function checkHeads(numHeads: number, numKvHeads: number, headDim: number, maxGroup: number, multiple: number): number {
  if (headDim % multiple !== 0 || headDim < multiple || headDim > 128) {
    throw new WebvlmError("unsupported_feature", `attention: headDim ${headDim} must be a multiple of ${multiple} in [${multiple}, 128]`);
  }
  if (numKvHeads < 1 || numHeads % numKvHeads !== 0) {
    throw new WebvlmError("shape_mismatch", `attention: ${numHeads} heads not a multiple of ${numKvHeads} kv heads`);
  }
  const group = numHeads / numKvHeads;
  if (group > maxGroup) throw new WebvlmError("unsupported_feature", `attention: GQA group ${group} > ${maxGroup}`);
  return group;
}

/** Largest key tile (32, 16, 8) whose workgroup memory fits the device limit. */
function prefillKeyTile(rec: Recorder, D: number): number {
  const limit = rec.ctx.limits.maxComputeWorkgroupStorageSize;
  for (const bc of [32, 16, 8]) {
    const bytes = 4 * (BR * (D + 4) + bc * (D + 4) + BR * (bc + 1) + 5 * BR); // vec4 rows + 1 pad
    if (bytes <= limit) return bc;
  }
  throw new WebvlmError("limit_exceeded", `attention: workgroup storage ${limit} too small for headDim ${D}`);
}

/**
 * Prefill / encoder attention: out[i, h] = softmax(q_i . K^T * scale + mask) V over the kv head
 * h / group. Sq = q.tensor.shape[0]. Flash-attention kernel; one pass, f32.
 */
export function attentionPrefill(rec: Recorder, q: RowView, k: RowView, v: RowView, opts: AttentionPrefillOptions): Tensor {
  const { numHeads, numKvHeads, headDim: D } = opts;
  const group = checkHeads(numHeads, numKvHeads, D, Infinity, 16);
  const sq = q.tensor.shape[0];
  const mask = opts.mask;
  let past = 0;
  let numSegments = 0;
  let cu: Tensor = q.tensor; // bound but never read in causal mode
  if (mask.kind === "causal") {
    past = mask.past ?? 0;
    if (!Number.isInteger(past) || past < 0) throw new WebvlmError("bad_request", `attention: past ${past}`);
  } else {
    expectDtype("attention.cuSeqlens", mask.cuSeqlens, ["u32", "i32"]);
    if (mask.cuSeqlens.shape.length !== 1 || mask.cuSeqlens.shape[0] < 2) {
      throw new WebvlmError("shape_mismatch", `attention.cuSeqlens: expected [numSegments + 1], got [${mask.cuSeqlens.shape}]`);
    }
    cu = mask.cuSeqlens;
    numSegments = cu.shape[0] - 1;
  }
  const skv = past + sq;
  const qv = resolveView("attention.q", q, sq, numHeads * D);
  const kv = resolveView("attention.k", k, skv, numKvHeads * D);
  const vv = resolveView("attention.v", v, skv, numKvHeads * D);
  const out = opts.out ?? allocTensor(rec.ctx, [sq, numHeads * D], "f32", "attention");
  expectDtype("attention.out", out, ["f32"]);
  expectShape("attention.out", out, [sq, numHeads * D]);
  const bc = prefillKeyTile(rec, D);
  const tiles = Math.ceil((sq * group) / BR);
  rec.dispatch({
    code: prefillCode,
    constants: { D, BR, BC: bc },
    uniforms: packUniforms(
      "uuuuuuuuuuuuuf",
      sq, skv, numHeads, group, qv.stride, qv.off, kv.stride, kv.off, vv.stride, vv.off,
      past, mask.kind === "causal" ? 0 : 1, numSegments, opts.scale ?? D ** -0.5,
    ),
    bindings: [q.tensor, k.tensor, v.tensor, cu, out],
    workgroups: [tiles, numKvHeads, 1],
    label: "attention_prefill",
  });
  return out;
}

export interface AttentionDecodeOptions {
  numHeads: number;
  /** Default headDim^-0.5. */
  scale?: number;
  /** [1, numHeads * headDim] f32; allocated when absent. */
  out?: Tensor;
}

const DECODE_WG = 64; // keys per sub-tile in the partial pass (shader constant WG)
const MAX_CHUNKS = 256;
const MAX_GROUP = 16;

/** Decode attention of one query row (row 0 of q) over the cache's first `length` rows. */
export function attentionDecode(rec: Recorder, q: RowView, cache: KvCache, length: number, opts: AttentionDecodeOptions): Tensor {
  if (length > cache.maxSeq) {
    throw new WebvlmError("context_length_exceeded", `attention: length ${length} > cache size ${cache.maxSeq}`);
  }
  return attentionDecodeViews(rec, q, { tensor: cache.k }, { tensor: cache.v }, length, {
    ...opts,
    numKvHeads: cache.numKvHeads,
    headDim: cache.headDim,
  });
}

/**
 * Flash-decoding over k/v views: pass 1 splits the `length` keys into chunks (multiples of 64,
 * at most 256 chunks) per kv head, pass 2 merges the chunks of each head.
 */
export function attentionDecodeViews(
  rec: Recorder, q: RowView, k: RowView, v: RowView, length: number,
  opts: AttentionDecodeOptions & { numKvHeads: number; headDim: number },
): Tensor {
  const { numHeads, numKvHeads, headDim: D } = opts;
  const group = checkHeads(numHeads, numKvHeads, D, MAX_GROUP, 4);
  if (!Number.isInteger(length) || length < 1) throw new WebvlmError("bad_request", `attention: decode length ${length}`);
  const qv = resolveView("attention.q", q, 1, numHeads * D);
  const kv = resolveView("attention.k", k, length, numKvHeads * D);
  const vv = resolveView("attention.v", v, length, numKvHeads * D);
  const out = opts.out ?? allocTensor(rec.ctx, [1, numHeads * D], "f32", "attention");
  expectDtype("attention.out", out, ["f32"]);
  expectShape("attention.out", out, [1, numHeads * D]);
  const shared = 4 * (2 * group * D + group * DECODE_WG + 3 * MAX_GROUP);
  if (shared > rec.ctx.limits.maxComputeWorkgroupStorageSize) {
    throw new WebvlmError("limit_exceeded", `attention: decode needs ${shared} bytes of workgroup storage`);
  }

  const tilesPerChunk = Math.ceil(Math.ceil(length / DECODE_WG) / MAX_CHUNKS);
  const chunkSize = tilesPerChunk * DECODE_WG;
  const numChunks = Math.ceil(length / chunkSize);
  const uniforms = packUniforms(
    "uuuuuuuuuf",
    length, chunkSize, numChunks, numHeads, qv.off, kv.stride, kv.off, vv.stride, vv.off, opts.scale ?? D ** -0.5,
  );
  // Scratch partials; released once recorded: later users of the buffer come after us in stream order.
  const part = allocTensor(rec.ctx, [numHeads * numChunks * (D + 2)], "f32", "attention_partials");
  rec.dispatch({
    code: decodeCode,
    entryPoint: "partial",
    constants: { D, GROUP: group },
    uniforms,
    bindings: [part, q.tensor, k.tensor, v.tensor],
    workgroups: [numChunks, numKvHeads, 1],
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
