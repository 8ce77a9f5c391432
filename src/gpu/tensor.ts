import { WebvlmError } from "../api/errors.ts";

/**
 * Element types of dense GPU tensors. f16 is stored as packed pairs in u32
 * words (read with unpack2x16float), so it loads without shader-f16.
 */
export type DType = "f32" | "f16" | "u32" | "i32";

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, u32: 4, i32: 4 };

/** A view of a GPU buffer: byte offset, row-major shape, dtype. */
export interface Tensor {
  readonly buffer: GPUBuffer;
  /** Byte offset into buffer; a multiple of minStorageBufferOffsetAlignment when bound. */
  readonly offset: number;
  readonly shape: readonly number[];
  readonly dtype: DType;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Bytes the tensor's elements occupy (f16 rounded up to whole u32 words). */
export function byteSize(t: { shape: readonly number[]; dtype: DType }): number {
  const raw = numel(t.shape) * DTYPE_BYTES[t.dtype];
  return Math.ceil(raw / 4) * 4;
}

/** Same bytes, another shape (row-major reinterpretation, e.g. the merger's 4 rows -> 1). */
export function reshape(t: Tensor, shape: readonly number[]): Tensor {
  if (numel(shape) !== numel(t.shape)) {
    throw new WebvlmError("shape_mismatch", `cannot reshape [${t.shape}] to [${shape}]`);
  }
  return { ...t, shape: [...shape] };
}

/** Rows [start, start+count) of a tensor whose first axis is rows. */
export function sliceRows(t: Tensor, start: number, count: number): Tensor {
  const rowElems = numel(t.shape.slice(1));
  const rowBytes = rowElems * DTYPE_BYTES[t.dtype];
  if (start < 0 || start + count > t.shape[0]) {
    throw new WebvlmError("shape_mismatch", `rows [${start}, ${start + count}) outside [0, ${t.shape[0]})`);
  }
  return { ...t, offset: t.offset + start * rowBytes, shape: [count, ...t.shape.slice(1)] };
}

export function expectShape(name: string, t: { shape: readonly number[] }, shape: readonly (number | null)[]): void {
  const ok = t.shape.length === shape.length && shape.every((d, i) => d === null || d === t.shape[i]);
  if (!ok) {
    const want = shape.map((d) => (d === null ? "*" : d)).join(", ");
    throw new WebvlmError("shape_mismatch", `${name}: expected shape [${want}], got [${t.shape.join(", ")}]`);
  }
}

export function expectDtype(name: string, t: { dtype: string }, allowed: readonly string[]): void {
  if (!allowed.includes(t.dtype)) {
    throw new WebvlmError("dtype_mismatch", `${name}: dtype ${t.dtype} not in {${allowed.join(", ")}}`);
  }
}

/** Whether a value is a Tensor (a GPU buffer view with shape and dtype), e.g. a payload's pixels. */
export function isTensor(v: unknown): v is Tensor {
  const t = v as Partial<Tensor> | null;
  return t !== null && typeof t === "object" && Array.isArray(t.shape) && typeof t.dtype === "string" && t.buffer !== undefined;
}
