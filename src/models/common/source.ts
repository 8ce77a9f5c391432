// Where a family's weights come from and in which formats they go to the GPU: shared by every
// family (the loader hands a TensorSource over a checkpoint; the family reads its tensors by name).
import type { SafetensorsCheckpoint } from "../../loader/safetensors.ts";
import type { ShardedWeight, Weight, WeightFormat } from "../../quant/formats.ts";
import type { PackedWeightCache } from "../../quant/packed_cache.ts";
import type { PackedQuant } from "../../quant/pack.ts";

/**
 * Where weights come from: a local directory, HTTP ranges, IndexedDB chunks...
 * Names are the checkpoint's own. `read` returns the whole tensor as f32 (the
 * loader converts F16/BF16); it is called for one tensor at a time and the
 * result is dropped once uploaded, so only one tensor is ever held in JS.
 */
export interface TensorSource {
  has(name: string): boolean;
  /** Shape as stored (only called for names `has` accepts). */
  shape(name: string): readonly number[];
  read(name: string): Promise<Float32Array>;
  /**
   * Optional: rows [start, start + count) of a 2-D tensor as f32. When present, tables too large
   * for one GPU binding (the 151936-row embedding) are read shard by shard, so the whole table
   * never exists as f32 in JS memory.
   */
  readRows?(name: string, start: number, count: number): Promise<Float32Array>;
  /**
   * Optional: a matrix the checkpoint already holds quantized (GPTQ/AWQ, webvlm's own format),
   * repacked into the GPU layout (quant/formats.ts), or undefined for a plain tensor. `shape`
   * gives such a matrix's logical [rows = out_features, cols = in_features]; it loads in its own
   * format whatever format the caller asked for, with no f32 copy ever made.
   */
  readQuantized?(name: string): Promise<PackedQuant | undefined>;
}

/** A TensorSource over an opened safetensors checkpoint (local files, HTTP, blobs). */
export function checkpointTensorSource(ckpt: SafetensorsCheckpoint): TensorSource {
  return {
    has: (name) => ckpt.has(name),
    shape: (name) => ckpt.info(name).shape,
    read: (name) => ckpt.readF32(name),
  };
}

/**
 * Formats per part. Defaults (DEFAULT_FORMATS), for a 2B-size model:
 * - textLinear q4: the decoder's linear layers are ~1.3 G of the 2.2 G parameters and decode
 *   streams all of them for every token (memory-bound GEMV), so 4 bits cut both the download /
 *   GPU memory and the per-token time about 4x vs f16; q4 with 32-wide groups costs little quality.
 * - embedding f16: the table is also the (tied) lm_head, which writes the logits directly;
 *   quantization error there shifts every logit, so it stays f16 (one copy serves both uses).
 * - vision f16: the tower runs once per image as GEMMs over hundreds to thousands of rows
 *   (compute-bound, weights read once), so q4 buys little speed, while its errors reach every
 *   image token; f16 halves memory vs f32 at ~1e-7 relative error.
 * Norm weights and biases are always f32 (tiny, and read by f32 kernels).
 */
export interface WeightFormats {
  textLinear: WeightFormat;
  vision: WeightFormat;
  embedding: WeightFormat;
}

export const DEFAULT_FORMATS: WeightFormats = { textLinear: "q4", vision: "f16", embedding: "f16" };

export interface WeightLoadOptions extends Partial<WeightFormats> {
  /**
   * Largest tensor one binding may hold; default the device's maxStorageBufferBindingSize
   * (capped at 8/9 of maxBufferSize for the pool's size rounding). Larger matrices are split
   * along rows into a ShardedWeight. Tests pass a small value to exercise the split.
   */
  maxBindingBytes?: number;
  /** Called after each checkpoint tensor is on the GPU. */
  onProgress?: (done: number, total: number, name: string) => void;
  /** Quantized matrices from an earlier load (and where new ones are kept). */
  packedCache?: PackedWeightCache;
  /** Called per quantized matrix: quantized now, or taken from packedCache. */
  onQuantize?: (label: string, fromCache: boolean, packedBytes: number) => void;
}


/** A linear layer's weight matrix: whole or split along rows (output features). */
export type LinearWeight = Weight | ShardedWeight;
