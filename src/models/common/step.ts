// What every model's forward shares around its layers: per-layer KV caches behind the engine's
// ModelCache, and the end of a step — argmax and the readback recorded after the forward, one
// submit and one map per step, reusing mappable staging buffers.
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { byteSize, DTYPE_BYTES, type Tensor } from "../../gpu/tensor.ts";
import { argmax } from "../../ops/argmax.ts";
import { createKvCache, growKvCache, releaseKvCache, type KvCache, type KvDtype } from "../../ops/kv_cache.ts";
import type { ModelCache, ReadMode } from "../family.ts";

/**
 * Most prompt tokens one prefill submit runs: a long prompt is prefilled in chunks so that an abort
 * takes effect between chunks and no single submit runs long enough for a browser to reset the GPU.
 */
export const PREFILL_CHUNK_TOKENS = 512;

let chunkTokens = PREFILL_CHUNK_TOKENS;

/** The prefill chunk size in use (PREFILL_CHUNK_TOKENS unless set). */
export function prefillChunkTokens(): number {
  return chunkTokens;
}

/**
 * Sets the prefill chunk size for every model in this thread; no argument restores
 * PREFILL_CHUNK_TOKENS. Tests use small chunks so that tiny prompts span several of them.
 */
export function setPrefillChunkTokens(n: number = PREFILL_CHUNK_TOKENS): void {
  if (!Number.isSafeInteger(n) || n < 1) throw new WebvlmError("bad_request", `prefill chunk size must be an integer >= 1, got ${n}`);
  chunkTokens = n;
}

/** [start, end) token ranges of the prompt positions past..total, at most prefillChunkTokens() each. */
export function prefillChunks(past: number, total: number): [number, number][] {
  const size = chunkTokens;
  const out: [number, number][] = [];
  for (let s = past; s < total; s += size) out.push([s, Math.min(total, s + size)]);
  return out;
}

/** Resolves when the GPU has finished the work submitted so far (between prefill chunks). */
export async function gpuIdle(gpu: GpuContext): Promise<void> {
  await gpu.device.queue.onSubmittedWorkDone();
  if (gpu.lostError) throw gpu.lostError;
}

/**
 * A decode step's preconditions: a prefilled cache with room for one more token (typed errors);
 * a cache that can grow (LayerCaches) is grown to hold it.
 */
export function checkDecodeRoom(cache: { readonly length: number; readonly maxSeq: number; ensure?(n: number): void }): void {
  const past = cache.length;
  if (past === 0) throw new WebvlmError("bad_request", "decode: empty cache (prefill first)");
  if (past + 1 > cache.maxSeq) {
    throw new WebvlmError("context_length_exceeded", `${past + 1} tokens exceed the cache's ${cache.maxSeq}`, { needed: past + 1, maxSeq: cache.maxSeq });
  }
  cache.ensure?.(past + 1);
}

/** Throws WebvlmError "aborted" when `signal` has fired (between prefill chunks). */
export function throwIfAborted(signal: AbortSignal | undefined, what = "the request"): void {
  if (signal?.aborted) throw new WebvlmError("aborted", `${what} was aborted`);
}

/** How a model's cache is made (VlmModel.createCache's options). */
export interface CacheOptions {
  /** K/V element type; default "f32" here (the engine passes its kvCache choice, f16 by default). */
  kvDtype?: KvDtype;
  /** Rows allocated at first (then grown by doubling up to maxSeq); default min(maxSeq, 1024). */
  initialRows?: number;
}

/**
 * One KV cache per layer; truncate(n) keeps the first n tokens (the next turn's common prefix).
 * The layers start small and grow (ensure) as the chat grows, up to maxSeq.
 */
export class LayerCaches implements ModelCache {
  constructor(
    protected readonly gpu: GpuContext,
    readonly layers: KvCache[],
    readonly maxSeq: number,
  ) {}

  /** Allocates the layers' caches (all or none). */
  static allocate(gpu: GpuContext, numLayers: number, maxSeq: number, numKvHeads: number, headDim: number, opts: CacheOptions = {}): KvCache[] {
    const layers: KvCache[] = [];
    try {
      for (let i = 0; i < numLayers; i++) {
        layers.push(createKvCache(gpu, { maxSeq, numKvHeads, headDim, dtype: opts.kvDtype, initialRows: opts.initialRows, label: `kv${i}` }));
      }
    } catch (e) {
      for (const l of layers) releaseKvCache(gpu, l);
      throw e;
    }
    return layers;
  }

  /** The K/V element type of the layers (f32 when there are none). */
  get kvDtype(): KvDtype {
    return this.layers[0]?.dtype ?? "f32";
  }

  /** Rows allocated now (each layer the same). */
  get capacity(): number {
    return this.layers[0]?.capacity ?? this.maxSeq;
  }

  /**
   * Makes room for n tokens before a step is recorded: layers whose capacity is short grow (by
   * doubling, up to maxSeq; the valid rows copied in their own submit). context_length_exceeded
   * past maxSeq, naming both numbers.
   */
  ensure(n: number): void {
    if (n > this.maxSeq) {
      throw new WebvlmError("context_length_exceeded", `${n} tokens exceed the cache's ${this.maxSeq}`, { needed: n, maxSeq: this.maxSeq });
    }
    for (const l of this.layers) growKvCache(this.gpu, l, n);
  }

  /** GPU bytes of the layers' K/V: allocated (capacity rows) and filled (length rows). */
  memory(): { allocatedBytes: number; usedBytes: number } {
    let allocatedBytes = 0;
    let usedBytes = 0;
    for (const l of this.layers) {
      const rowBytes = l.rowStride * DTYPE_BYTES[l.dtype];
      allocatedBytes += 2 * l.capacity * rowBytes;
      usedBytes += 2 * l.length * rowBytes;
    }
    return { allocatedBytes, usedBytes };
  }

  /** Tokens cached (the cache index of the next token). */
  get length(): number {
    return this.layers[0]?.length ?? 0;
  }

  truncate(n: number): void {
    if (!Number.isInteger(n) || n < 0) throw new WebvlmError("bad_request", `cache: truncate(${n})`);
    for (const l of this.layers) l.length = Math.min(l.length, n);
  }

  dispose(): void {
    for (const l of this.layers) releaseKvCache(this.gpu, l);
  }
}

export interface StepReadout {
  /** argmax of the logits (torch.argmax: first maximum), when read. */
  tokenId: number | null;
  /** Logits of the last position [vocab], when read. */
  logits: Float32Array | null;
  /** The logits tensor, when kept (the caller releases it). */
  logitsTensor: Tensor | null;
}

const MAP_READ = 0x0001;
const COPY_DST = 0x0008;

/** Finishes steps: argmax + readback recorded after the forward; staging buffers reused across steps. */
export class StepReader {
  private staging: GPUBuffer[] = [];

  constructor(private readonly gpu: GpuContext) {}

  /** Records argmax and the copies, submits, maps. `logits` is released unless `keepLogits`. */
  async finish(rec: Recorder, logits: Tensor, read: ReadMode, keepLogits = false): Promise<StepReadout> {
    const wantId = read !== "logits";
    const wantLogits = read !== "argmax";
    const ids = wantId ? argmax(rec, logits) : null;
    const logitBytes = byteSize(logits);
    const idBytes = wantId ? 4 : 0;
    const size = idBytes + (wantLogits ? logitBytes : 0);
    const staging = this.take(size);
    const enc = rec.commandEncoder();
    if (ids) enc.copyBufferToBuffer(ids.buffer, ids.offset, staging, 0, 4);
    if (wantLogits) enc.copyBufferToBuffer(logits.buffer, logits.offset, staging, idBytes, logitBytes);
    rec.submit();
    if (ids) this.gpu.pool.release(ids.buffer);
    if (!keepLogits) this.gpu.pool.release(logits.buffer);
    try {
      await staging.mapAsync(MAP_READ, 0, size);
    } catch (e) {
      staging.destroy();
      throw this.gpu.lostError ?? new WebvlmError("device_lost", `readback failed: ${(e as Error).message}`);
    }
    const bytes = staging.getMappedRange(0, size).slice(0);
    staging.unmap();
    this.staging.push(staging);
    return {
      tokenId: wantId ? new Uint32Array(bytes, 0, 1)[0] : null,
      logits: wantLogits ? new Float32Array(bytes, idBytes, logits.shape[0] * logits.shape[1]) : null,
      logitsTensor: keepLogits ? logits : null,
    };
  }

  dispose(): void {
    for (const b of this.staging) b.destroy();
    this.staging = [];
  }

  /** A free mappable buffer of at least `size` bytes. */
  private take(size: number): GPUBuffer {
    const i = this.staging.findIndex((b) => b.size >= size);
    if (i >= 0) return this.staging.splice(i, 1)[0];
    return this.gpu.device.createBuffer({ size: Math.ceil(size / 16) * 16, usage: MAP_READ | COPY_DST, label: "readback" });
  }
}
