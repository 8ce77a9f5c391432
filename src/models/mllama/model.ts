// Llama 3.2 Vision glue: weights + vision tower + projector + the shared decoder with its
// cross-attention layers. A prefill whose image set differs from the cache's encodes the images (one
// submit each, the abort signal checked between them), computes every cross layer's
// k_norm(k_proj(states)) and v_proj(states) once and keeps them in the cache (the self-attention
// prefix is then recomputed: pre-image rows attend to every vision key, so no row computed under
// another image set is reused). The prompt then runs in chunks of at most prefillChunkTokens() with
// the §6 mask rows from the token ids; decode steps reuse the last prompt row's. Text-only requests
// run the cross layers as identity. Positions are 0..S-1 (an image is one <|image|> token).
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../../gpu/transfer.ts";
import { embedding } from "../../ops/embedding.ts";
import { kvRowStride, writeKvRows, type KvDtype } from "../../ops/kv_cache.ts";
import { ropeTables } from "../common/rope.ts";
import type { TensorSource, WeightLoadOptions } from "../common/source.ts";
import { gpuIdle, LayerCaches, prefillChunks, StepReader, throwIfAborted, checkDecodeRoom, type CacheOptions } from "../common/step.ts";
import { selfAttentionLayerCount } from "../decoder/config.ts";
import { crossAttentionKv, type CrossKv } from "../decoder/cross_attention.ts";
import { decoderForward } from "../decoder/forward.ts";
import type { ModelPrefill, ModelStep, ReadMode } from "../family.ts";
import { MllamaCache, type MllamaCrossState } from "./cache.ts";
import type { MllamaConfig } from "./config.ts";
import { crossAttentionRowsFromIds } from "./cross_mask.ts";
import { checkVisionImage, encodeMllamaImage, type MllamaVisionImage } from "./vision.ts";
import { loadMllamaWeights, releaseMllamaWeights, type MllamaWeights } from "./weights.ts";

/** One image of the request: the processor's tiles and its content hash (the cache's key). */
export interface MllamaImageItem extends MllamaVisionImage {
  hash: string;
}

export interface MllamaStepOptions {
  read?: ReadMode;
  signal?: AbortSignal;
  /** Called between prefill chunks: prompt tokens computed so far, tokens to compute. */
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface MllamaPrefillResult extends ModelPrefill {
  /** Whether the image set's cross K/V were computed now (false: reused from the cache, or no images). */
  encoded: boolean;
  /** Decoder chunks (one submit each). */
  chunks: number;
}

/** Images rows see, per row: [start, end) image indices ([0, 0): none). */
interface RowImages {
  start: ArrayLike<number>;
  end: ArrayLike<number>;
}

export class MllamaModel {
  private readonly reader: StepReader;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: MllamaConfig,
    readonly weights: MllamaWeights,
  ) {
    this.reader = new StepReader(gpu);
  }

  static async load(gpu: GpuContext, config: MllamaConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<MllamaModel> {
    return new MllamaModel(gpu, config, await loadMllamaWeights(gpu, config, source, opts));
  }

  /** A model over weights already on the GPU (benchmarks build random ones of a real shape). */
  static fromWeights(gpu: GpuContext, config: MllamaConfig, weights: MllamaWeights): MllamaModel {
    return new MllamaModel(gpu, config, weights);
  }

  /** The per-layer KV caches (kvDtype f32 unless told; small at first, grown up to maxSeq). */
  createCache(maxSeq: number, opts: CacheOptions = {}): MllamaCache {
    const t = this.config.text;
    return new MllamaCache(this.gpu, LayerCaches.allocate(this.gpu, selfAttentionLayerCount(t), maxSeq, t.numKvHeads, t.headDim, opts), maxSeq);
  }

  /** Vision rows per image: T * P (every tile runs). */
  get keysPerImage(): number {
    return this.config.vision.maxNumTiles * this.config.vision.tokensPerTile;
  }

  /**
   * The cross states f32 [images * T * P, hidden] (image, tile, patch order) of `images`; the caller
   * releases the tensor. One submit per image, the signal checked between them.
   */
  async crossStates(images: readonly MllamaVisionImage[], signal?: AbortSignal): Promise<Tensor> {
    const v = this.config.vision;
    for (const img of images) checkVisionImage(v, img);
    this.checkVisionBindings();
    const rows = images.length * this.keysPerImage;
    const out = allocTensor(this.gpu, [rows, this.config.text.hiddenSize], "f32", "mllama.cross_states");
    try {
      for (const [i, img] of images.entries()) {
        if (i > 0) {
          await gpuIdle(this.gpu);
          throwIfAborted(signal);
        }
        const rec = new Recorder(this.gpu);
        encodeMllamaImage(rec, v, this.weights.vision, img, out, i * this.keysPerImage);
        rec.submit();
      }
      return out;
    } catch (e) {
      this.gpu.pool.release(out.buffer);
      throw e;
    }
  }

  /** Runs the prompt tokens after the cached prefix with the request's images (in prompt order). */
  async prefill(ids: readonly number[], images: readonly MllamaImageItem[], cache: MllamaCache, opts: MllamaStepOptions = {}): Promise<MllamaPrefillResult> {
    this.checkIds(ids);
    const S = ids.length;
    const imageTokens = ids.filter((id) => id === this.config.imageTokenId).length;
    if (imageTokens !== images.length) {
      throw new WebvlmError("bad_request", `prompt has ${imageTokens} <|image|> tokens for ${images.length} image(s)`, { tokens: imageTokens, images: images.length });
    }
    if (S > cache.maxSeq) throw new WebvlmError("context_length_exceeded", `prompt of ${S} tokens exceeds the cache's ${cache.maxSeq}`, { needed: S, maxSeq: cache.maxSeq });
    cache.ensure(S); // grows the layers (their own submit) before any step is recorded
    const key = images.length ? images.map((im) => im.hash).join("|") : null;
    const sameImages = (cache.cross?.key ?? null) === key;
    if (!sameImages) cache.truncate(0);
    const past = cache.length;
    if (past >= S) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${S}-token prompt; truncate it first`);
    const rows = crossAttentionRowsFromIds(ids, this.config.imageTokenId);
    let chunks = 0;
    try {
      throwIfAborted(opts.signal);
      if (!sameImages) {
        cache.setCross(null);
        if (images.length) cache.setCross(await this.encodeCross(images, key!, cache.kvDtype, opts.signal));
      }
      for (const [start, end] of prefillChunks(past, S)) {
        if (chunks > 0) {
          await gpuIdle(this.gpu); // one chunk at a time, so that an abort takes effect between chunks
          throwIfAborted(opts.signal);
          opts.onPrefillProgress?.(start - past, S - past);
        }
        chunks++;
        const chunkRows = { start: rows.imageStart.subarray(start, end), end: rows.imageEnd.subarray(start, end) };
        if (end < S) {
          await this.forward(ids.slice(start, end), start, cache, chunkRows, null, S);
          continue;
        }
        const r = await this.forward(ids.slice(start, end), start, cache, chunkRows, opts.read ?? "argmax", S);
        cache.decodeRow = { imageStart: rows.imageStart[S - 1], imageEnd: rows.imageEnd[S - 1] };
        return { tokenId: r!.tokenId, logits: r!.logits, reused: past, encoded: !sameImages && images.length > 0, chunks };
      }
      throw new WebvlmError("internal", "prefill: no chunk to run");
    } catch (e) {
      cache.truncate(past);
      throw e;
    }
  }

  /** One token at cache index cache.length, with the last prompt row's cross-attention mask. */
  async decode(id: number, cache: MllamaCache, opts: MllamaStepOptions = {}): Promise<ModelStep> {
    this.checkIds([id]);
    const past = cache.length;
    checkDecodeRoom(cache);
    throwIfAborted(opts.signal);
    const row = { start: [cache.decodeRow.imageStart], end: [cache.decodeRow.imageEnd] };
    try {
      const r = await this.forward([id], past, cache, row, opts.read ?? "argmax", past + 1);
      return { tokenId: r!.tokenId, logits: r!.logits };
    } catch (e) {
      cache.truncate(past);
      throw e;
    }
  }

  dispose(): void {
    releaseMllamaWeights(this.gpu, this.weights);
    this.reader.dispose();
  }

  // ---------------------------------------------------------------- internals

  private checkIds(ids: readonly number[]): void {
    const rows = this.config.text.embedRows ?? this.config.text.vocabSize;
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= rows) throw new WebvlmError("bad_request", `token id ${id} outside [0, ${rows})`);
  }

  /**
   * Every cross layer's K/V over the image set, image by image (one submit each, the signal checked
   * between them): an image's cross states (T * P rows, 105 MB at 11B) are made, projected into
   * each layer's k_norm(k_proj) / v_proj rows of the set, and released, so no binding grows with
   * the number of images beyond the K/V themselves.
   */
  private async encodeCross(images: readonly MllamaImageItem[], key: string, dtype: KvDtype, signal?: AbortSignal): Promise<MllamaCrossState> {
    const t = this.config.text;
    const v = this.config.vision;
    for (const img of images) checkVisionImage(v, img);
    this.checkVisionBindings();
    const cfg = { hiddenSize: t.hiddenSize, numHeads: t.numHeads, numKvHeads: t.numKvHeads, headDim: t.headDim, rmsNormEps: t.rmsNormEps };
    const perImage = this.keysPerImage;
    const total = images.length * perImage;
    const kvDim = t.numKvHeads * t.headDim;
    // The cross K/V take the cache's dtype: f16 pairs (kv_append's packing) or f32 copies.
    const stride = kvRowStride(t.numKvHeads, t.headDim, dtype);
    const keep = new Uint32Array(total);
    images.forEach((img, i) => keep.fill(1, i * perImage, i * perImage + img.numTiles * v.tokensPerTile));
    const kv: CrossKv[] = [];
    let keyMask: Tensor | null = null;
    try {
      for (let l = 0; l < this.weights.text.crossLayers.length; l++) {
        kv.push({
          k: allocTensor(this.gpu, [total, stride], dtype, `mllama.cross_k${l}`),
          v: allocTensor(this.gpu, [total, stride], dtype, `mllama.cross_v${l}`),
          length: total,
        });
      }
      keyMask = uploadTensor(this.gpu, keep, [total], "u32", "mllama.cross_key_mask");
      const bytes = perImage * kvDim * 4;
      for (const [i, img] of images.entries()) {
        if (i > 0) {
          await gpuIdle(this.gpu);
          throwIfAborted(signal);
        }
        const rec = new Recorder(this.gpu);
        const states = allocTensor(this.gpu, [perImage, t.hiddenSize], "f32", "mllama.cross_states");
        encodeMllamaImage(rec, v, this.weights.vision, img, states, 0);
        this.weights.text.crossLayers.forEach((lw, l) => {
          const part = crossAttentionKv(rec, cfg, lw, states);
          if (dtype === "f16") {
            writeKvRows(rec, kv[l].k, kv[l].v, { tensor: part.k }, { tensor: part.v }, i * perImage, perImage, kvDim, stride);
          } else {
            rec.copy(part.k, { buffer: kv[l].k.buffer, offset: kv[l].k.offset + i * bytes, size: bytes });
            rec.copy(part.v, { buffer: kv[l].v.buffer, offset: kv[l].v.offset + i * bytes, size: bytes });
          }
          this.gpu.pool.release(part.k.buffer);
          this.gpu.pool.release(part.v.buffer);
        });
        this.gpu.pool.release(states.buffer);
        rec.submit();
      }
      await gpuIdle(this.gpu);
      throwIfAborted(signal);
      return { key, kv, keyMask, numImages: images.length };
    } catch (e) {
      for (const x of kv) for (const tensor of [x.k, x.v]) this.gpu.pool.release(tensor.buffer);
      if (keyMask) this.gpu.pool.release(keyMask.buffer);
      throw e;
    }
  }

  /**
   * The vision path's widest activation (all T * L padded tokens: q|k|v, the MLP's intermediate, the
   * projector's output) must fit one storage binding; limit_exceeded names the limit otherwise.
   */
  private checkVisionBindings(): void {
    const v = this.config.vision;
    const rows = v.maxNumTiles * v.paddedTokensPerTile;
    const needed = rows * Math.max(3 * v.hiddenSize, v.intermediateSize, this.config.text.hiddenSize) * 4;
    const limit = this.gpu.limits.maxStorageBufferBindingSize;
    if (needed > limit) {
      throw new WebvlmError("limit_exceeded", `mllama vision: ${rows} tile tokens need ${needed} bytes in one binding, over the adapter's maxStorageBufferBindingSize ${limit}`, {
        limit: "maxStorageBufferBindingSize",
        needed,
        available: limit,
      });
    }
  }

  /**
   * The forward of `ids` at cache index `start` (rows: the images each sees); submitted, and read
   * back unless `read` is null (a prefill chunk before the last). `ropeLength` picks the rope table.
   */
  private async forward(
    ids: readonly number[], start: number, cache: MllamaCache, rows: RowImages, read: ReadMode | null, ropeLength: number,
  ): Promise<ModelStep | null> {
    const S = ids.length;
    const c = this.config;
    const perImage = this.keysPerImage;
    const uploads = [
      uploadTensor(this.gpu, Uint32Array.from(ids), [S], "u32", "mllama.ids"),
      uploadTensor(this.gpu, Int32Array.from({ length: S }, (_, i) => start + i), [S], "i32", "mllama.positions"),
    ];
    const cross = cache.cross;
    if (cross) {
      const ranges = new Uint32Array(2 * S);
      const rowMask = new Uint32Array(S);
      for (let s = 0; s < S; s++) {
        const a = rows.start[s];
        const b = rows.end[s];
        if (b > cross.numImages) throw new WebvlmError("internal", `mllama: row sees image ${b} of ${cross.numImages}`);
        ranges[2 * s] = a * perImage;
        ranges[2 * s + 1] = b * perImage;
        rowMask[s] = b > a ? 1 : 0;
      }
      uploads.push(uploadTensor(this.gpu, ranges, [S, 2], "u32", "mllama.cross_ranges"), uploadTensor(this.gpu, rowMask, [S], "u32", "mllama.cross_row_mask"));
    }
    const [idsT, posT, ranges, rowMask] = uploads;
    const rope = ropeTables(c.text.rope, ropeLength);
    const rec = new Recorder(this.gpu);
    let x: Tensor | null = null;
    try {
      x = embedding(rec, idsT, this.weights.text.embed);
      const crossOpt = cross ? { kv: cross.kv, mask: { ranges, rowMask, keyMask: cross.keyMask, emptyRows: "attendAll" as const } } : null;
      if (read === null) {
        decoderForward(rec, c.text, this.weights.text, x, posT, rope, cache.layers, { logits: "none", cross: crossOpt });
        rec.submit();
        return null;
      }
      const logits = decoderForward(rec, c.text, this.weights.text, x, posT, rope, cache.layers, { logits: "last", cross: crossOpt });
      const r = await this.reader.finish(rec, logits, read);
      return { tokenId: r.tokenId, logits: r.logits };
    } finally {
      for (const t of [...uploads, x]) if (t) this.gpu.pool.release(t.buffer);
    }
  }
}
