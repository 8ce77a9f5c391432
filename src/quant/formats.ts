import { WebvlmError } from "../api/errors.ts";
import type { Tensor } from "../gpu/tensor.ts";

/**
 * Weight formats of a Linear layer's [rows = out_features, cols = in_features]
 * matrix (PyTorch layout; y = x @ W^T).
 *
 * q4: groups of 32 along cols; a group's 32 nibbles are 4 u32 words (one
 * vec4<u32>), nibble i of the group at bits 4*(i%8) of word i/8 (low nibble =
 * even index); value = (q - 8) * scale. q8: 8 u32 words per group, byte i%4 of
 * word i/4 is a signed int8; value = q * scale. Scales are f16, one per group,
 * stored [rows, groups] and packed in pairs. cols are zero-padded to a
 * multiple of 32 (paddedCols); padded weights quantize to exactly 0.
 *
 * Asymmetric groups (pre-quantized GPTQ/AWQ checkpoints, whose groups of 128 or a whole row are
 * stored as runs of 32-wide groups with equal scale and zero): an optional zero point per group,
 * one byte each, 4 per u32 word (byte g % 4 of word g / 4 of the row-major [rows, groups] list);
 * then every code is unsigned (q4 0..15, q8 0..255) and value = (q - zero) * scale.
 */
export type WeightFormat = "f32" | "f16" | "q8" | "q4";

export const GROUP_SIZE = 32;

export interface DenseWeight {
  readonly format: "f32" | "f16";
  readonly rows: number;
  readonly cols: number;
  /** shape [rows, cols], dtype = format */
  readonly data: Tensor;
}

export interface QuantizedWeight {
  readonly format: "q4" | "q8";
  readonly rows: number;
  readonly cols: number;
  /** cols rounded up to a multiple of GROUP_SIZE */
  readonly paddedCols: number;
  /** u32 words, shape [rows, paddedCols * bits / 32] */
  readonly data: Tensor;
  /** f16, shape [rows, paddedCols / GROUP_SIZE] */
  readonly scales: Tensor;
  /** Zero points, u32 words holding [rows * groups] bytes (see above); absent: symmetric. */
  readonly zeros?: Tensor;
}

export type Weight = DenseWeight | QuantizedWeight;

/**
 * A weight too large for one storage binding, split along rows (output
 * features). Each shard covers rows [rowStart, rowStart + shard.rows).
 */
export interface ShardedWeight {
  readonly format: WeightFormat;
  readonly rows: number;
  readonly cols: number;
  readonly shards: readonly { readonly rowStart: number; readonly weight: Weight }[];
}

export function paddedCols(cols: number): number {
  return Math.ceil(cols / GROUP_SIZE) * GROUP_SIZE;
}

/** Bytes of the largest tensor one row of a weight in `format` adds (data; scales are smaller). */
export function rowBytes(cols: number, format: WeightFormat): number {
  if (format === "f32") return cols * 4;
  if (format === "f16") return cols * 2;
  return (paddedCols(cols) * (format === "q4" ? 4 : 8)) / 8;
}

/**
 * Rows per shard when a [rows, cols] weight is split so every tensor stays within maxBytes (tensor
 * sizes round up to whole u32 words, so the limit is rounded down to one). limit_exceeded when
 * not even one row fits.
 */
export function rowsPerShard(maxBytes: number, cols: number, format: WeightFormat, name: string): number {
  const perShard = Math.floor((Math.floor(maxBytes / 4) * 4) / rowBytes(cols, format));
  if (perShard < 1) throw new WebvlmError("limit_exceeded", `${name}: one row of ${cols} ${format} values exceeds ${maxBytes} bytes`);
  return perShard;
}
