// Llama 3.2 Vision as a family behind the engine's contract (models/family.ts): its config parser,
// its media processor (tiles, aspect ratio ids; one <|image|> token per image, never expanded), its
// prompt builder, and the model with its warm-up.
import type { CacheOptions } from "../common/step.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { ModelCache, ModelFamily, ModelPrefill, ModelStep, ModelStepOptions, PreparedMedia, VlmModel } from "../family.ts";
import { MllamaCache } from "./cache.ts";
import { MLLAMA_ARCHITECTURES, parseMllamaConfig, type MllamaConfig } from "./config.ts";
import { MllamaModel, type MllamaImageItem } from "./model.ts";
import { createMllamaProcessor, isMllamaImagePayload } from "./processor.ts";
import { MLLAMA_PROMPT_STYLE } from "./prompt.ts";
import { ownCache, stepOptions, warmUpPrefillDecode } from "../common/adapter.ts";

function imageItem(m: PreparedMedia): MllamaImageItem {
  if (m.kind !== "image" || !isMllamaImagePayload(m.payload)) throw new WebvlmError("internal", "mllama: media was not prepared by this family's processor");
  const p = m.payload;
  return { pixelValues: p.pixelValues, aspectRatioId: p.aspectRatioId, numTiles: p.numTiles, hash: m.hash };
}

/** The engine's view of an MllamaModel. */
export class MllamaAdapter implements VlmModel {
  constructor(readonly model: MllamaModel) {}

  /** The last cache options asked for: the warm-up's throwaway cache uses them (same pipelines). */
  private cacheOptions: CacheOptions = {};

  createCache(maxSeq: number, opts: CacheOptions = {}): MllamaCache {
    this.cacheOptions = { kvDtype: opts.kvDtype };
    return this.model.createCache(maxSeq, opts);
  }

  async prefill(ids: readonly number[], media: readonly PreparedMedia[], cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelPrefill> {
    const r = await this.model.prefill(ids, media.map(imageItem), ownCache(cache, MllamaCache, "mllama"), stepOptions(opts));
    return { tokenId: r.tokenId, logits: r.logits, reused: r.reused };
  }

  decode(id: number, cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelStep> {
    return this.model.decode(id, ownCache(cache, MllamaCache, "mllama"), stepOptions(opts));
  }

  /**
   * One all-zero image (every tile runs, as always) in a three-token prompt, then one decode step:
   * the vision, cross K/V, prefill (GEMM) and decode (GEMV) pipelines all compiled.
   */
  async warmUp(onStep?: (done: number, total: number) => void): Promise<void> {
    const c = this.model.config;
    const v = c.vision;
    onStep?.(0, 2);
    const image: MllamaImageItem = {
      pixelValues: new Float32Array(v.maxNumTiles * v.numChannels * v.tileSize * v.tileSize),
      aspectRatioId: 1,
      numTiles: 1,
      hash: "warm-up",
    };
    const ids = [c.bosTokenId ?? 0, c.imageTokenId, c.bosTokenId ?? 0];
    const cache = this.model.createCache(ids.length + 1, this.cacheOptions);
    await warmUpPrefillDecode(
      cache,
      (warmCache) => this.model.prefill(ids, [image], warmCache, { read: "argmax" }),
      (warmCache) => this.model.decode(0, warmCache, { read: "argmax" }),
      onStep,
    );
  }

  dispose(): void {
    this.model.dispose();
  }
}

export const mllamaFamily: ModelFamily<MllamaConfig> = {
  name: "mllama",
  architectures: MLLAMA_ARCHITECTURES,
  modelTypes: ["mllama"],
  // §5: non-system string content as a text part, system kept a string, no tokenizer BOS (prompt.ts).
  prompt: MLLAMA_PROMPT_STYLE,
  parseConfig: parseMllamaConfig,
  maxPositions: (c) => c.text.maxPositionEmbeddings,
  eosTokenIds: (c) => c.eosTokenIds,
  createProcessor: (c, ctx) =>
    createMllamaProcessor({ imageTokenId: c.imageTokenId, tileSize: c.vision.tileSize, maxNumTiles: c.vision.maxNumTiles, numAspectRatios: c.vision.aspectRatios.length, patchSize: c.vision.patchSize }, ctx),
  load: async (gpu, c, source, opts) => new MllamaAdapter(await MllamaModel.load(gpu, c, source, opts)),
};
