// Phi-3.5-vision glue: weights + CLIP/HD image path + the shared Phi-3 decoder + KV cache.
// A prefill encodes the images whose placeholder tokens lie past the reusable cached prefix (tiles
// in groups, one submit each, the abort signal checked between them), then runs the new tokens in
// chunks of at most prefillChunkTokens() (one submit each, the signal checked between them), each
// chunk's <|image|> rows replaced by the image rows (masked scatter as buffer copies). Positions are
// 0..T-1. Decode is one submit per token.
//
// Rotary factors follow the original code exactly (PHI3V.md §6): a pass of key length T uses the
// long factors iff T > original_max_position_embeddings (O) — the whole prompt's length for every
// prefill chunk; cached keys keep the factors of the pass that made them (the cache records them,
// so a new prompt reuses only keys a fresh generate() would have made: same factors, no image
// position recomputed without its image); and when the sequence, the token fed included, first
// reaches O + 1 while the cache holds O tokens, the cache is dropped and the whole sequence is
// recomputed with long factors, image positions embedded as token id 0 (the original's in-place
// clamp of the placeholder ids).
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../../gpu/transfer.ts";
import { embedding } from "../../ops/embedding.ts";
import { ropeTables } from "../common/rope.ts";
import type { TensorSource, WeightLoadOptions } from "../common/source.ts";
import { copyImageRows, imagesToEncode, planImageRuns, type ImageRowRun } from "../common/image_scatter.ts";
import { gpuIdle, LayerCaches, prefillChunks, StepReader, throwIfAborted, type StepReadout, checkDecodeRoom, type CacheOptions } from "../common/step.ts";
import { decoderForward } from "../decoder/forward.ts";
import type { ReadMode } from "../family.ts";
import { PHI3V_TILE_TOKENS, type Phi3VConfig } from "./config.ts";
import { allocHdTable, assembleAndProject, checkImageItem, encodeTiles, hdGatherIds, tileInputs, type Phi3VImageItem } from "./vision.ts";
import { loadPhi3VWeights, releasePhi3VWeights, type Phi3VWeights } from "./weights.ts";

export interface Phi3VStepOptions {
  read?: ReadMode;
  signal?: AbortSignal;
  /** Called between prefill chunks: prompt tokens computed so far, tokens to compute. */
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface Phi3VStepResult {
  tokenId: number | null;
  logits: Float32Array | null;
}

export interface Phi3VPrefillResult extends Phi3VStepResult {
  /** Prompt tokens already in the cache, tokens computed now, and the decoder chunks (one submit each) they took. */
  reused: number;
  computed: number;
  chunks: number;
}

export interface Phi3VDecodeResult extends Phi3VStepResult {
  /** True when this step dropped the cache and recomputed the whole sequence (§6, at O + 1 tokens). */
  recomputed: boolean;
}

/**
 * Per-layer KV caches plus what each cached position was made from: its id, whether it is an image
 * position, whether its key used the long factors, and whether it is an image position recomputed
 * as token 0. truncate(n) keeps the first n positions of both.
 */
export class Phi3VCache extends LayerCaches {
  ids: number[] = [];
  image: boolean[] = [];
  longKeys: boolean[] = [];
  imageAsZero: boolean[] = [];

  override truncate(n: number): void {
    super.truncate(n);
    const len = this.length;
    for (const a of [this.ids, this.image, this.longKeys, this.imageAsZero] as unknown[][]) a.length = Math.min(a.length, len);
  }

  /** Records positions about to be appended (removed again by truncate on failure). */
  record(ids: readonly number[], image: readonly boolean[], long: boolean, imageAsZero: boolean): void {
    ids.forEach((id, i) => {
      this.ids.push(id);
      this.image.push(image[i]);
      this.longKeys.push(long);
      this.imageAsZero.push(imageAsZero && image[i]);
    });
  }
}

/** A run of prompt positions taking consecutive image rows of one image. */
type CopyRun = ImageRowRun<Phi3VImageItem>;

/** One pass's inputs for a range of positions: what the embedding reads and what the cache records. */
interface ChunkInput {
  start: number;
  /** Embedding ids (image positions: the image token, overwritten by image rows; 0 in a recompute). */
  embedIds: number[];
  /** Ids recorded in the cache (image positions: the image token id). */
  ids: number[];
  image: boolean[];
  /** The pass's key length T (picks the rope table). */
  passLength: number;
  /** A recompute pass (§6): image positions carry token 0's embedding. */
  imageAsZero: boolean;
}

/**
 * Tiles one vision submit runs: a 336 px tile is 577 tokens through a 24-layer ViT-L (~0.35 TFLOP),
 * so a 16-crop image (17 tiles) takes several submits, none running long enough for a browser to
 * reset the GPU.
 */
const VISION_TILES_PER_SUBMIT = 4;

export class Phi3VModel {
  /** Tiles per vision submit (tests lower it to exercise the grouping). */
  visionTilesPerSubmit = VISION_TILES_PER_SUBMIT;
  private readonly reader: StepReader;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: Phi3VConfig,
    readonly weights: Phi3VWeights,
  ) {
    if (config.text.rope.sections.length !== 1) throw new WebvlmError("unsupported_feature", "phi3_v: the text rope must take 1-row positions");
    this.reader = new StepReader(gpu);
    this.imageToken = config.imageTokenId;
  }

  static async load(gpu: GpuContext, config: Phi3VConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Phi3VModel> {
    return new Phi3VModel(gpu, config, await loadPhi3VWeights(gpu, config, source, opts));
  }

  /**
   * The id the prompt's image placeholder positions carry: config.imageTokenId, or the tokenizer's
   * <|image|> as the family's processor found it (family.ts sets it).
   */
  imageToken: number;

  /** original_max_position_embeddings when the rope switches factors (longrope), else null. */
  get originalMaxPositions(): number | null {
    const r = this.config.text.rope;
    return r.kind === "longrope" ? r.originalMaxPositions : null;
  }

  /** Whether a pass of key length T uses the long factors. */
  longPass(T: number): boolean {
    const o = this.originalMaxPositions;
    return o !== null && T > o;
  }

  /** The per-layer KV caches (kvDtype f32 unless told; small at first, grown up to maxSeq). */
  createCache(maxSeq: number, opts: CacheOptions = {}): Phi3VCache {
    const t = this.config.text;
    return new Phi3VCache(this.gpu, LayerCaches.allocate(this.gpu, t.numLayers, maxSeq, t.numKvHeads, t.headDim, opts), maxSeq);
  }

  /**
   * Image features f32 [sum numImgTokens, H] of the items in order (CLIP over every tile, HD
   * assembly, projection); the caller releases the tensor. Tiles run in groups of
   * visionTilesPerSubmit, one submit each, the signal checked between submits.
   */
  async encodeImages(items: readonly Phi3VImageItem[], signal?: AbortSignal): Promise<Tensor> {
    items.forEach((it, i) => checkImageItem(it, i));
    const v = this.weights.visionConfig;
    const C = v.hiddenSize;
    const H = this.config.text.hiddenSize;
    const total = items.reduce((a, it) => a + it.numImgTokens, 0);
    const out = allocTensor(this.gpu, [total, H], "f32", "phi3v.image_features");
    const perSubmit = Math.max(1, Math.floor(this.visionTilesPerSubmit));
    const patchValues = (PHI3V_TILE_TOKENS - 1) * 3 * 14 * 14;
    let submits = 0;
    let outRow = 0;
    try {
      for (const item of items) {
        const tiles = 1 + item.hc * item.wc;
        let table: Tensor | null = null;
        try {
          for (let t0 = 0; t0 < tiles; t0 += perSubmit) {
            if (submits > 0) {
              await gpuIdle(this.gpu);
              throwIfAborted(signal);
            }
            const g = Math.min(perSubmit, tiles - t0);
            const last = t0 + g === tiles;
            const inputs = tileInputs(g);
            // Uploaded before recording: queue writes land before every recorded command. Patch
            // rows already on the GPU (GPU preprocessing) are copied into the group's input by the
            // recorder (a plain copy: no binding-offset alignment to meet); the payload's tensor
            // itself is the engine's to release.
            const shape = [g * (PHI3V_TILE_TOKENS - 1), 3 * 14 * 14];
            const src = item.patchRows;
            const uploads = [
              src instanceof Float32Array
                ? uploadTensor(this.gpu, src.subarray(t0 * patchValues, (t0 + g) * patchValues), shape, "f32", "phi3v.patches")
                : allocTensor(this.gpu, shape, "f32", "phi3v.patches"),
              uploadTensor(this.gpu, inputs.positionIds, [g * PHI3V_TILE_TOKENS], "u32", "phi3v.position_ids"),
              uploadTensor(this.gpu, inputs.cuSeqlens, [g + 1], "u32", "phi3v.cu_seqlens"),
            ];
            const gatherIds = last ? hdGatherIds(item.hc, item.wc) : null;
            if (gatherIds) uploads.push(uploadTensor(this.gpu, gatherIds, [gatherIds.length], "u32", "phi3v.hd_ids"));
            const rec = new Recorder(this.gpu);
            try {
              if (!(src instanceof Float32Array)) {
                rec.copy({ buffer: src.buffer, offset: src.offset + t0 * patchValues * 4, size: g * patchValues * 4 }, uploads[0]);
              }
              table ??= allocHdTable(rec, tiles, C);
              const x = encodeTiles(rec, v, this.weights.vision, uploads[0], uploads[1], uploads[2]);
              rec.copy(x, { buffer: table.buffer, offset: table.offset + t0 * PHI3V_TILE_TOKENS * C * 4, size: g * PHI3V_TILE_TOKENS * C * 4 });
              this.gpu.pool.release(x.buffer);
              if (last) {
                const feats = assembleAndProject(rec, this.weights.connector, table, tiles, uploads[3]);
                rec.copy(feats, { buffer: out.buffer, offset: out.offset + outRow * H * 4, size: item.numImgTokens * H * 4 });
                this.gpu.pool.release(feats.buffer);
                this.gpu.pool.release(table.buffer);
                table = null;
              }
              rec.submit();
              submits++;
            } finally {
              for (const u of uploads) this.gpu.pool.release(u.buffer);
            }
          }
        } finally {
          if (table) this.gpu.pool.release(table.buffer);
        }
        outRow += item.numImgTokens;
      }
      return out;
    } catch (e) {
      this.gpu.pool.release(out.buffer);
      throw e;
    }
  }

  /**
   * Runs the prompt `ids` (image positions carry the image token id) from the longest reusable
   * cached prefix on: the cache must hold a prefix of `ids`; positions whose keys a fresh pass over
   * `ids` would make differently (other factors, or an image recomputed as token 0) are dropped
   * first. `images` lists every image of the full prompt in order; only those with positions past
   * the reused prefix are encoded, and the prefix may end inside an image.
   */
  async prefill(ids: readonly number[], images: readonly Phi3VImageItem[], cache: Phi3VCache, opts: Phi3VStepOptions = {}): Promise<Phi3VPrefillResult> {
    this.checkIds(ids);
    const T = ids.length;
    if (T > cache.maxSeq) throw new WebvlmError("context_length_exceeded", `prompt of ${T} tokens exceeds the cache's ${cache.maxSeq}`, { needed: T, maxSeq: cache.maxSeq });
    cache.ensure(T); // grows the layers (their own submit) before any step is recorded
    const long = this.longPass(T);
    let keep = 0;
    while (keep < cache.length && cache.ids[keep] === ids[keep] && cache.longKeys[keep] === long && !cache.imageAsZero[keep]) keep++;
    cache.truncate(keep);
    const past = cache.length;
    if (past >= T) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${T}-token prompt; truncate it first`);
    const isImage = ids.map((id) => id === this.imageToken);
    const runs = this.planImages(ids, isImage, images, past);
    const { items: toEncode, firstRow } = imagesToEncode(runs, (it) => it.numImgTokens);

    let features: Tensor | null = null;
    let chunks = 0;
    try {
      throwIfAborted(opts.signal);
      if (toEncode.length > 0) {
        features = await this.encodeImages(toEncode, opts.signal);
        await gpuIdle(this.gpu);
        throwIfAborted(opts.signal);
      }
      for (const [start, end] of prefillChunks(past, T)) {
        if (chunks > 0) {
          // One chunk at a time, so that an abort takes effect between chunks.
          await gpuIdle(this.gpu);
          throwIfAborted(opts.signal);
          opts.onPrefillProgress?.(start - past, T - past);
        }
        chunks++;
        const last = end === T;
        const slice = ids.slice(start, end);
        const input: ChunkInput = { start, embedIds: slice, ids: slice, image: isImage.slice(start, end), passLength: T, imageAsZero: false };
        const r = await this.forwardChunk(input, cache, runs, features, firstRow, last ? (opts.read ?? "argmax") : null);
        if (last) return { tokenId: r!.tokenId, logits: r!.logits, reused: past, computed: T - past, chunks };
      }
      throw new WebvlmError("internal", "prefill: no chunk to run");
    } catch (e) {
      cache.truncate(past);
      throw e;
    } finally {
      if (features) this.gpu.pool.release(features.buffer);
    }
  }

  /**
   * One token at cache index cache.length (position = cache.length). When the sequence reaches
   * O + 1 tokens with O cached (§6), the cache is dropped and the whole sequence recomputed in
   * chunks with the long factors (image positions as token 0); an abort or failure during that
   * recompute leaves the cache empty (its old keys are already overwritten).
   */
  async decode(id: number, cache: Phi3VCache, opts: Phi3VStepOptions = {}): Promise<Phi3VDecodeResult> {
    this.checkIds([id]);
    const past = cache.length;
    checkDecodeRoom(cache);
    throwIfAborted(opts.signal);
    if (past === this.originalMaxPositions) return { ...(await this.recompute(id, cache, opts)), recomputed: true };
    try {
      const input: ChunkInput = { start: past, embedIds: [id], ids: [id], image: [false], passLength: past + 1, imageAsZero: false };
      const r = await this.forwardChunk(input, cache, [], null, new Map(), opts.read ?? "argmax");
      return { tokenId: r!.tokenId, logits: r!.logits, recomputed: false };
    } catch (e) {
      cache.truncate(past);
      throw e;
    }
  }

  dispose(): void {
    releasePhi3VWeights(this.gpu, this.weights);
    this.reader.dispose();
  }

  // ---------------------------------------------------------------- internals

  /** §6's recompute: the cached ids plus `id` as one pass of the long factors, image positions as token 0. */
  private async recompute(id: number, cache: Phi3VCache, opts: Phi3VStepOptions): Promise<Phi3VStepResult> {
    const ids = [...cache.ids, id];
    const image = [...cache.image, false];
    const embedIds = ids.map((x, i) => (image[i] ? 0 : x));
    const T = ids.length;
    cache.truncate(0);
    let chunks = 0;
    try {
      for (const [start, end] of prefillChunks(0, T)) {
        if (chunks++ > 0) {
          await gpuIdle(this.gpu);
          throwIfAborted(opts.signal);
          opts.onPrefillProgress?.(start, T);
        }
        const input: ChunkInput = { start, embedIds: embedIds.slice(start, end), ids: ids.slice(start, end), image: image.slice(start, end), passLength: T, imageAsZero: true };
        const r = await this.forwardChunk(input, cache, [], null, new Map(), end === T ? (opts.read ?? "argmax") : null);
        if (end === T) return { tokenId: r!.tokenId, logits: r!.logits };
      }
      throw new WebvlmError("internal", "recompute: no chunk to run");
    } catch (e) {
      cache.truncate(0);
      throw e;
    }
  }

  private checkIds(ids: readonly number[]): void {
    const vocab = this.config.text.vocabSize;
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new WebvlmError("bad_request", `token id ${id} outside [0, ${vocab})`);
  }

  /**
   * The masked scatter planned on the CPU (§5): the k-th image position takes row k of the images'
   * rows (images concatenated in order); counts must match (bad_request). Returns runs of
   * consecutive positions at or past `past` that take consecutive rows of one image.
   */
  private planImages(ids: readonly number[], isImage: readonly boolean[], images: readonly Phi3VImageItem[], past: number): CopyRun[] {
    const slots: number[] = [];
    isImage.forEach((x, i) => x && slots.push(i));
    images.forEach((it, i) => checkImageItem(it, i));
    return planImageRuns(
      slots,
      images,
      (it) => it.numImgTokens,
      past,
      (tokens, rows) => `prompt has ${tokens} image placeholder tokens (id ${this.imageToken}) but the ${images.length} image(s) give ${rows} rows`,
    );
  }

  /**
   * The forward of one chunk at cache index input.start, image rows copied in from `features`;
   * submitted. With `read`, its result is read back; without, nothing is (a chunk before the last).
   */
  private async forwardChunk(
    input: ChunkInput, cache: Phi3VCache, runs: readonly CopyRun[], features: Tensor | null,
    firstRow: ReadonlyMap<Phi3VImageItem, number>, read: ReadMode | null,
  ): Promise<StepReadout | null> {
    const { start, embedIds } = input;
    const S = embedIds.length;
    if (cache.length !== start) throw new WebvlmError("internal", `phi3_v: chunk at ${start} on a cache of ${cache.length}`);
    const H = this.config.text.hiddenSize;
    const rowBytes = H * 4;
    const idsT = uploadTensor(this.gpu, Uint32Array.from(embedIds), [S], "u32", "phi3v.ids");
    const posT = uploadTensor(this.gpu, Int32Array.from({ length: S }, (_, i) => start + i), [S], "i32", "phi3v.positions");
    const rec = new Recorder(this.gpu);
    let x: Tensor | null = null;
    try {
      x = embedding(rec, idsT, this.weights.text.embed);
      copyImageRows(rec, runs, features, firstRow, x, start, S, rowBytes, "phi3_v");
      const long = this.longPass(input.passLength);
      const rope = ropeTables(this.config.text.rope, input.passLength);
      cache.record(input.ids, input.image, long, input.imageAsZero);
      if (!read) {
        // A chunk before the last only fills the caches.
        decoderForward(rec, this.config.text, this.weights.text, x, posT, rope, cache.layers, { logits: "none" });
        rec.submit();
        return null;
      }
      const logits = decoderForward(rec, this.config.text, this.weights.text, x, posT, rope, cache.layers, { logits: "last" });
      return await this.reader.finish(rec, logits, read);
    } finally {
      for (const t of [idsT, posT, x]) if (t) this.gpu.pool.release(t.buffer);
    }
  }
}
