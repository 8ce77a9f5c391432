// A text decoder on the GPU: weights + per-layer KV caches + prefill / decode. A decode step is one
// Recorder submit whose only readback is its result (argmax id and/or last-position logits); a
// prefill is one submit per chunk of at most prefillChunkTokens() tokens, checking the abort signal
// between chunks, and only the last chunk computes logits. Positions are cache indices (1-D rope);
// the rope table comes from the rope spec and the step's largest position (the whole prompt's for
// every prefill chunk, as one pass would; longrope switches short -> long past the original length).
import { gpuIdle, LayerCaches, prefillChunks, StepReader, throwIfAborted } from "../common/step.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { uploadTensor } from "../../gpu/transfer.ts";
import { embedding } from "../../ops/embedding.ts";
import { ropeTables } from "../common/rope.ts";
import type { TensorSource, WeightLoadOptions } from "../common/source.ts";
import type { ModelPrefill, ModelStep, ReadMode } from "../family.ts";
import { selfAttentionLayerCount, type DecoderConfig } from "./config.ts";
import { decoderForward } from "./forward.ts";
import { loadDecoderWeights, releaseDecoderWeights, type DecoderWeights } from "./weights.ts";

export interface DecoderStepOptions {
  read?: ReadMode;
  /** Checked between prefill chunks and before a decode step (WebvlmError "aborted"). */
  signal?: AbortSignal;
}

/** Per-layer KV caches; truncate(n) keeps the first n tokens. */
export class DecoderCache extends LayerCaches {}

export class DecoderModel {
  private readonly reader: StepReader;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: DecoderConfig,
    readonly weights: DecoderWeights,
  ) {
    this.reader = new StepReader(gpu);
    if (config.rope.sections.length !== 1) {
      throw new WebvlmError("unsupported_feature", "decoder model: multi-row (M-RoPE) positions need the family's own position ids");
    }
  }

  static async load(gpu: GpuContext, config: DecoderConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<DecoderModel> {
    return new DecoderModel(gpu, config, await loadDecoderWeights(gpu, config, source, opts));
  }

  createCache(maxSeq: number): DecoderCache {
    const c = this.config;
    return new DecoderCache(this.gpu, LayerCaches.allocate(this.gpu, selfAttentionLayerCount(c), maxSeq, c.numKvHeads, c.headDim), maxSeq);
  }

  /** Runs the prompt tokens after the cached prefix (cache.length of them are already cached). */
  async prefill(ids: readonly number[], cache: DecoderCache, opts: DecoderStepOptions = {}): Promise<ModelPrefill> {
    this.checkIds(ids);
    const past = cache.length;
    const L = ids.length;
    if (past >= L) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${L}-token prompt; truncate it first`);
    if (L > cache.maxSeq) throw new WebvlmError("context_length_exceeded", `prompt of ${L} tokens exceeds the cache's ${cache.maxSeq}`, { needed: L, maxSeq: cache.maxSeq });
    const chunks = prefillChunks(past, L);
    try {
      for (const [start, end] of chunks) {
        throwIfAborted(opts.signal);
        if (end < L) {
          await this.forward(ids.slice(start, end), cache, null, L);
          await gpuIdle(this.gpu); // one chunk at a time, so that an abort takes effect between chunks
        } else {
          return { ...(await this.forward(ids.slice(start, end), cache, opts.read ?? "argmax", L)), reused: past };
        }
      }
    } catch (e) {
      cache.truncate(past);
      throw e;
    }
    throw new WebvlmError("internal", "prefill: no chunk to run");
  }

  /** One token at cache index cache.length. */
  async decode(id: number, cache: DecoderCache, opts: DecoderStepOptions = {}): Promise<ModelStep> {
    this.checkIds([id]);
    if (cache.length === 0) throw new WebvlmError("bad_request", "decode: empty cache (prefill first)");
    if (cache.length + 1 > cache.maxSeq) {
      throw new WebvlmError("context_length_exceeded", `${cache.length + 1} tokens exceed the cache's ${cache.maxSeq}`, { needed: cache.length + 1, maxSeq: cache.maxSeq });
    }
    throwIfAborted(opts.signal);
    return this.forward([id], cache, opts.read ?? "argmax", cache.length + 1);
  }

  dispose(): void {
    releaseDecoderWeights(this.gpu, this.weights);
    this.reader.dispose();
  }

  // ---------------------------------------------------------------- internals

  private checkIds(ids: readonly number[]): void {
    const vocab = this.config.vocabSize;
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new WebvlmError("bad_request", `token id ${id} outside [0, ${vocab})`);
  }

  /**
   * The forward of `ids` at cache index cache.length: recorded, submitted, and read back unless
   * `read` is null (a prefill chunk before the last: caches filled, no logits). `ropeLength` is
   * the largest position + 1 of the whole step, which picks the rope table.
   */
  private async forward(ids: readonly number[], cache: DecoderCache, read: ReadMode, ropeLength: number): Promise<ModelStep>;
  private async forward(ids: readonly number[], cache: DecoderCache, read: null, ropeLength: number): Promise<null>;
  private async forward(ids: readonly number[], cache: DecoderCache, read: ReadMode | null, ropeLength: number): Promise<ModelStep | null> {
    const past = cache.length;
    const S = ids.length;
    const pos = Int32Array.from({ length: S }, (_, i) => past + i);
    const rope = ropeTables(this.config.rope, ropeLength);
    const idsT = uploadTensor(this.gpu, Uint32Array.from(ids), [S], "u32", "decoder.ids");
    const posT = uploadTensor(this.gpu, pos, [S], "i32", "decoder.positions");
    const rec = new Recorder(this.gpu);
    let x: Tensor | null = null;
    try {
      x = embedding(rec, idsT, this.weights.embed);
      if (read === null) {
        decoderForward(rec, this.config, this.weights, x, posT, rope, cache.layers, { logits: "none" });
        rec.submit();
        return null;
      }
      const logits = decoderForward(rec, this.config, this.weights, x, posT, rope, cache.layers, { logits: "last" });
      const r = await this.reader.finish(rec, logits, read);
      return { tokenId: r.tokenId, logits: r.logits };
    } catch (e) {
      cache.truncate(past);
      throw e;
    } finally {
      for (const t of [idsT, posT, x]) if (t) this.gpu.pool.release(t.buffer);
    }
  }
}
