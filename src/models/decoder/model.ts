// A text decoder on the GPU: weights + per-layer KV caches + prefill / decode. A decode step is one
// Recorder submit whose only readback is its result (argmax id and/or last-position logits); a
// prefill is one submit per chunk of at most prefillChunkTokens() tokens, checking the abort signal
// between chunks, and only the last chunk computes logits. Positions are cache indices (1-D rope);
// the rope table comes from the rope spec and the step's largest position (the whole prompt's for
// every prefill chunk, as one pass would; longrope switches short -> long past the original length).
//
// Where the rope switches factors by length (longrope, short != long factors), keys follow
// transformers' Phi3ForCausalLM.prepare_inputs_for_generation, as a fresh generate() would make
// them: the cache records each position's id and whether its key used the long factors; a prefill
// reuses only cached keys of the factors its own pass uses; and a decode step at which the
// sequence first reaches original_max_position_embeddings (O) + 1 tokens with O cached drops the
// cache and recomputes the whole sequence (chunked like a prefill) with the long factors.
import { gpuIdle, LayerCaches, prefillChunks, StepReader, throwIfAborted, checkDecodeRoom, type CacheOptions } from "../common/step.ts";
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
  /** Called between prefill chunks: prompt tokens computed so far, tokens to compute. */
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface DecoderStep extends ModelStep {
  /** True when this step dropped the cache and recomputed the whole sequence (the longrope switch at O + 1). */
  recomputed: boolean;
}

/**
 * Per-layer KV caches plus each cached position's id (what a recompute runs again) and whether its
 * key used longrope's long factors; truncate(n) keeps the first n tokens of all.
 */
export class DecoderCache extends LayerCaches {
  ids: number[] = [];
  longKeys: boolean[] = [];

  override truncate(n: number): void {
    super.truncate(n);
    this.ids.length = Math.min(this.ids.length, this.length);
    this.longKeys.length = Math.min(this.longKeys.length, this.length);
  }

  /** Records positions about to be appended (a failed step truncates them away again). */
  record(ids: readonly number[], long: boolean): void {
    for (const id of ids) {
      this.ids.push(id);
      this.longKeys.push(long);
    }
  }
}

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

  /**
   * original_max_position_embeddings when the rope switches factors by length (longrope whose long
   * factors differ from the short ones), else null: other ropes never invalidate cached keys.
   */
  get switchLength(): number | null {
    const r = this.config.rope;
    if (r.kind !== "longrope") return null;
    return r.shortFactor.some((x, j) => x !== r.longFactor[j]) ? r.originalMaxPositions : null;
  }

  /** Whether a pass of key length T uses the long factors. */
  longPass(T: number): boolean {
    const o = this.switchLength;
    return o !== null && T > o;
  }

  /** The per-layer KV caches (kvDtype f32 unless told; small at first, grown up to maxSeq). */
  createCache(maxSeq: number, opts: CacheOptions = {}): DecoderCache {
    const c = this.config;
    return new DecoderCache(this.gpu, LayerCaches.allocate(this.gpu, selfAttentionLayerCount(c), maxSeq, c.numKvHeads, c.headDim, opts), maxSeq);
  }

  /**
   * Runs the prompt tokens after the cached prefix (the cache holds a prefix of `ids`). Cached keys
   * made with other rope factors than this prompt's pass uses (longrope: short keys under a prompt
   * past O) are dropped first, so the result equals a fresh pass over `ids`.
   */
  async prefill(ids: readonly number[], cache: DecoderCache, opts: DecoderStepOptions = {}): Promise<ModelPrefill> {
    this.checkIds(ids);
    const L = ids.length;
    if (L > cache.maxSeq) throw new WebvlmError("context_length_exceeded", `prompt of ${L} tokens exceeds the cache's ${cache.maxSeq}`, { needed: L, maxSeq: cache.maxSeq });
    cache.ensure(L); // grows the layers (their own submit) before any step is recorded
    const long = this.longPass(L);
    let keep = 0;
    while (keep < cache.length && cache.longKeys[keep] === long) keep++;
    cache.truncate(keep);
    const past = cache.length;
    if (past >= L) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${L}-token prompt; truncate it first`);
    const chunks = prefillChunks(past, L);
    try {
      for (const [start, end] of chunks) {
        throwIfAborted(opts.signal);
        if (end < L) {
          await this.forward(ids.slice(start, end), cache, null, L);
          await gpuIdle(this.gpu); // one chunk at a time, so that an abort takes effect between chunks
          opts.onPrefillProgress?.(end - past, L - past);
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

  /**
   * One token at cache index cache.length. At the longrope switch (O cached, so the sequence reaches
   * O + 1) the cache is dropped and the cached ids plus `id` recomputed with the long factors, in
   * chunks with the signal checked between them; an abort or failure there leaves the cache empty.
   */
  async decode(id: number, cache: DecoderCache, opts: DecoderStepOptions = {}): Promise<DecoderStep> {
    this.checkIds([id]);
    const past = cache.length;
    checkDecodeRoom(cache);
    throwIfAborted(opts.signal);
    if (past === this.switchLength) return { ...(await this.recompute(id, cache, opts)), recomputed: true };
    return { ...(await this.forward([id], cache, opts.read ?? "argmax", past + 1)), recomputed: false };
  }

  dispose(): void {
    releaseDecoderWeights(this.gpu, this.weights);
    this.reader.dispose();
  }

  // ---------------------------------------------------------------- internals

  /** The switch's recompute: the cached ids plus `id` as one chunked pass from an empty cache. */
  private async recompute(id: number, cache: DecoderCache, opts: DecoderStepOptions): Promise<ModelStep> {
    const ids = [...cache.ids, id];
    const T = ids.length;
    cache.truncate(0);
    try {
      for (const [start, end] of prefillChunks(0, T)) {
        if (start > 0) {
          await gpuIdle(this.gpu); // one chunk at a time, so that an abort takes effect between chunks
          throwIfAborted(opts.signal);
          opts.onPrefillProgress?.(start, T);
        }
        if (end < T) await this.forward(ids.slice(start, end), cache, null, T);
        else return await this.forward(ids.slice(start, end), cache, opts.read ?? "argmax", T);
      }
    } catch (e) {
      cache.truncate(0);
      throw e;
    }
    throw new WebvlmError("internal", "recompute: no chunk to run");
  }

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
      cache.record(ids, this.longPass(ropeLength));
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
