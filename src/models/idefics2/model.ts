// Idefics2 glue: weights + vision tower + connector + the shared Mistral decoder + KV cache.
// A prefill encodes the images whose tokens lie past the cached prefix (vision + connector, one
// submit), then runs the new tokens in chunks of at most prefillChunkTokens() (one submit each,
// the abort signal checked between them), each chunk's <image> rows replaced by connector rows
// (masked_scatter as buffer copies). Positions are 0..T-1. Decode is one submit per token.
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../../gpu/transfer.ts";
import { maxWeightBytes } from "../../quant/pack.ts";
import { embedding } from "../../ops/embedding.ts";
import { ropeTables } from "../common/rope.ts";
import type { TensorSource, WeightLoadOptions } from "../common/source.ts";
import { copyImageRows, imagesToEncode, planImageRuns, type ImageRowRun } from "../common/image_scatter.ts";
import { gpuIdle, LayerCaches, prefillChunks, StepReader, throwIfAborted, type StepReadout, checkDecodeRoom, type CacheOptions } from "../common/step.ts";
import { decoderForward } from "../decoder/forward.ts";
import type { ReadMode } from "../family.ts";
import type { Idefics2Config } from "./config.ts";
import { connectorForward, perceiverActivation, perceiverKeyRanges } from "./connector.ts";
import { encodeVision, gatherPatches, visionInputs, vitConfigOf, type VisionCrop } from "./vision.ts";
import { loadIdefics2Weights, releaseIdefics2Weights, type Idefics2Weights } from "./weights.ts";

/** One image of the prompt: its crops in order (with splitting: the 4 sub-images, then the full image). */
export interface Idefics2ImageItem {
  crops: readonly VisionCrop[];
}

export interface Idefics2StepOptions {
  read?: ReadMode;
  signal?: AbortSignal;
  /** Called between prefill chunks: prompt tokens computed so far, tokens to compute. */
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface Idefics2StepResult {
  tokenId: number | null;
  logits: Float32Array | null;
}

export interface Idefics2PrefillResult extends Idefics2StepResult {
  /** Prompt tokens already in the cache, tokens computed now, and the decoder chunks (one submit each) they took. */
  reused: number;
  computed: number;
  chunks: number;
}

/** Per-layer KV caches; truncate(n) keeps the first n tokens. */
export class Idefics2Cache extends LayerCaches {}

/** A run of prompt positions taking consecutive connector rows of one image. */
type CopyRun = ImageRowRun<Idefics2ImageItem>;

/**
 * Patches one vision submit batches (a crop with more runs alone): an idefics2-8b crop of 980 px
 * has 4900, about 4 TFLOP in the tower's linear layers and 3 in its attention, so small crops share
 * a submit and large ones don't.
 */
const VISION_PATCHES_PER_SUBMIT = 4096;

function checkSupported(config: Idefics2Config): void {
  vitConfigOf(config.vision); // unsupported_feature for vision activations without a kernel
  perceiverActivation(config.perceiver.hiddenAct);
  if (config.text.rope.sections.length !== 1) throw new WebvlmError("unsupported_feature", "idefics2: the text rope must take 1-row positions");
}

export class Idefics2Model {
  /**
   * Largest activation one vision-path tensor may take (default: the binding limit weights use).
   * Crops are encoded in groups whose widest per-patch activation fits, and the modality
   * projection in row passes; tests lower it to exercise both.
   */
  visionBindingBytes: number;
  private readonly reader: StepReader;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: Idefics2Config,
    readonly weights: Idefics2Weights,
  ) {
    checkSupported(config);
    this.reader = new StepReader(gpu);
    this.visionBindingBytes = maxWeightBytes(gpu);
  }

  static async load(gpu: GpuContext, config: Idefics2Config, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Idefics2Model> {
    checkSupported(config);
    return new Idefics2Model(gpu, config, await loadIdefics2Weights(gpu, config, source, opts));
  }

  /** A model over weights already on the GPU (benchmarks build random ones of a real shape). */
  static fromWeights(gpu: GpuContext, config: Idefics2Config, weights: Idefics2Weights): Idefics2Model {
    return new Idefics2Model(gpu, config, weights);
  }

  /** Connector rows per image: crops x resampler_n_latents. */
  imageTokens(item: Idefics2ImageItem): number {
    return item.crops.length * this.config.perceiver.numLatents;
  }

  /** The per-layer KV caches (kvDtype f32 unless told; small at first, grown up to maxSeq). */
  createCache(maxSeq: number, opts: CacheOptions = {}): Idefics2Cache {
    const t = this.config.text;
    return new Idefics2Cache(this.gpu, LayerCaches.allocate(this.gpu, t.numLayers, maxSeq, t.numKvHeads, t.headDim, opts), maxSeq);
  }

  /**
   * Image features f32 [sum crops * L, H] of the items' crops in order (vision tower + connector);
   * the caller releases the tensor (gpu.pool.release(t.buffer)). Crops run in groups (cropGroups),
   * one submit each, the signal checked between them: a split 980 px image is ~25k patch rows
   * through a 27-layer tower, more than one submit should hold.
   */
  async encodeImages(items: readonly Idefics2ImageItem[], signal?: AbortSignal): Promise<Tensor> {
    const c = this.config;
    const L = c.perceiver.numLatents;
    const H = c.text.hiddenSize;
    const v = c.vision;
    const patchDim = v.numChannels * v.patchSize * v.patchSize;
    const groups = this.cropGroups(items.flatMap((it) => it.crops));
    const inputs = groups.map((g) => ({ crops: g, ...visionInputs(v, g) }));
    const projectionRows = Math.max(1, Math.floor(this.visionBindingBytes / (4 * 2 * c.text.intermediateSize)));
    const total = groups.reduce((a, g) => a + g.length, 0) * L;
    let out: Tensor | null = groups.length > 1 ? allocTensor(this.gpu, [total, H], "f32", "idefics2.image_features") : null;
    let row = 0;
    try {
      for (const [i, g] of inputs.entries()) {
        if (i > 0) {
          await gpuIdle(this.gpu);
          throwIfAborted(signal);
        }
        const n = g.positionIds.length;
        const rec = new Recorder(this.gpu);
        const uploads: Tensor[] = [];
        try {
          // Host rows are uploaded; GPU-preprocessed rows are copied from the payload's tensor.
          const patches = gatherPatches(rec, g.crops, patchDim);
          uploads.push(patches);
          const positionIds = uploadTensor(this.gpu, g.positionIds, [n], "i32", "idefics2.position_ids");
          uploads.push(positionIds);
          const cu = uploadTensor(this.gpu, g.cuSeqlens, [g.crops.length + 1], "u32", "idefics2.cu_seqlens");
          uploads.push(cu);
          const ranges = uploadTensor(this.gpu, perceiverKeyRanges(g.counts, L), [g.crops.length * L, 2], "u32", "idefics2.perceiver_ranges");
          uploads.push(ranges);
          const vision = encodeVision(rec, v, this.weights.vision, patches, positionIds, cu);
          const part = connectorForward(rec, c.perceiver, this.weights.connector, vision, g.counts, ranges, projectionRows);
          this.gpu.pool.release(vision.buffer);
          if (out) {
            rec.copy(part, { buffer: out.buffer, offset: out.offset + row * H * 4, size: part.shape[0] * H * 4 });
            this.gpu.pool.release(part.buffer);
          } else {
            out = part;
          }
          row += g.crops.length * L;
          rec.submit();
        } finally {
          for (const t of uploads) this.gpu.pool.release(t.buffer);
        }
      }
      return out!;
    } catch (e) {
      if (out) this.gpu.pool.release(out.buffer);
      throw e;
    }
  }

  /**
   * Runs the prompt `ids` from the cache's current length on (the first cache.length tokens must be
   * the cache's). `images` lists every image of the full prompt in order; only those with <image>
   * tokens past the cached prefix are encoded, and a prefix may end inside an image.
   */
  async prefill(ids: readonly number[], images: readonly Idefics2ImageItem[], cache: Idefics2Cache, opts: Idefics2StepOptions = {}): Promise<Idefics2PrefillResult> {
    this.checkIds(ids);
    const T = ids.length;
    const past = cache.length;
    if (past >= T) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${T}-token prompt; truncate it first`);
    if (T > cache.maxSeq) throw new WebvlmError("context_length_exceeded", `prompt of ${T} tokens exceeds the cache's ${cache.maxSeq}`, { needed: T, maxSeq: cache.maxSeq });
    cache.ensure(T); // grows the layers (their own submit) before any step is recorded
    const runs = this.planImages(ids, images, past);
    const { items: toEncode, firstRow } = imagesToEncode(runs, (it) => this.imageTokens(it));

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
        const r = await this.forwardChunk(ids.slice(start, end), start, cache, runs, features, firstRow, last ? (opts.read ?? "argmax") : null);
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

  /** One token at cache index cache.length (position = cache.length). */
  async decode(id: number, cache: Idefics2Cache, opts: Idefics2StepOptions = {}): Promise<Idefics2StepResult> {
    this.checkIds([id]);
    const past = cache.length;
    checkDecodeRoom(cache);
    throwIfAborted(opts.signal);
    try {
      const r = await this.forwardChunk([id], past, cache, [], null, new Map(), opts.read ?? "argmax");
      return { tokenId: r!.tokenId, logits: r!.logits };
    } catch (e) {
      cache.truncate(past);
      throw e;
    }
  }

  dispose(): void {
    releaseIdefics2Weights(this.gpu, this.weights);
    this.reader.dispose();
  }

  // ---------------------------------------------------------------- internals

  /**
   * Consecutive crops whose vision-tower and perceiver activations (per patch at most
   * max(3D, Dv, H, 2 kv dim) floats; the perceiver adds L latent rows per crop) fit
   * visionBindingBytes, with at most VISION_PATCHES_PER_SUBMIT patches unless one crop has more;
   * a crop too large for the binding limit alone is limit_exceeded.
   */
  private cropGroups(crops: readonly VisionCrop[]): VisionCrop[][] {
    const c = this.config;
    const p = c.perceiver;
    const width = Math.max(3 * c.vision.hiddenSize, c.vision.intermediateSize, c.text.hiddenSize, 2 * p.numKvHeads * p.headDim, p.numHeads * p.headDim);
    const rowsOf = (crop: VisionCrop): number => crop.patchesH * crop.patchesW + p.numLatents;
    const groups: VisionCrop[][] = [];
    let rows = 0;
    let patches = 0;
    for (const crop of crops) {
      const r = rowsOf(crop);
      if (r * width * 4 > this.visionBindingBytes) {
        throw new WebvlmError("limit_exceeded", `idefics2: a ${crop.patchesH}x${crop.patchesW}-patch crop needs ${r * width * 4} bytes in one binding, over the device's ${this.visionBindingBytes}`, {
          patchesH: crop.patchesH,
          patchesW: crop.patchesW,
        });
      }
      const last = groups[groups.length - 1];
      const n = crop.patchesH * crop.patchesW;
      if (last && (rows + r) * width * 4 <= this.visionBindingBytes && patches + n <= VISION_PATCHES_PER_SUBMIT) {
        last.push(crop);
        rows += r;
        patches += n;
      } else {
        groups.push([crop]);
        rows = r;
        patches = n;
      }
    }
    if (groups.length === 0) throw new WebvlmError("bad_request", "idefics2 vision: no crops");
    return groups;
  }

  private checkIds(ids: readonly number[]): void {
    const vocab = this.config.text.vocabSize;
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new WebvlmError("bad_request", `token id ${id} outside [0, ${vocab})`);
  }

  /**
   * masked_scatter planned on the CPU: the k-th <image> token takes row k of the images' connector
   * rows (images concatenated in order); counts must match (bad_request). Returns runs of
   * consecutive positions at or past `past` that take consecutive rows of one image.
   */
  private planImages(ids: readonly number[], images: readonly Idefics2ImageItem[], past: number): CopyRun[] {
    const slots: number[] = [];
    ids.forEach((id, i) => id === this.config.imageTokenId && slots.push(i));
    return planImageRuns(
      slots,
      images,
      (it) => this.imageTokens(it),
      past,
      (tokens, rows) => `prompt has ${tokens} <image> tokens but the ${images.length} image(s) give ${rows} rows`,
    );
  }

  /**
   * The forward of `ids` at cache index `start`, image rows copied in from `features`; submitted.
   * With `read`, its result is read back; without, nothing is (a chunk before the last).
   */
  private async forwardChunk(
    ids: readonly number[], start: number, cache: Idefics2Cache, runs: readonly CopyRun[], features: Tensor | null,
    firstRow: ReadonlyMap<Idefics2ImageItem, number>, read: ReadMode | null,
  ): Promise<StepReadout | null> {
    const S = ids.length;
    const H = this.config.text.hiddenSize;
    const rowBytes = H * 4;
    const idsT = uploadTensor(this.gpu, Uint32Array.from(ids), [S], "u32", "idefics2.ids");
    const posT = uploadTensor(this.gpu, Int32Array.from({ length: S }, (_, i) => start + i), [S], "i32", "idefics2.positions");
    const rec = new Recorder(this.gpu);
    let x: Tensor | null = null;
    try {
      x = embedding(rec, idsT, this.weights.text.embed);
      copyImageRows(rec, runs, features, firstRow, x, start, S, rowBytes, "idefics2");
      const rope = ropeTables(this.config.text.rope, start + S);
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

/** Loads an Idefics2 checkpoint onto the GPU (see WeightLoadOptions for formats). */
export function loadIdefics2(gpu: GpuContext, config: Idefics2Config, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Idefics2Model> {
  return Idefics2Model.load(gpu, config, source, opts);
}
