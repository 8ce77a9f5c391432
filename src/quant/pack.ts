import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import type { Tensor } from "../gpu/tensor.ts";
import { uploadTensor } from "../gpu/transfer.ts";
import { f16BitsToF32, f32ToF16Bits } from "./f16.ts";
import { GROUP_SIZE, paddedCols, rowsPerShard, type QuantizedWeight, type ShardedWeight, type Weight, type WeightFormat } from "./formats.ts";

/** CPU-side packed form of a quantized [rows, cols] matrix (layout in formats.ts). */
export interface PackedQuant {
  format: "q4" | "q8";
  rows: number;
  cols: number;
  paddedCols: number;
  data: Uint32Array;
  /** f16 bits, [rows, paddedCols / 32] */
  scales: Uint16Array;
  /**
   * Zero points, one byte per group [rows, paddedCols / 32] (asymmetric: pre-quantized
   * GPTQ/AWQ); codes are then unsigned and value = (q - zero) * scale (formats.ts).
   */
  zeros?: Uint8Array;
}

/**
 * Group-wise symmetric quantization. q4 follows ggml's q4_0: the scale maps the
 * group's largest-magnitude value (with its sign) to -8, so the full 16 levels
 * are used; q8 maps max |w| to 127. Scales are rounded to f16 first and the
 * codes computed from the rounded scale, so dequantize() is exactly what the GPU sees.
 */
export function quantize(values: Float32Array, rows: number, cols: number, format: "q4" | "q8"): PackedQuant {
  if (values.length !== rows * cols) throw new WebvlmError("shape_mismatch", `quantize: ${values.length} != ${rows}x${cols}`);
  const pc = paddedCols(cols);
  const groups = pc / GROUP_SIZE;
  const wordsPerGroup = format === "q4" ? 4 : 8;
  const data = new Uint32Array(rows * groups * wordsPerGroup);
  const scales = new Uint16Array(rows * groups);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const base = r * cols + g * GROUP_SIZE;
      const n = Math.min(GROUP_SIZE, cols - g * GROUP_SIZE);
      let maxAbs = 0;
      let signedMax = 0;
      for (let i = 0; i < n; i++) {
        const v = values[base + i];
        if (Math.abs(v) > maxAbs) {
          maxAbs = Math.abs(v);
          signedMax = v;
        }
      }
      const rawScale = format === "q4" ? signedMax / -8 : maxAbs / 127;
      const scaleBits = f32ToF16Bits(rawScale);
      const scale = f16BitsToF32(scaleBits);
      scales[r * groups + g] = scaleBits;
      const inv = scale === 0 ? 0 : 1 / scale;
      const wordBase = (r * groups + g) * wordsPerGroup;
      for (let i = 0; i < GROUP_SIZE; i++) {
        const v = i < n ? values[base + i] : 0;
        if (format === "q4") {
          const q = Math.min(15, Math.max(0, Math.round(v * inv) + 8));
          data[wordBase + (i >> 3)] |= q << ((i & 7) * 4);
        } else {
          const q = Math.min(127, Math.max(-127, Math.round(v * inv)));
          data[wordBase + (i >> 2)] |= (q & 0xff) << ((i & 3) * 8);
        }
      }
    }
  }
  return { format, rows, cols, paddedCols: pc, data, scales };
}

/** The values a packed matrix stands for, [rows, cols] (the CPU reference for quantized kernels). */
export function dequantize(p: PackedQuant): Float32Array {
  const groups = p.paddedCols / GROUP_SIZE;
  const wordsPerGroup = p.format === "q4" ? 4 : 8;
  const out = new Float32Array(p.rows * p.cols);
  for (let r = 0; r < p.rows; r++) {
    for (let c = 0; c < p.cols; c++) {
      const g = c >> 5;
      const i = c & 31;
      const scale = f16BitsToF32(p.scales[r * groups + g]);
      const word = p.data[(r * groups + g) * wordsPerGroup + (p.format === "q4" ? i >> 3 : i >> 2)];
      let q: number;
      if (p.zeros) {
        const code = p.format === "q4" ? (word >>> ((i & 7) * 4)) & 15 : (word >>> ((i & 3) * 8)) & 255;
        q = code - p.zeros[r * groups + g];
      } else if (p.format === "q4") q = ((word >>> ((i & 7) * 4)) & 15) - 8;
      else q = ((word >>> ((i & 3) * 8)) << 24) >> 24;
      out[r * p.cols + c] = q * scale;
    }
  }
  return out;
}

export function uploadQuantized(ctx: GpuContext, p: PackedQuant, label = "weight"): QuantizedWeight {
  const groups = p.paddedCols / GROUP_SIZE;
  return {
    format: p.format,
    rows: p.rows,
    cols: p.cols,
    paddedCols: p.paddedCols,
    data: uploadTensor(ctx, p.data, [p.rows, p.data.length / p.rows], "u32", `${label}.q`),
    scales: uploadTensor(ctx, p.scales, [p.rows, groups], "f16", `${label}.scales`),
    ...(p.zeros ? { zeros: uploadTensor(ctx, zeroWords(p.zeros), [Math.ceil(p.zeros.length / 4)], "u32", `${label}.zeros`) } : {}),
  };
}

/** Zero-point bytes as the u32 words the kernels read (little-endian: byte g % 4 of word g / 4). */
export function zeroWords(zeros: Uint8Array): Uint32Array {
  const bytes = new Uint8Array(Math.ceil(zeros.length / 4) * 4);
  bytes.set(zeros);
  return new Uint32Array(bytes.buffer);
}

/** Rows [start, start + count) of a packed matrix (a row shard; rows are independent). */
export function packedRows(p: PackedQuant, start: number, count: number): PackedQuant {
  const groups = p.paddedCols / GROUP_SIZE;
  const words = p.data.length / p.rows;
  return {
    format: p.format, rows: count, cols: p.cols, paddedCols: p.paddedCols,
    data: p.data.slice(start * words, (start + count) * words),
    scales: p.scales.slice(start * groups, (start + count) * groups),
    ...(p.zeros ? { zeros: p.zeros.slice(start * groups, (start + count) * groups) } : {}),
  };
}

/** Packed matrices stacked along rows (fused q|k|v, gate|up); all in one format, all or none with zeros. */
export function stackPackedRows(parts: readonly PackedQuant[]): PackedQuant {
  const f = parts[0];
  if (parts.some((p) => p.format !== f.format || p.cols !== f.cols || !p.zeros !== !f.zeros)) {
    throw new WebvlmError("shape_mismatch", "stacked quantized matrices differ in format, width or zero points");
  }
  const cat = <T extends Uint32Array | Uint16Array | Uint8Array>(arrays: T[], make: (n: number) => T): T => {
    const out = make(arrays.reduce((a, x) => a + x.length, 0));
    let o = 0;
    for (const x of arrays) {
      out.set(x, o);
      o += x.length;
    }
    return out;
  };
  return {
    format: f.format, rows: parts.reduce((a, p) => a + p.rows, 0), cols: f.cols, paddedCols: f.paddedCols,
    data: cat(parts.map((p) => p.data), (n) => new Uint32Array(n)),
    scales: cat(parts.map((p) => p.scales), (n) => new Uint16Array(n)),
    ...(f.zeros ? { zeros: cat(parts.map((p) => p.zeros as Uint8Array), (n) => new Uint8Array(n)) } : {}),
  };
}

/** Uploads an f32 [rows, cols] matrix in the given format (quantizing on the CPU for q4/q8). */
export function uploadWeight(
  ctx: GpuContext,
  values: Float32Array,
  rows: number,
  cols: number,
  format: WeightFormat,
  label = "weight",
): Weight {
  if (format === "q4" || format === "q8") return uploadQuantized(ctx, quantize(values, rows, cols, format), label);
  return { format, rows, cols, data: uploadTensor(ctx, values, [rows, cols], format, label) };
}

/** The f32 values a weight in `format` represents (identity for f32; f16 rounding; q dequantized). */
export function roundTripValues(values: Float32Array, rows: number, cols: number, format: WeightFormat): Float32Array {
  if (format === "f32") return values;
  if (format === "f16") return Float32Array.from(values, (v) => f16BitsToF32(f32ToF16Bits(v)));
  return dequantize(quantize(values, rows, cols, format));
}

/** The GPU tensors a weight holds (to release or count them). */
export function weightTensors(w: Weight): Tensor[] {
  if (w.format === "q4" || w.format === "q8") return w.zeros ? [w.data, w.scales, w.zeros] : [w.data, w.scales];
  return [w.data];
}

/**
 * The largest weight tensor to put in one binding: maxStorageBufferBindingSize, capped at 8/9 of
 * maxBufferSize for the pool's size-class rounding. Larger matrices are split into row shards.
 */
export function maxWeightBytes(ctx: GpuContext): number {
  return Math.min(ctx.limits.maxStorageBufferBindingSize, Math.floor((ctx.limits.maxBufferSize * 8) / 9));
}

/**
 * Uploads an f32 [rows, cols] matrix split along rows so that every tensor of every shard is at
 * most maxBytes (e.g. maxStorageBufferBindingSize); linear() writes each shard's column slice.
 */
export function shardWeight(
  ctx: GpuContext,
  values: Float32Array,
  rows: number,
  cols: number,
  format: WeightFormat,
  maxBytes: number,
  label = "weight",
): ShardedWeight {
  if (values.length !== rows * cols) throw new WebvlmError("shape_mismatch", `shardWeight: ${values.length} != ${rows}x${cols}`);
  const perShard = rowsPerShard(maxBytes, cols, format, "shardWeight");
  const shards: { rowStart: number; weight: Weight }[] = [];
  for (let r = 0; r < rows; r += perShard) {
    const n = Math.min(perShard, rows - r);
    const part = values.subarray(r * cols, (r + n) * cols);
    shards.push({ rowStart: r, weight: uploadWeight(ctx, part, n, cols, format, `${label}[${shards.length}]`) });
  }
  return { format, rows, cols, shards };
}
