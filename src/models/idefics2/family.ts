// Idefics2 as a family behind the engine's contract (models/family.ts): its config parser, its
// media processor (split / resize / patches, <fake><image>x n<fake> expansion) and the model with
// its warm-up.
import type { CacheOptions } from "../common/step.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { ModelCache, ModelFamily, ModelPrefill, ModelStep, ModelStepOptions, PreparedMedia, ProcessorContext, VlmModel } from "../family.ts";
import { IDEFICS2_ARCHITECTURES, parseIdefics2Config, type Idefics2Config } from "./config.ts";
import { parseIdefics2Preprocess } from "./image_processor.ts";
import { Idefics2Cache, Idefics2Model, type Idefics2ImageItem } from "./model.ts";
import { Idefics2Processor, isIdefics2Payload } from "./processor.ts";
import { ownCache, stepOptions, warmUpPrefillDecode } from "../common/adapter.ts";

const FAKE_TOKEN = "<fake_token_around_image>";

function imageItem(m: PreparedMedia): Idefics2ImageItem {
  const p = m.payload;
  if (m.kind !== "image" || !isIdefics2Payload(p)) {
    throw new WebvlmError("internal", "idefics2: media was not prepared by this family's processor");
  }
  // Crops' rows are host values or the processor's GPU rows (read in place, released by the engine).
  return { crops: p.crops };
}

/** The processor for a checkpoint: image_seq_len must equal the resampler's latents (§4.3). */
export function createIdefics2Processor(c: Idefics2Config, ctx: ProcessorContext): Idefics2Processor {
  const fakeTokenId = ctx.addedTokenId(FAKE_TOKEN);
  if (fakeTokenId === undefined) {
    throw new WebvlmError("bad_request", `idefics2: the tokenizer has no ${FAKE_TOKEN} added token`, { token: FAKE_TOKEN });
  }
  const preprocess = parseIdefics2Preprocess(ctx.preprocessorConfig, ctx.processorConfig);
  if (preprocess.imageSeqLen !== c.perceiver.numLatents) {
    throw new WebvlmError(
      "bad_request",
      `processor_config.json: image_seq_len ${preprocess.imageSeqLen} != perceiver_config.resampler_n_latents ${c.perceiver.numLatents}`,
      { imageSeqLen: preprocess.imageSeqLen, resamplerNLatents: c.perceiver.numLatents },
    );
  }
  return new Idefics2Processor({ patchSize: c.vision.patchSize, imageSize: c.vision.imageSize, imageTokenId: c.imageTokenId, fakeTokenId, preprocess }, ctx.gpu);
}

/** The engine's view of an Idefics2Model. */
export class Idefics2Adapter implements VlmModel {
  constructor(readonly model: Idefics2Model) {}

  /** The last cache options asked for: the warm-up's throwaway cache uses them (same pipelines). */
  private cacheOptions: CacheOptions = {};

  createCache(maxSeq: number, opts: CacheOptions = {}): Idefics2Cache {
    this.cacheOptions = { kvDtype: opts.kvDtype };
    return this.model.createCache(maxSeq, opts);
  }

  async prefill(ids: readonly number[], media: readonly PreparedMedia[], cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelPrefill> {
    const r = await this.model.prefill(ids, media.map(imageItem), ownCache(cache, Idefics2Cache, "idefics2"), stepOptions(opts));
    return { tokenId: r.tokenId, logits: r.logits, reused: r.reused };
  }

  decode(id: number, cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelStep> {
    return this.model.decode(id, ownCache(cache, Idefics2Cache, "idefics2"), stepOptions(opts));
  }

  /**
   * One 3x3-patch crop (more rows than the GEMV path takes, so the vision GEMMs compile) in a
   * prompt of its image tokens and one text token, then one decode step: every pipeline compiled.
   */
  async warmUp(onStep?: (done: number, total: number) => void): Promise<void> {
    const c = this.model.config;
    const v = c.vision;
    onStep?.(0, 2);
    const patches = 9;
    const crop = {
      patchesH: 3,
      patchesW: 3,
      patchRows: new Float32Array(patches * v.numChannels * v.patchSize * v.patchSize),
      positionIds: new Int32Array(patches),
    };
    const L = c.perceiver.numLatents;
    const ids = [...new Array<number>(L).fill(c.imageTokenId), c.bosTokenId ?? 0];
    const cache = this.model.createCache(ids.length + 1, this.cacheOptions);
    await warmUpPrefillDecode(
      cache,
      (warmCache) => this.model.prefill(ids, [{ crops: [crop] }], warmCache, { read: "argmax" }),
      (warmCache) => this.model.decode(0, warmCache, { read: "argmax" }),
      onStep,
    );
  }

  dispose(): void {
    this.model.dispose();
  }
}

export const idefics2Family: ModelFamily<Idefics2Config> = {
  name: "idefics2",
  architectures: IDEFICS2_ARCHITECTURES,
  modelTypes: ["idefics2"],
  // §4.1: the template reads content only as parts; §4.4: the processor tokenizes with add_special_tokens (BOS).
  prompt: { stringContentAsParts: true, addSpecialTokens: true },
  parseConfig: parseIdefics2Config,
  maxPositions: (c) => c.text.maxPositionEmbeddings,
  eosTokenIds: (c) => c.eosTokenIds,
  createProcessor: createIdefics2Processor,
  load: async (gpu, c, source, opts) => new Idefics2Adapter(await Idefics2Model.load(gpu, c, source, opts)),
};
