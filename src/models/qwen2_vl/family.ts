// Qwen2-VL as a family behind the engine's contract (models/family.ts): its config parser, its
// media processor (smart_resize + patchify, image/video pads) and the model with its warm-up.
import type { CacheOptions } from "../common/step.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { MediaRef } from "../family.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { ModelCache, ModelFamily, ModelPrefill, ModelStep, ModelStepOptions, PreparedMedia, VlmModel } from "../family.ts";
import { parseQwen2VLConfig, QWEN2VL_ARCHITECTURES, type Qwen2VLConfig } from "./config.ts";
import type { PreprocessOptions } from "./image_processor.ts";
import { checkpointPreprocess, prepareMedia, type Qwen2VLMedia } from "./media.ts";
import { Qwen2VLCache, Qwen2VLModel, type VisionItem } from "./model.ts";
import { ownCache, stepOptions, warmUpPrefillDecode } from "../common/adapter.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { isTensor } from "../../gpu/tensor.ts";
import { GpuPreprocessor } from "../../vision/gpu_preprocess.ts";

class Qwen2VLProcessor {
  private readonly gpu: GpuPreprocessor | undefined;

  constructor(
    private readonly config: Qwen2VLConfig,
    private readonly defaults: PreprocessOptions,
    gpu?: () => GpuContext,
  ) {
    this.gpu = gpu ? new GpuPreprocessor(gpu) : undefined;
  }

  prepare(refs: readonly MediaRef[], signal?: AbortSignal): Promise<Qwen2VLMedia[]> {
    return prepareMedia(refs, this.defaults, this.config.vision, signal, this.gpu);
  }

  dispose(): void {
    this.gpu?.dispose();
  }

  placeholders(media: readonly PreparedMedia[]): MediaPlaceholder[] {
    const counts = (kind: "image" | "video"): number[] => media.filter((m) => m.kind === kind).map((m) => m.tokens);
    return [
      { kind: "image", tokenId: this.config.imageTokenId, counts: counts("image") },
      { kind: "video", tokenId: this.config.videoTokenId, counts: counts("video") },
    ];
  }
}

function visionItem(m: PreparedMedia): VisionItem {
  const p = m.payload as Qwen2VLMedia["payload"] | undefined;
  if (!p || !(p.pixelValues instanceof Float32Array || isTensor(p.pixelValues)) || !Array.isArray(p.grid)) {
    throw new WebvlmError("internal", "qwen2_vl: media was not prepared by this family's processor");
  }
  return { grid: p.grid, pixelValues: p.pixelValues };
}

/** The engine's view of a Qwen2VLModel. */
class Qwen2VLAdapter implements VlmModel {
  constructor(readonly model: Qwen2VLModel) {}

  /** The last cache options asked for: the warm-up's throwaway cache uses them (same pipelines). */
  private cacheOptions: CacheOptions = {};

  createCache(maxSeq: number, opts: CacheOptions = {}): Qwen2VLCache {
    this.cacheOptions = { kvDtype: opts.kvDtype };
    return this.model.createCache(maxSeq, opts);
  }

  async prefill(ids: readonly number[], media: readonly PreparedMedia[], cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelPrefill> {
    const items = (kind: "image" | "video"): VisionItem[] => media.filter((m) => m.kind === kind).map(visionItem);
    const r = await this.model.prefill(ids, { images: items("image"), videos: items("video") }, ownCache(cache, Qwen2VLCache, "qwen2_vl"), stepOptions(opts));
    return { tokenId: r.tokenId, logits: r.logits, reused: r.reused };
  }

  async decode(id: number, cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelStep> {
    const r = await this.model.decode(id, ownCache(cache, Qwen2VLCache, "qwen2_vl"), stepOptions(opts));
    return { tokenId: r.tokenId, logits: r.logits };
  }

  /** A 3-token prompt holding one smallest image, then one decode step: every pipeline compiled. */
  async warmUp(onStep?: (done: number, total: number) => void): Promise<void> {
    const c = this.model.config;
    onStep?.(0, 2);
    const m = c.vision.spatialMergeSize;
    const grid: [number, number, number] = [1, m, m];
    const patchWidth = c.vision.inChannels * c.vision.temporalPatchSize * c.vision.patchSize * c.vision.patchSize;
    const cache = this.model.createCache(8, this.cacheOptions);
    const ids = [c.visionStartTokenId, c.imageTokenId, c.visionEndTokenId];
    await warmUpPrefillDecode(
      cache,
      (warmCache) => this.model.prefill(ids, { images: [{ grid, pixelValues: new Float32Array(m * m * patchWidth) }] }, warmCache, { read: "argmax" }),
      (warmCache) => this.model.decode(c.visionEndTokenId, warmCache, { read: "argmax" }),
      onStep,
    );
  }

  dispose(): void {
    this.model.dispose();
  }
}

export const qwen2VLFamily: ModelFamily<Qwen2VLConfig> = {
  name: "qwen2_vl",
  architectures: QWEN2VL_ARCHITECTURES,
  modelTypes: ["qwen2_vl"],
  parseConfig: parseQwen2VLConfig,
  maxPositions: (c) => c.text.maxPositionEmbeddings ?? 32768,
  eosTokenIds: (c) => c.eosTokenIds,
  createProcessor: (c, ctx) => new Qwen2VLProcessor(c, checkpointPreprocess(ctx.preprocessorConfig), ctx.gpu),
  load: async (gpu, c, source, opts) => new Qwen2VLAdapter(await Qwen2VLModel.load(gpu, c, source, opts)),
};
