// Phi-3.5-vision as a family behind the engine's contract (models/family.ts): its config parser,
// its media processor (HD transform, num_crops, <|image|> placeholders), its prompt builder
// (numbered <|image_k|> tags, chunks tokenized separately) and the model with its warm-up.
import type { CacheOptions } from "../common/step.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { ModelCache, ModelFamily, ModelPrefill, ModelStep, ModelStepOptions, PreparedMedia, ProcessorContext, VlmModel } from "../family.ts";
import { PHI3V_ARCHITECTURES, PHI3V_PATCH_DIM, parsePhi3VConfig, type Phi3VConfig } from "./config.ts";
import { parsePhi3VPreprocess } from "./image_processor.ts";
import { Phi3VCache, Phi3VModel } from "./model.ts";
import { isPhi3VPayload, Phi3VProcessor } from "./processor.ts";
import { PHI3V_PROMPT_STYLE } from "./prompt.ts";
import { phi3VImageTokens, type Phi3VImageItem } from "./vision.ts";
import { ownCache, stepOptions, warmUpPrefillDecode } from "../common/adapter.ts";

const IMAGE_TOKEN = "<|image|>";

/**
 * The tokenizer's <|image|> id per config, as createProcessor found it: the model's placeholder
 * positions carry it (the engine creates the processor before the model runs a prompt).
 */
const imageTokenIds = new WeakMap<Phi3VConfig, number>();

function imageItem(m: PreparedMedia): Phi3VImageItem {
  const p = m.payload;
  if (m.kind !== "image" || !isPhi3VPayload(p)) {
    throw new WebvlmError("internal", "phi3_v: media was not prepared by this family's processor");
  }
  // Patch rows on the CPU or the GPU (a tensor the model copies from; the engine releases it).
  return { hc: p.hc, wc: p.wc, numImgTokens: p.numImgTokens, patchRows: p.patchRows };
}

/** The processor for a checkpoint: <|image|> from the tokenizer's added tokens (bad_request when absent). */
export function createPhi3VProcessor(c: Phi3VConfig, ctx: ProcessorContext): Phi3VProcessor {
  const imageTokenId = ctx.addedTokenId(IMAGE_TOKEN);
  if (imageTokenId === undefined) {
    throw new WebvlmError("bad_request", `phi3_v: the tokenizer has no ${IMAGE_TOKEN} added token (the image placeholder)`, { token: IMAGE_TOKEN });
  }
  if (imageTokenId >= c.text.vocabSize) {
    throw new WebvlmError("bad_request", `phi3_v: ${IMAGE_TOKEN} id ${imageTokenId} outside the vocabulary (${c.text.vocabSize})`, { token: IMAGE_TOKEN, id: imageTokenId });
  }
  imageTokenIds.set(c, imageTokenId);
  // Given the engine's device, images are preprocessed on the GPU (the CPU path is the fallback).
  return new Phi3VProcessor({ imageTokenId, preprocess: parsePhi3VPreprocess(ctx.preprocessorConfig) }, ctx.gpu);
}

/** The engine's view of a Phi3VModel. */
export class Phi3VAdapter implements VlmModel {
  constructor(readonly model: Phi3VModel) {}

  /** The last cache options asked for: the warm-up's throwaway cache uses them (same pipelines). */
  private cacheOptions: CacheOptions = {};

  createCache(maxSeq: number, opts: CacheOptions = {}): Phi3VCache {
    this.cacheOptions = { kvDtype: opts.kvDtype };
    return this.model.createCache(maxSeq, opts);
  }

  async prefill(ids: readonly number[], media: readonly PreparedMedia[], cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelPrefill> {
    this.syncImageToken();
    const r = await this.model.prefill(ids, media.map(imageItem), ownCache(cache, Phi3VCache, "phi3_v"), stepOptions(opts));
    return { tokenId: r.tokenId, logits: r.logits, reused: r.reused };
  }

  async decode(id: number, cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelStep> {
    const r = await this.model.decode(id, ownCache(cache, Phi3VCache, "phi3_v"), stepOptions(opts));
    return { tokenId: r.tokenId, logits: r.logits };
  }

  /**
   * One 1x1-crop image (2 tiles: every vision pipeline) in a prompt of its placeholders between two
   * text tokens, then one decode step: every pipeline compiled.
   */
  async warmUp(onStep?: (done: number, total: number) => void): Promise<void> {
    this.syncImageToken();
    onStep?.(0, 2);
    const numImgTokens = phi3VImageTokens(1, 1);
    const item: Phi3VImageItem = { hc: 1, wc: 1, numImgTokens, patchRows: new Float32Array(2 * 576 * PHI3V_PATCH_DIM) };
    const bos = this.model.config.bosTokenId ?? 1;
    const ids = [bos, ...new Array<number>(numImgTokens).fill(this.model.imageToken), bos];
    const cache = this.model.createCache(ids.length + 1, this.cacheOptions);
    await warmUpPrefillDecode(
      cache,
      (warmCache) => this.model.prefill(ids, [item], warmCache, { read: "argmax" }),
      (warmCache) => this.model.decode(0, warmCache, { read: "argmax" }),
      onStep,
    );
  }

  dispose(): void {
    this.model.dispose();
  }

  private syncImageToken(): void {
    this.model.imageToken = imageTokenIds.get(this.model.config) ?? this.model.config.imageTokenId;
  }
}

export const phi3VFamily: ModelFamily<Phi3VConfig> = {
  name: "phi3_v",
  architectures: PHI3V_ARCHITECTURES,
  modelTypes: ["phi3_v"],
  // §5: numbered <|image_k|> tags; every chunk between tags tokenized with its own <s> (prompt.ts).
  prompt: PHI3V_PROMPT_STYLE,
  parseConfig: parsePhi3VConfig,
  maxPositions: (c) => c.text.maxPositionEmbeddings,
  eosTokenIds: (c) => c.eosTokenIds,
  createProcessor: createPhi3VProcessor,
  load: async (gpu, c, source, opts) => new Phi3VAdapter(await Phi3VModel.load(gpu, c, source, opts)),
};
