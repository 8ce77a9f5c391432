import code from "../../shaders/kv_append.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import type { Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";
import { resolveView, type RowView } from "./attention.ts";

/**
 * One decoder layer's KV cache: K and V, each f32 [maxSeq, numKvHeads * headDim], row = token.
 * Why this layout: token-major rows are exactly what the k/v projections produce (one append is a
 * contiguous copy, also from a fused qkv row), the attention kernels read it through the same
 * row-view descriptors as any other k/v, and decode reads whole rows. Why f32: activations are
 * f32 and shader-f16 is optional, so the cache stays exact and needs no conversion; it costs
 * 4 * 2 * numKvHeads * headDim bytes per token and layer (2B: 2 KiB, 57 KiB over 28 layers).
 * An f16 variant (u32-packed, unpack2x16float) would halve that if memory becomes the limit.
 */
export interface KvCache {
  readonly k: Tensor;
  readonly v: Tensor;
  readonly maxSeq: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Rows [0, length) hold valid keys/values; appendKv sets it to position + S. */
  length: number;
}

export interface KvCacheOptions {
  maxSeq: number;
  numKvHeads: number;
  headDim: number;
  label?: string;
}

export function createKvCache(ctx: GpuContext, opts: KvCacheOptions): KvCache {
  const { maxSeq, numKvHeads, headDim } = opts;
  if (![maxSeq, numKvHeads, headDim].every((n) => Number.isInteger(n) && n > 0)) {
    throw new WebvlmError("bad_request", `kv cache: invalid sizes ${maxSeq} x ${numKvHeads} x ${headDim}`);
  }
  const width = numKvHeads * headDim;
  const bytes = maxSeq * width * 4;
  if (bytes > ctx.limits.maxStorageBufferBindingSize) {
    throw new WebvlmError("limit_exceeded", `kv cache: ${bytes} bytes per tensor exceeds maxStorageBufferBindingSize`);
  }
  const label = opts.label ?? "kv_cache";
  return {
    k: allocTensor(ctx, [maxSeq, width], "f32", `${label}.k`),
    v: allocTensor(ctx, [maxSeq, width], "f32", `${label}.v`),
    maxSeq,
    numKvHeads,
    headDim,
    length: 0,
  };
}

export function releaseKvCache(ctx: GpuContext, cache: KvCache): void {
  ctx.pool.release(cache.k.buffer);
  ctx.pool.release(cache.v.buffer);
  cache.length = 0;
}

/**
 * Whether S rows may be written at `position` (every writer of the cache calls this): no gap
 * after `length`, and context_length_exceeded past maxSeq.
 */
export function checkAppend(cache: KvCache, position: number, S: number): void {
  if (!Number.isInteger(position) || position < 0 || position > cache.length) {
    throw new WebvlmError("bad_request", `kv cache: append at ${position} but only ${cache.length} rows are filled`);
  }
  if (position + S > cache.maxSeq) {
    throw new WebvlmError(
      "context_length_exceeded",
      `kv cache: ${position + S} tokens exceed the cache's ${cache.maxSeq}`,
      { needed: position + S, maxSeq: cache.maxSeq },
    );
  }
}

/**
 * Writes S new rows (S = k.tensor.shape[0] unless `rows` is given) of K and V into cache rows
 * [position, position + S). k and v may be column ranges of one fused qkv tensor.
 * Throws context_length_exceeded past maxSeq; position may not leave a gap after `length`.
 */
export function appendKv(rec: Recorder, cache: KvCache, k: RowView, v: RowView, position: number, rows?: number): void {
  const S = rows ?? k.tensor.shape[0];
  checkAppend(cache, position, S);
  const width = cache.numKvHeads * cache.headDim;
  const kv = resolveView("kv_cache.k", k, S, width);
  const vv = resolveView("kv_cache.v", v, S, width);
  rec.dispatch({
    code,
    uniforms: packUniforms("uuuuuuu", S, width, kv.stride, kv.off, vv.stride, vv.off, position),
    bindings: [k.tensor, v.tensor, cache.k, cache.v],
    workgroups: grid2d(Math.ceil((S * width) / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "kv_append",
  });
  cache.length = position + S;
}
