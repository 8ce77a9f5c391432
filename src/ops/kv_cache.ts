import code from "../../shaders/kv_append.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import { grid2d, packUniforms, Recorder } from "../gpu/recorder.ts";
import { DTYPE_BYTES, expectDtype, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";
import { resolveView, type RowView } from "./attention.ts";

/** Element type of a KV cache: f16 (packed pairs in u32 words, unpack2x16float) or f32. */
export type KvDtype = "f16" | "f32";

/**
 * One decoder layer's KV cache: K and V, each [capacity, rowStride] (row = token, rowStride =
 * numKvHeads * headDim, rounded up to even for f16 so that every row starts on a u32 word).
 * Why this layout: token-major rows are exactly what the k/v projections produce (one append is a
 * contiguous copy, also from a fused qkv row), the attention kernels read it through the same
 * row-view descriptors as any other k/v, and decode reads whole rows.
 * dtype f16 (the default at load): stored with pack2x16float (round to nearest even on the
 * adapters we test; WGSL leaves the rounding direction to the implementation) after clamping to
 * +-65504, read with unpack2x16float, so no shader-f16 is needed; 2 * 2 * numKvHeads * headDim
 * bytes per token and layer. f32: exact, twice that; kept for exact comparisons with references.
 * Growth: the buffers hold `capacity` rows (at first min(maxSeq, 1024) unless told) and grow by
 * doubling, up to maxSeq, when a writer needs more (growKvCache, reserveKv); the valid rows
 * [0, length) are copied, the old buffers go back to the pool.
 */
export interface KvCache {
  k: Tensor;
  v: Tensor;
  /** The most rows the cache may hold (the context length); writes past it are context_length_exceeded. */
  readonly maxSeq: number;
  /** Rows allocated now (<= maxSeq). */
  capacity: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly dtype: KvDtype;
  /** Elements per row: numKvHeads * headDim, + 1 for f16 when that is odd. */
  readonly rowStride: number;
  readonly label: string;
  /** Rows [0, length) hold valid keys/values; appendKv sets it to position + S. */
  length: number;
}

export interface KvCacheOptions {
  maxSeq: number;
  numKvHeads: number;
  headDim: number;
  /** Default "f32" (the engine's default is f16; it passes it). */
  dtype?: KvDtype;
  /** Rows allocated at first; default min(maxSeq, INITIAL_KV_ROWS). */
  initialRows?: number;
  label?: string;
}

/** Rows a cache gets at first unless told otherwise; it grows by doubling when needed. */
export const INITIAL_KV_ROWS = 1024;

/** Elements per cache row for a dtype. */
export function kvRowStride(numKvHeads: number, headDim: number, dtype: KvDtype): number {
  const width = numKvHeads * headDim;
  return dtype === "f16" ? width + (width & 1) : width;
}

/** The most rows one cache tensor of this shape may hold under maxStorageBufferBindingSize. */
export function maxKvRows(ctx: GpuContext, numKvHeads: number, headDim: number, dtype: KvDtype): number {
  const rowBytes = kvRowStride(numKvHeads, headDim, dtype) * DTYPE_BYTES[dtype];
  return Math.floor(Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize ?? Infinity) / rowBytes);
}

function allocRows(ctx: GpuContext, cache: { rowStride: number; dtype: KvDtype; label: string }, rows: number): [Tensor, Tensor] {
  const k = allocTensor(ctx, [rows, cache.rowStride], cache.dtype, `${cache.label}.k`);
  const v = allocTensor(ctx, [rows, cache.rowStride], cache.dtype, `${cache.label}.v`);
  return [k, v];
}

export function createKvCache(ctx: GpuContext, opts: KvCacheOptions): KvCache {
  const { maxSeq, numKvHeads, headDim } = opts;
  const dtype = opts.dtype ?? "f32";
  if (![maxSeq, numKvHeads, headDim].every((n) => Number.isInteger(n) && n > 0)) {
    throw new WebvlmError("bad_request", `kv cache: invalid sizes ${maxSeq} x ${numKvHeads} x ${headDim}`);
  }
  if (dtype !== "f16" && dtype !== "f32") throw new WebvlmError("bad_request", `kv cache: dtype ${String(dtype)} is not "f16" or "f32"`);
  const fit = maxKvRows(ctx, numKvHeads, headDim, dtype);
  if (maxSeq > fit) {
    throw new WebvlmError(
      "context_length_exceeded",
      `kv cache: ${maxSeq} tokens of ${numKvHeads} x ${headDim} ${dtype} keys need ${maxSeq * kvRowStride(numKvHeads, headDim, dtype) * DTYPE_BYTES[dtype]} bytes per tensor, over maxStorageBufferBindingSize ${ctx.limits.maxStorageBufferBindingSize}; at most ${fit} tokens fit`,
      { needed: maxSeq, maxSeq: fit },
    );
  }
  const initial = Math.min(maxSeq, opts.initialRows ?? INITIAL_KV_ROWS);
  if (!Number.isInteger(initial) || initial < 1) throw new WebvlmError("bad_request", `kv cache: initialRows ${opts.initialRows}`);
  const label = opts.label ?? "kv_cache";
  const rowStride = kvRowStride(numKvHeads, headDim, dtype);
  const [k, v] = allocRows(ctx, { rowStride, dtype, label }, initial);
  return { k, v, maxSeq, capacity: initial, numKvHeads, headDim, dtype, rowStride, label, length: 0 };
}

export function releaseKvCache(ctx: GpuContext, cache: KvCache): void {
  ctx.pool.release(cache.k.buffer);
  ctx.pool.release(cache.v.buffer);
  cache.length = 0;
}

/**
 * Makes room for `rows` rows: when the capacity is smaller, allocates max(rows, 2 x capacity)
 * (at most maxSeq) rows, records copies of the valid rows [0, length) into `rec`, and releases
 * the old buffers (later pool users come after the copy in stream order). Without `rec`, records
 * into its own encoder and submits. context_length_exceeded past maxSeq.
 */
export function growKvCache(ctx: GpuContext, cache: KvCache, rows: number, rec?: Recorder): void {
  if (rows > cache.maxSeq) {
    throw new WebvlmError("context_length_exceeded", `kv cache: ${rows} tokens exceed the cache's ${cache.maxSeq}`, { needed: rows, maxSeq: cache.maxSeq });
  }
  if (rows <= cache.capacity) return;
  const capacity = Math.min(cache.maxSeq, Math.max(rows, 2 * cache.capacity));
  const [k, v] = allocRows(ctx, cache, capacity);
  const own = rec ?? new Recorder(ctx);
  const bytes = Math.ceil((cache.length * cache.rowStride * DTYPE_BYTES[cache.dtype]) / 4) * 4;
  if (bytes > 0) {
    own.copy({ buffer: cache.k.buffer, offset: cache.k.offset, size: bytes }, { buffer: k.buffer, offset: k.offset, size: bytes });
    own.copy({ buffer: cache.v.buffer, offset: cache.v.offset, size: bytes }, { buffer: v.buffer, offset: v.offset, size: bytes });
  }
  if (!rec) own.submit();
  ctx.pool.release(cache.k.buffer);
  ctx.pool.release(cache.v.buffer);
  cache.k = k;
  cache.v = v;
  cache.capacity = capacity;
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
 * checkAppend, then grows the cache (copies recorded into `rec`) when position + S rows exceed
 * its capacity. Writers call this before binding cache.k / cache.v.
 */
export function reserveKv(rec: Recorder, cache: KvCache, position: number, S: number): void {
  checkAppend(cache, position, S);
  if (position + S > cache.capacity) {
    // Rows past `position` are about to be overwritten; only [0, position) need copying.
    cache.length = Math.min(cache.length, position);
    growKvCache(rec.ctx, cache, position + S, rec);
  }
}

/**
 * Writes S rows of k and v (f32 row views, width = numKvHeads * headDim each) into rows
 * [position, position + S) of dst tensors [rows, dstStride] of dtype f32 or f16 (pack2x16float
 * after clamping to +-65504). The cache append and any other f16 K/V store (mllama's cross K/V).
 */
export function writeKvRows(
  rec: Recorder, dstK: Tensor, dstV: Tensor, k: RowView, v: RowView, position: number, S: number, width: number, dstStride = width,
): void {
  expectDtype("kv_cache.dst", dstK, ["f32", "f16"]);
  expectDtype("kv_cache.dst", dstV, [dstK.dtype]);
  const f16 = dstK.dtype === "f16";
  if (dstStride < width || (f16 && dstStride % 2 !== 0)) {
    throw new WebvlmError("shape_mismatch", `kv_append: destination row stride ${dstStride} for width ${width} (${dstK.dtype})`);
  }
  for (const [name, t] of [["k", dstK], ["v", dstV]] as const) {
    const rows = t.shape[0];
    if (position + S > rows || t.shape.slice(1).reduce((a, b) => a * b, 1) !== dstStride) {
      throw new WebvlmError("shape_mismatch", `kv_append: rows [${position}, ${position + S}) of stride ${dstStride} outside ${name} [${t.shape}]`);
    }
  }
  if (S === 0) return;
  const kv = resolveView("kv_cache.k", k, S, width);
  const vv = resolveView("kv_cache.v", v, S, width);
  const threads = f16 ? (S * dstStride) / 2 : S * width;
  rec.dispatch({
    code,
    constants: { KV_F16: f16 },
    uniforms: packUniforms("uuuuuuuu", S, width, kv.stride, kv.off, vv.stride, vv.off, position, dstStride),
    bindings: [k.tensor, v.tensor, dstK, dstV],
    workgroups: grid2d(Math.ceil(threads / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label: "kv_append",
  });
}

/**
 * Writes S new rows (S = k.tensor.shape[0] unless `rows` is given) of K and V into cache rows
 * [position, position + S). k and v may be column ranges of one fused qkv tensor.
 * Throws context_length_exceeded past maxSeq; position may not leave a gap after `length`.
 * Grows the cache (recorded into `rec`) when its capacity is short.
 */
export function appendKv(rec: Recorder, cache: KvCache, k: RowView, v: RowView, position: number, rows?: number): void {
  const S = rows ?? k.tensor.shape[0];
  reserveKv(rec, cache, position, S);
  writeKvRows(rec, cache.k, cache.v, k, v, position, S, cache.numKvHeads * cache.headDim, cache.rowStride);
  cache.length = position + S;
}
