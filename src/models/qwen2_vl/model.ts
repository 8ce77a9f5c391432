// Qwen2-VL glue: weights + vision tower + decoder + KV cache. A decode step is one Recorder submit
// whose only readback is its result (the argmax id and/or the last row of logits); a prefill is one
// submit per chunk of at most prefillChunkTokens() tokens (the vision tower runs in the first),
// checking the abort signal between chunks; only the last chunk computes logits.
import { gpuIdle, LayerCaches, prefillChunks, StepReader, throwIfAborted, checkDecodeRoom, type CacheOptions } from "../common/step.ts";
import { planImageRuns } from "../common/image_scatter.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import { byteSize, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor, writeBytes } from "../../gpu/transfer.ts";
import { embedding } from "../../ops/embedding.ts";
import type { Qwen2VLConfig } from "./config.ts";
import { getRopeIndex, type Grid, type RopeIndex } from "./rope_index.ts";
import { textForward } from "./text.ts";
import { parseVitActivation } from "../vit/encoder.ts";
import { encodeVision, visionTokenCount } from "./vision.ts";
import { loadQwen2VLWeights, releaseQwen2VLWeights, type Qwen2VLWeights } from "./weights.ts";
import { type TensorSource, type WeightLoadOptions } from "../common/source.ts";

/** One image or video of the prompt, in prompt order. */
export interface VisionItem {
  grid: Grid;
  /**
   * Patch rows [t*h*w, C*T*P*P] from the processor, on the host or already on the GPU (GPU
   * preprocessing; not released here); encoded by prefill when its tokens are needed.
   */
  pixelValues?: Float32Array | Tensor;
  /** Or its embeddings already computed (encodeVision), f32 [t*h*w/4, hidden]; not released. */
  embeds?: Tensor;
}

export interface PrefillInputs {
  images?: readonly VisionItem[];
  videos?: readonly VisionItem[];
}

/** What a forward reads back: the greedy id, the logits of the last position, or both. */
export type ReadMode = "argmax" | "logits" | "both";

export interface StepOptions {
  read?: ReadMode;
  /** Checked between prefill chunks and before a decode step (WebvlmError "aborted"). */
  signal?: AbortSignal;
  /** Also return the logits as a GPU tensor [1, vocab] (the caller releases it). */
  keepLogits?: boolean;
  /** Called between prefill chunks: prompt tokens computed so far, tokens to compute. */
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface StepResult {
  /** argmax of the logits (torch.argmax: first maximum), when read. */
  tokenId: number | null;
  /** Logits of the last position [vocab], when read. */
  logits: Float32Array | null;
  logitsTensor: Tensor | null;
}

export interface PrefillResult extends StepResult, RopeIndex {
  /** Prompt tokens already in the cache (reused) and tokens computed now. */
  reused: number;
  computed: number;
}

/**
 * Per-layer KV caches plus the prompt's rope delta. truncate(n) keeps the first n tokens, e.g. the
 * common prefix of the next chat turn; the next prefill then computes only the tokens after it.
 */
export class Qwen2VLCache extends LayerCaches {
  ropeDelta = 0;

  override truncate(n: number): void {
    super.truncate(n);
    if (this.length === 0) this.ropeDelta = 0;
  }
}

function checkSupported(config: Qwen2VLConfig): void {
  parseVitActivation(config.vision.hiddenAct); // throws unsupported_feature for activations without a kernel
}

export class Qwen2VLModel {
  private readonly reader: StepReader;

  private constructor(
    readonly gpu: GpuContext,
    readonly config: Qwen2VLConfig,
    readonly weights: Qwen2VLWeights,
  ) {
    this.reader = new StepReader(gpu);
  }

  static async load(gpu: GpuContext, config: Qwen2VLConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Qwen2VLModel> {
    checkSupported(config);
    return new Qwen2VLModel(gpu, config, await loadQwen2VLWeights(gpu, config, source, opts));
  }

  /** A model over weights already on the GPU (benchmarks build random ones of a real shape). */
  static fromWeights(gpu: GpuContext, config: Qwen2VLConfig, weights: Qwen2VLWeights): Qwen2VLModel {
    checkSupported(config);
    return new Qwen2VLModel(gpu, config, weights);
  }

  /** The per-layer KV caches (kvDtype f32 unless told; small at first, grown up to maxSeq). */
  createCache(maxSeq: number, opts: CacheOptions = {}): Qwen2VLCache {
    const t = this.config.text;
    return new Qwen2VLCache(this.gpu, LayerCaches.allocate(this.gpu, t.numLayers, maxSeq, t.numKvHeads, t.headDim, opts), maxSeq);
  }

  ropeIndex(ids: readonly number[], imageGrids: readonly Grid[] = [], videoGrids: readonly Grid[] = []): RopeIndex {
    const c = this.config;
    return getRopeIndex(ids, imageGrids, videoGrids, {
      imageTokenId: c.imageTokenId,
      videoTokenId: c.videoTokenId,
      visionStartTokenId: c.visionStartTokenId,
      spatialMergeSize: c.vision.spatialMergeSize,
    });
  }

  /**
   * Image embeddings [sum t*h*w/4, hidden] of patch rows (images concatenated, grids in order),
   * recorded and submitted; the caller releases the tensor (gpu.pool.release(t.buffer)).
   */
  encodeVision(pixelValues: Float32Array, grids: readonly Grid[]): Tensor {
    const pv = this.uploadPixels(pixelValues, grids);
    const rec = new Recorder(this.gpu);
    const out = encodeVision(rec, this.config.vision, this.weights.vision, pv, grids);
    this.gpu.pool.release(pv.buffer);
    rec.submit();
    return out;
  }

  /**
   * Runs the prompt `ids` (the full prompt, pads expanded) from the cache's current length on:
   * the first cache.length tokens must be the cache's (see Qwen2VLCache.truncate). `inputs`
   * lists every image / video of the full prompt (grids are needed for the positions); only
   * items with tokens past the cached prefix are encoded. Returns the last position's result
   * and the prompt's M-RoPE positions and rope delta (kept in the cache for decode).
   */
  async prefill(ids: readonly number[], inputs: PrefillInputs, cache: Qwen2VLCache, opts: StepOptions = {}): Promise<PrefillResult> {
    const c = this.config;
    const H = c.text.hiddenSize;
    this.checkIds(ids);
    const images = inputs.images ?? [];
    const videos = inputs.videos ?? [];
    const L = ids.length;
    const past = cache.length;
    if (past >= L) throw new WebvlmError("bad_request", `prefill: the cache already holds ${past} tokens of a ${L}-token prompt; truncate it first`);
    if (L > cache.maxSeq) {
      throw new WebvlmError("context_length_exceeded", `prompt of ${L} tokens exceeds the cache's ${cache.maxSeq}`, { needed: L, maxSeq: cache.maxSeq });
    }
    cache.ensure(L); // grows the layers (their own submit) before any step is recorded
    const S = L - past;
    const copies = [
      ...this.planVision(ids, images, c.imageTokenId, "image", past),
      ...this.planVision(ids, videos, c.videoTokenId, "video", past),
    ];
    const rope = this.ropeIndex(ids, images.map((i) => i.grid), videos.map((v) => v.grid));

    // Items to encode now: needed, with pixels and no precomputed embeddings; one joint pass.
    const toEncode = [...new Set(copies.map((k) => k.item))].filter((it) => !it.embeds);
    const encodedRow = new Map<VisionItem, number>();
    let rows = 0;
    for (const it of toEncode) {
      if (!it.pixelValues) throw new WebvlmError("bad_request", "prefill: an image/video whose tokens are not cached has neither pixelValues nor embeds");
      encodedRow.set(it, rows);
      rows += visionTokenCount([it.grid], c.vision.spatialMergeSize);
    }
    for (const k of copies) {
      if (k.item.embeds && (k.item.embeds.dtype !== "f32" || k.item.embeds.shape.length !== 2 || k.item.embeds.shape[1] !== H ||
        k.item.embeds.shape[0] !== visionTokenCount([k.item.grid], c.vision.spatialMergeSize))) {
        throw new WebvlmError("bad_request", `prefill: embeds [${k.item.embeds.shape}] do not match grid [${k.item.grid}] x hidden ${H}`);
      }
    }

    let pixels: Tensor | null = null;
    if (toEncode.length > 0) pixels = this.gatherPixels(toEncode);

    // One submit per chunk; the vision items are encoded once, in the first chunk's submit, and each
    // chunk copies the rows of its own pad positions (an image may straddle a chunk boundary).
    let enc: Tensor | null = null;
    const source = (it: VisionItem): { t: Tensor; row: number } => (it.embeds ? { t: it.embeds, row: 0 } : { t: enc!, row: encodedRow.get(it)! });
    try {
      for (const [start, end] of prefillChunks(past, L)) {
        throwIfAborted(opts.signal);
        const last = end === L;
        const rec = new Recorder(this.gpu);
        if (pixels) {
          enc = encodeVision(rec, c.vision, this.weights.vision, pixels, toEncode.map((it) => it.grid));
          this.gpu.pool.release(pixels.buffer); // recorded: later users come after in stream order
          pixels = null;
        }
        const n = end - start;
        const pos = new Int32Array(3 * n);
        for (let r = 0; r < 3; r++) pos.set(rope.positions.subarray(r * L + start, r * L + end), r * n);
        const chunkFree: Tensor[] = [];
        try {
          const idsT = uploadTensor(this.gpu, Uint32Array.from(ids.slice(start, end)), [n], "u32", "prefill.ids");
          chunkFree.push(idsT);
          const posT = uploadTensor(this.gpu, pos, [3, n], "i32", "prefill.positions");
          chunkFree.push(posT);
          const x = embedding(rec, idsT, this.weights.text.embed);
          chunkFree.push(x);
          this.copyRuns(rec, runsInChunk(copies, start - past, end - past), x, source);
          if (!last) {
            textForward(rec, c.text, this.weights.text, x, posT, cache.layers, { logits: "none" });
            rec.submit();
          } else {
            const logits = textForward(rec, c.text, this.weights.text, x, posT, cache.layers, { logits: "last" });
            const result = await this.finish(rec, logits, opts);
            cache.ropeDelta = rope.ropeDelta;
            return { ...result, ...rope, reused: past, computed: S };
          }
        } finally {
          for (const t of chunkFree) this.gpu.pool.release(t.buffer);
        }
        await gpuIdle(this.gpu); // one chunk at a time, so that an abort takes effect between chunks
        opts.onPrefillProgress?.(end - past, L - past);
      }
      throw new WebvlmError("internal", "prefill: no chunk to run");
    } catch (e) {
      cache.truncate(past);
      throw e;
    } finally {
      if (pixels) this.gpu.pool.release(pixels.buffer);
      if (enc) this.gpu.pool.release(enc.buffer);
    }
  }

  /** One token at cache index cache.length, position cache.length + ropeDelta on all three rows. */
  async decode(id: number, cache: Qwen2VLCache, opts: StepOptions = {}): Promise<StepResult> {
    this.checkIds([id]);
    throwIfAborted(opts.signal);
    const past = cache.length;
    checkDecodeRoom(cache);
    const p = past + cache.ropeDelta;
    const idT = uploadTensor(this.gpu, Uint32Array.of(id), [1], "u32", "decode.id");
    const posT = uploadTensor(this.gpu, Int32Array.of(p, p, p), [3, 1], "i32", "decode.positions");
    const rec = new Recorder(this.gpu);
    let x: Tensor | null = null;
    try {
      x = embedding(rec, idT, this.weights.text.embed);
      const logits = textForward(rec, this.config.text, this.weights.text, x, posT, cache.layers, { logits: "last" });
      return await this.finish(rec, logits, opts);
    } catch (e) {
      cache.truncate(past);
      throw e;
    } finally {
      for (const t of [idT, posT, x]) if (t) this.gpu.pool.release(t.buffer);
    }
  }

  dispose(): void {
    releaseQwen2VLWeights(this.gpu, this.weights);
    this.reader.dispose();
  }

  // ---------------------------------------------------------------- internals

  private checkIds(ids: readonly number[]): void {
    const vocab = this.config.text.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new WebvlmError("bad_request", `token id ${id} outside [0, ${vocab})`);
    }
  }

  /** The items' patch rows as one tensor, host rows uploaded and GPU rows copied in order. */
  private gatherPixels(items: readonly VisionItem[]): Tensor {
    const host = items.map((it) => it.pixelValues).filter((p): p is Float32Array => p instanceof Float32Array);
    if (host.length === items.length) {
      if (host.length === 1) return this.uploadPixels(host[0], [items[0].grid]);
      const pv = new Float32Array(host.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of host) {
        pv.set(p, o);
        o += p.length;
      }
      return this.uploadPixels(pv, items.map((it) => it.grid));
    }
    const v = this.config.vision;
    const patchDim = v.inChannels * v.temporalPatchSize * v.patchSize * v.patchSize;
    const rowsOf = (it: VisionItem): number => it.grid[0] * it.grid[1] * it.grid[2];
    const out = allocTensor(this.gpu, [items.reduce((a, it) => a + rowsOf(it), 0), patchDim], "f32", "pixel_values", true);
    const rec = new Recorder(this.gpu);
    let row = 0;
    for (const it of items) {
      const p = it.pixelValues as Float32Array | Tensor;
      const bytes = rowsOf(it) * patchDim * 4;
      const size = p instanceof Float32Array ? p.length * 4 : byteSize(p);
      if (size !== bytes) throw new WebvlmError("bad_request", `pixel values: ${size / 4} values, grid [${it.grid}] needs ${bytes / 4}`);
      if (p instanceof Float32Array) writeBytes(this.gpu, out.buffer, row * patchDim * 4, p);
      else rec.copy(p, { buffer: out.buffer, offset: row * patchDim * 4, size: bytes }, bytes);
      row += rowsOf(it);
    }
    rec.submit();
    return out;
  }

  private uploadPixels(pixelValues: Float32Array, grids: readonly Grid[]): Tensor {
    const v = this.config.vision;
    const patchDim = v.inChannels * v.temporalPatchSize * v.patchSize * v.patchSize;
    const n = visionTokenCount(grids, v.spatialMergeSize) * v.spatialMergeSize ** 2;
    if (pixelValues.length !== n * patchDim) {
      throw new WebvlmError("bad_request", `pixel values: ${pixelValues.length} values, the grids need ${n} x ${patchDim}`);
    }
    return uploadTensor(this.gpu, pixelValues, [n, patchDim], "f32", "pixel_values");
  }

  /**
   * masked_scatter, planned on the CPU: the k-th pad token of `padId` takes row k of the items'
   * embeddings (items concatenated in order). Returns runs of consecutive pad positions at or past
   * `past` that take consecutive rows of one item; counts must match (bad_request).
   */
  private planVision(ids: readonly number[], items: readonly VisionItem[], padId: number, kind: string, past: number): CopyRun[] {
    const merge = this.config.vision.spatialMergeSize;
    const slots: number[] = [];
    ids.forEach((id, i) => id === padId && slots.push(i));
    const runs = planImageRuns(
      slots,
      items,
      (it) => visionTokenCount([it.grid], merge),
      past,
      (tokens, rows) => `prompt has ${tokens} ${kind} pad tokens but the ${items.length} ${kind}(s) give ${rows} embeddings`,
    );
    // This model's runs address rows of the chunk after the cached prefix.
    return runs.map((r) => ({ item: r.item, srcRow: r.srcRow, dst: r.pos - past, rows: r.rows }));
  }

  /** Buffer copies of embedding rows into the token embeddings (no kernel). */
  private copyRuns(rec: Recorder, runs: CopyRun[], x: Tensor, source: (it: VisionItem) => { t: Tensor; row: number }): void {
    const rowBytes = this.config.text.hiddenSize * 4;
    for (const run of runs) {
      const { t, row } = source(run.item);
      rec.copy(
        { buffer: t.buffer, offset: t.offset + (row + run.srcRow) * rowBytes, size: run.rows * rowBytes },
        { buffer: x.buffer, offset: x.offset + run.dst * rowBytes, size: run.rows * rowBytes },
      );
    }
  }

  /** argmax and readback recorded after the forward, one submit, one map. */
  private finish(rec: Recorder, logits: Tensor, opts: StepOptions): Promise<StepResult> {
    return this.reader.finish(rec, logits, opts.read ?? "argmax", opts.keepLogits);
  }
}

/** The parts of `runs` (destinations relative to `past`) in chunk rows [lo, hi), re-based to lo. */
export function runsInChunk(runs: readonly CopyRun[], lo: number, hi: number): CopyRun[] {
  const out: CopyRun[] = [];
  for (const r of runs) {
    const a = Math.max(r.dst, lo);
    const b = Math.min(r.dst + r.rows, hi);
    if (a < b) out.push({ item: r.item, srcRow: r.srcRow + (a - r.dst), dst: a - lo, rows: b - a });
  }
  return out;
}

export interface CopyRun {
  item: VisionItem;
  /** First row within the item's embeddings. */
  srcRow: number;
  /** First destination row within this chunk (prompt position - past). */
  dst: number;
  rows: number;
}

/** Loads a Qwen2-VL checkpoint onto the GPU (see WeightLoadOptions for formats). */
export function loadQwen2VL(gpu: GpuContext, config: Qwen2VLConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Qwen2VLModel> {
  return Qwen2VLModel.load(gpu, config, source, opts);
}
