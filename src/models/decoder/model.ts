// A text decoder on the GPU: weights + per-layer KV caches + prefill / decode. Each forward is one
// Recorder submit whose only readback is its result (argmax id and/or last-position logits).
// Positions are cache indices (1-D rope); the rope table of each forward comes from the rope spec
// and the forward's largest position (longrope switches short -> long past the original length).
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import { byteSize, type Tensor } from "../../gpu/tensor.ts";
import { uploadTensor } from "../../gpu/transfer.ts";
import { argmax } from "../../ops/argmax.ts";
import { embedding } from "../../ops/embedding.ts";
import { createKvCache, releaseKvCache, type KvCache } from "../../ops/kv_cache.ts";
import { ropeTables } from "../common/rope.ts";
import type { TensorSource, WeightLoadOptions } from "../common/source.ts";
import type { ModelCache, ModelPrefill, ModelStep, ReadMode } from "../family.ts";
import type { DecoderConfig } from "./config.ts";
import { decoderForward } from "./forward.ts";
import { loadDecoderWeights, releaseDecoderWeights, type DecoderWeights } from "./weights.ts";

export interface DecoderStepOptions {
  read?: ReadMode;
}

/** Per-layer KV caches; truncate(n) keeps the first n tokens. */
export class DecoderCache implements ModelCache {
  constructor(
    private readonly gpu: GpuContext,
    readonly layers: KvCache[],
    readonly maxSeq: number,
  ) {}

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

const MAP_READ = 0x0001;
const COPY_DST = 0x0008;

export class DecoderModel {
  private staging: GPUBuffer[] = [];

  private constructor(
    readonly gpu: GpuContext,
    readonly config: DecoderConfig,
    readonly weights: DecoderWeights,
  ) {
    if (config.rope.sections.length !== 1) {
      throw new WebvlmError("unsupported_feature", "decoder model: multi-row (M-RoPE) positions need the family's own position ids");
    }
  }

  static async load(gpu: GpuContext, config: DecoderConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<DecoderModel> {
    return new DecoderModel(gpu, config, await loadDecoderWeights(gpu, config, source, opts));
  }

  createCache(maxSeq: number): DecoderCache {
    const c = this.config;
    const layers: KvCache[] = [];
    try {
      for (let i = 0; i < c.numLayers; i++) layers.push(createKvCache(this.gpu, { maxSeq, numKvHeads: c.numKvHeads, headDim: c.headDim, label: `kv${i}` }));
    } catch (e) {
      for (const l of layers) releaseKvCache(this.gpu, l);
      throw e;
    }
    return new DecoderCache(this.gpu, layers, maxSeq);
  }

  /** Runs the prompt tokens after the cached prefix (cache.length of them are already cached). */
  async prefill(ids: readonly number[], cache: DecoderCache, opts: DecoderStepOptions = {}): Promise<ModelPrefill> {
    this.checkIds(ids);
    const past = cache.length;
    const L = ids.length;
    if (past >= L) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${L}-token prompt; truncate it first`);
    if (L > cache.maxSeq) throw new WebvlmError("context_length_exceeded", `prompt of ${L} tokens exceeds the cache's ${cache.maxSeq}`, { needed: L, maxSeq: cache.maxSeq });
    return { ...(await this.forward(ids.slice(past), cache, opts)), reused: past };
  }

  /** One token at cache index cache.length. */
  async decode(id: number, cache: DecoderCache, opts: DecoderStepOptions = {}): Promise<ModelStep> {
    this.checkIds([id]);
    if (cache.length === 0) throw new WebvlmError("bad_request", "decode: empty cache (prefill first)");
    if (cache.length + 1 > cache.maxSeq) {
      throw new WebvlmError("context_length_exceeded", `${cache.length + 1} tokens exceed the cache's ${cache.maxSeq}`, { needed: cache.length + 1, maxSeq: cache.maxSeq });
    }
    return this.forward([id], cache, opts);
  }

  dispose(): void {
    releaseDecoderWeights(this.gpu, this.weights);
    for (const b of this.staging) b.destroy();
    this.staging = [];
  }

  // ---------------------------------------------------------------- internals

  private checkIds(ids: readonly number[]): void {
    const vocab = this.config.vocabSize;
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new WebvlmError("bad_request", `token id ${id} outside [0, ${vocab})`);
  }

  /** The forward of `ids` at cache index cache.length: recorded, submitted, read back. */
  private async forward(ids: readonly number[], cache: DecoderCache, opts: DecoderStepOptions): Promise<ModelStep> {
    const past = cache.length;
    const S = ids.length;
    const pos = Int32Array.from({ length: S }, (_, i) => past + i);
    const rope = ropeTables(this.config.rope, past + S);
    const idsT = uploadTensor(this.gpu, Uint32Array.from(ids), [S], "u32", "decoder.ids");
    const posT = uploadTensor(this.gpu, pos, [S], "i32", "decoder.positions");
    const rec = new Recorder(this.gpu);
    let x: Tensor | null = null;
    try {
      x = embedding(rec, idsT, this.weights.embed);
      const logits = decoderForward(rec, this.config, this.weights, x, posT, rope, cache.layers, { logits: "last" });
      return await this.finish(rec, logits, opts.read ?? "argmax");
    } catch (e) {
      cache.truncate(past);
      throw e;
    } finally {
      for (const t of [idsT, posT, x]) if (t) this.gpu.pool.release(t.buffer);
    }
  }

  /** argmax and readback recorded after the forward: one submit, one map. */
  private async finish(rec: Recorder, logits: Tensor, read: ReadMode): Promise<ModelStep> {
    const wantId = read !== "logits";
    const wantLogits = read !== "argmax";
    const ids = wantId ? argmax(rec, logits) : null;
    const logitBytes = byteSize(logits);
    const idBytes = wantId ? 4 : 0;
    const size = idBytes + (wantLogits ? logitBytes : 0);
    const staging = this.takeStaging(size);
    const enc = rec.commandEncoder();
    if (ids) enc.copyBufferToBuffer(ids.buffer, ids.offset, staging, 0, 4);
    if (wantLogits) enc.copyBufferToBuffer(logits.buffer, logits.offset, staging, idBytes, logitBytes);
    rec.submit();
    if (ids) this.gpu.pool.release(ids.buffer);
    this.gpu.pool.release(logits.buffer);
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
    };
  }

  private takeStaging(size: number): GPUBuffer {
    const i = this.staging.findIndex((b) => b.size >= size);
    if (i >= 0) return this.staging.splice(i, 1)[0];
    return this.gpu.device.createBuffer({ size: Math.ceil(size / 16) * 16, usage: MAP_READ | COPY_DST, label: "readback" });
  }
}
