// A text-only family behind the engine's contract (models/family.ts), built from decoder traits:
// config parsing, a media processor that takes no media, and the DecoderModel with its warm-up.
// Qwen2, Mistral, Llama and Phi-3 are each one call of textOnlyFamily.
import type { CacheOptions } from "../common/step.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { MediaRef } from "../family.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { MediaProcessor, ModelCache, ModelFamily, ModelPrefill, ModelStep, ModelStepOptions, PreparedMedia, VlmModel } from "../family.ts";
import { isObj, parseDecoderConfig, specialIds, type DecoderConfig, type DecoderFamilyTraits } from "./config.ts";
import { DecoderCache, DecoderModel } from "./model.ts";
import { ownCache, stepOptions, warmUpPrefillDecode } from "../common/adapter.ts";

export interface TextOnlyConfig {
  architecture: string | null;
  decoder: DecoderConfig;
  eosTokenIds: number[];
  bosTokenId: number | null;
  padTokenId: number | null;
}

/** A text-only family's processor: no placeholders, and any image or video is unsupported_feature. */
export class NoMediaProcessor implements MediaProcessor {
  constructor(private readonly family: string) {}

  async prepare(refs: readonly MediaRef[]): Promise<PreparedMedia[]> {
    if (refs.length > 0) {
      throw new WebvlmError("unsupported_feature", `${this.family} is a text-only model: images and videos are not supported`, { media: refs.length });
    }
    return [];
  }

  placeholders(media: readonly PreparedMedia[]): MediaPlaceholder[] {
    if (media.length > 0) throw new WebvlmError("unsupported_feature", `${this.family} is a text-only model: images and videos are not supported`);
    return [];
  }
}

/** The engine's view of a DecoderModel. */
export class TextOnlyModel implements VlmModel {
  constructor(readonly model: DecoderModel, private readonly family: string) {}

  /** The last cache options asked for: the warm-up's throwaway cache uses them (same pipelines). */
  private cacheOptions: CacheOptions = {};

  createCache(maxSeq: number, opts: CacheOptions = {}): DecoderCache {
    this.cacheOptions = { kvDtype: opts.kvDtype };
    return this.model.createCache(maxSeq, opts);
  }

  prefill(ids: readonly number[], media: readonly PreparedMedia[], cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelPrefill> {
    if (media.length > 0) throw new WebvlmError("unsupported_feature", `${this.family} is a text-only model: images and videos are not supported`);
    return this.model.prefill(ids, ownCache(cache, DecoderCache, "decoder"), stepOptions(opts));
  }

  decode(id: number, cache: ModelCache, opts: ModelStepOptions = {}): Promise<ModelStep> {
    return this.model.decode(id, ownCache(cache, DecoderCache, "decoder"), stepOptions(opts));
  }

  /** A 2-token prefill and one decode step: every pipeline compiled. */
  async warmUp(onStep?: (done: number, total: number) => void): Promise<void> {
    onStep?.(0, 2);
    const cache = this.model.createCache(4, this.cacheOptions);
    await warmUpPrefillDecode(
      cache,
      (warmCache) => this.model.prefill([0, 0], warmCache, { read: "argmax" }),
      (warmCache) => this.model.decode(0, warmCache, { read: "argmax" }),
      onStep,
    );
  }

  dispose(): void {
    this.model.dispose();
  }
}

export interface TextFamilySpec {
  name: string;
  architectures: readonly string[];
  modelTypes: readonly string[];
  traits: DecoderFamilyTraits;
}

/** Rejects configs of other architectures (the registry only routes matching ones here). */
function architectureOf(json: unknown, spec: TextFamilySpec): string | null {
  if (!isObj(json)) return null;
  const archs = Array.isArray(json.architectures) ? json.architectures.filter((a): a is string => typeof a === "string") : [];
  const known = archs.find((a) => spec.architectures.includes(a)) ?? null;
  const modelType = typeof json.model_type === "string" ? json.model_type : undefined;
  if ((archs.length > 0 && !known) || (archs.length === 0 && modelType !== undefined && !spec.modelTypes.includes(modelType))) {
    throw new WebvlmError("unsupported_architecture", `${spec.name}: unsupported model: architectures ${JSON.stringify(archs)}, model_type ${JSON.stringify(modelType ?? null)}`, {
      architectures: archs,
      modelType,
    });
  }
  return known;
}

export function textOnlyFamily(spec: TextFamilySpec): ModelFamily<TextOnlyConfig> {
  return {
    name: spec.name,
    architectures: spec.architectures,
    modelTypes: spec.modelTypes,
    parseConfig(json, generationConfig) {
      const architecture = architectureOf(json, spec);
      const decoder = parseDecoderConfig(json, spec.traits);
      const ids = specialIds(json as Record<string, unknown>, generationConfig);
      return { architecture, decoder, eosTokenIds: ids.eos, bosTokenId: ids.bos, padTokenId: ids.pad };
    },
    maxPositions: (c) => c.decoder.maxPositionEmbeddings,
    eosTokenIds: (c) => c.eosTokenIds,
    createProcessor: () => new NoMediaProcessor(spec.name),
    load: async (gpu, c, source, opts) => new TextOnlyModel(await DecoderModel.load(gpu, c.decoder, source, opts), spec.name),
  };
}
