// The contract between the engine and a model family. The engine, the worker, the API and
// generation see only these types (and registry.ts); everything a family knows — its config
// spelling, its image processor, its placeholder tokens, its tensors and its forward — stays in
// its folder. Adding a family is one folder and one line in registry.ts.
import type { GpuContext } from "../gpu/device.ts";
import type { WeightFormat } from "../quant/formats.ts";
import { buildChatPrompt, type ChatMessage, type ChatPrompt, type ChatTemplate, type MediaPlaceholder, type RenderOptions } from "../tokenizer/chat_template.ts";
import type { TextTokenizer } from "../tokenizer/tokenizer.ts";
import type { TensorSource, WeightLoadOptions } from "./common/source.ts";

/**
 * A content part's own size controls (min_pixels, max_pixels, resized_height, resized_width,
 * num_crops): validated by the request layer, interpreted by the family's processor (those
 * without such rules ignore them).
 */
export interface MediaSizeOptions {
  minPixels?: number;
  maxPixels?: number;
  resizedHeight?: number;
  resizedWidth?: number;
  /** Phi-3-vision's HD transform: most 336x336 crops (default: preprocessor_config.json's num_crops). */
  numCrops?: number;
  /** Video files only (qwen_vl_utils fetch_video): sampling rate (default 2) or an exact frame count. */
  fps?: number;
  nframes?: number;
  minFrames?: number;
  maxFrames?: number;
  /** Video files only: the pixel budget of all sampled frames together (default 24576*28*28). */
  totalPixels?: number;
  /** Video files only: the seconds to read (torchvision read_video's start_pts/end_pts). */
  videoStart?: number;
  videoEnd?: number;
  /** Video files only: called after each decoded frame (decoded, total). Not carried to a worker. */
  onVideoProgress?: (decoded: number, total: number) => void;
}

/** One image or video part of a request, in prompt order, before the family's processor. */
export interface MediaRef {
  kind: "image" | "video";
  /** URL string, bytes, or a browser image object (video: an array of those, one per frame) */
  source: unknown;
  options: MediaSizeOptions;
}

/** One image or video of a request after the family's processor: an opaque per-family payload. */
export interface PreparedMedia {
  kind: "image" | "video";
  /** Content key of the processed pixels: equal hashes mean equal embeddings (KV prefix reuse). */
  hash: string;
  /** Placeholder tokens this item occupies in the prompt (0 for families that read images by cross-attention). */
  tokens: number;
  /** The family's own data (pixel values, grids, tiles, masks); only the family reads it. */
  payload: unknown;
  /** Where its pixels were processed: "gpu" (payload holds GPU tensors) or "cpu" (the default). */
  device?: PreprocessDevice;
  /** Frees what the payload holds on the GPU (idempotent); the engine calls it once the prefill is done. */
  release?(): void;
}

/**
 * Where a processor does its pixel work: "gpu" runs decode-to-GPU, resize, normalize and
 * tiling/patchify in WGSL (bit-identical to the CPU path) and hands the model GPU tensors;
 * "cpu" is the TypeScript path (the reference, and the fallback for what the GPU path cannot do).
 */
export type PreprocessDevice = "gpu" | "cpu";

/** What a family's processor reads besides config.json: the processor files and the tokenizer's added tokens. */
export interface ProcessorContext {
  /** preprocessor_config.json ({} when absent). */
  preprocessorConfig: Record<string, unknown>;
  /** processor_config.json ({} when absent), e.g. Idefics2's image_seq_len. */
  processorConfig: Record<string, unknown>;
  /** The id of an added token by its content (e.g. "<fake_token_around_image>"), when the tokenizer has it. */
  addedTokenId(content: string): number | undefined;
  /**
   * The device for GPU preprocessing (a getter: the engine may replace a lost device), or
   * undefined for the CPU path. A processor given one uses it by default and falls back to the
   * CPU per item where the GPU path cannot run (e.g. a buffer past the device's limits).
   */
  gpu?: () => GpuContext;
}

/** A family's image/video processor, configured from the checkpoint's processor files (ProcessorContext). */
export interface MediaProcessor {
  /** Decodes and preprocesses every media part of a request, in prompt order. */
  prepare(refs: readonly MediaRef[], signal?: AbortSignal): Promise<PreparedMedia[]>;
  /**
   * Placeholder tokens the chat prompt expands, one entry per token kind (the family's pad id and
   * each item's count). Also keys the KV-cache prefix: pad positions are keyed by content hash.
   */
  placeholders(media: readonly PreparedMedia[]): MediaPlaceholder[];
  /** Frees what the processor keeps on the GPU (its normalize tables); the engine calls it on unload. */
  dispose?(): void;
}

/** What a forward reads back: the greedy id, the logits of the last position, or both. */
export type ReadMode = "argmax" | "logits" | "both";

export interface ModelStepOptions {
  read?: ReadMode;
  /**
   * The request's abort signal. A prefill runs in chunks of at most PREFILL_CHUNK_TOKENS tokens
   * (models/common/step.ts), one submit each, and checks the signal between chunks (throwing
   * WebvlmError "aborted" and leaving the cache at its length before the call).
   */
  signal?: AbortSignal;
  /**
   * Prefill progress: called after each chunk but the last has run on the GPU, with the prompt
   * tokens computed so far and the number to compute (the engine reports the end).
   */
  onPrefillProgress?: (done: number, total: number) => void;
}

export interface ModelStep {
  /** argmax of the logits (first maximum), when read. */
  tokenId: number | null;
  /** Logits of the last position [vocab], when read. */
  logits: Float32Array | null;
}

export interface ModelPrefill extends ModelStep {
  /** Prompt tokens that were already in the cache. */
  reused: number;
}

/** A model's KV state: truncate(n) keeps the first n tokens (the common prefix of the next turn). */
export interface ModelCache {
  readonly length: number;
  readonly maxSeq: number;
  truncate(n: number): void;
  dispose(): void;
  /** GPU bytes the cache holds now (allocated; it grows as the chat grows) and the bytes its cached tokens fill. */
  memory?(): { allocatedBytes: number; usedBytes: number };
}

/** A loaded model, as the engine drives it. */
export interface VlmModel {
  /**
   * A cache for up to maxSeq tokens (allocated small and grown as the chat grows). kvDtype: the
   * KV cache's element type, "f32" when absent (the engine passes LoadOptions.kvCache); a model's
   * warm-up afterwards compiles the pipelines of the kvDtype last asked for here.
   */
  createCache(maxSeq: number, opts?: { kvDtype?: "f16" | "f32" }): ModelCache;
  /** Runs the prompt tokens not already in `cache` (it holds a prefix of `ids`) with their media. */
  prefill(ids: readonly number[], media: readonly PreparedMedia[], cache: ModelCache, opts?: ModelStepOptions): Promise<ModelPrefill>;
  decode(id: number, cache: ModelCache, opts?: ModelStepOptions): Promise<ModelStep>;
  /** Compiles every pipeline a request needs (vision, prefill, decode); `onStep(done, total)`. */
  warmUp(onStep?: (done: number, total: number) => void): Promise<void>;
  dispose(): void;
}

/**
 * Messages -> prompt ids (and the expanded text): render the template, tokenize, expand the media
 * placeholders. buildChatPrompt (tokenizer/chat_template.ts) is the default; a family whose
 * processor builds prompts differently (Phi-3-vision's numbered image tags, tokenized chunk by
 * chunk) gives its own.
 */
export type PromptBuilder = (
  tokenizer: TextTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  media: readonly MediaPlaceholder[],
  opts: RenderOptions,
) => ChatPrompt;

/** How a family's processor turns the rendered chat template into ids. */
export interface PromptStyle {
  /** Its chat templates read message content only as parts (Idefics2): a string becomes one text part. */
  stringContentAsParts?: boolean;
  /**
   * Tokenize the rendered prompt with the tokenizer's post-processor (BOS), as processors that call
   * tokenizer(text) on the rendered template do (Idefics2); false when the template writes the BOS.
   */
  addSpecialTokens?: boolean;
  /** The family's own prompt builder (default buildChatPrompt); it receives the two flags above in opts. */
  build?: PromptBuilder;
}

/** Weight formats by part; families map their tensors onto these three. */
export interface FormatChoice {
  textLinear: WeightFormat;
  embedding: WeightFormat;
  vision: WeightFormat;
}

/** A family bound to one checkpoint's config: what the engine holds after resolving config.json. */
export interface OpenedFamily {
  readonly family: string;
  /** The text model's max_position_embeddings (the engine's context-length cap). */
  readonly maxPositions: number;
  /** config.json's eos_token_id(s) (generation_config.json's win in the engine); may be empty. */
  readonly eosTokenIds: readonly number[];
  /** How the family's processor builds a prompt from its chat template (PromptStyle). */
  readonly prompt: Required<PromptStyle>;
  createProcessor(ctx: ProcessorContext): MediaProcessor;
  load(gpu: GpuContext, source: TensorSource, opts: WeightLoadOptions & Partial<FormatChoice>): Promise<VlmModel>;
}

/** A model family: config parser, media processor and model builder over its typed config C. */
export interface ModelFamily<C> {
  /** Family name, e.g. "qwen2_vl". */
  readonly name: string;
  /** config.json `architectures` entries it accepts. */
  readonly architectures: readonly string[];
  /** config.json `model_type` values it accepts. */
  readonly modelTypes: readonly string[];
  parseConfig(configJson: unknown, generationConfig?: unknown): C;
  maxPositions(config: C): number;
  /** config.json's eos ids, when the family's config carries them. */
  eosTokenIds?(config: C): readonly number[];
  /** How its processor builds a prompt (default: both false, as Qwen2-VL and the text families). */
  readonly prompt?: PromptStyle;
  createProcessor(config: C, ctx: ProcessorContext): MediaProcessor;
  load(gpu: GpuContext, config: C, source: TensorSource, opts: WeightLoadOptions & Partial<FormatChoice>): Promise<VlmModel>;
}

/** A family with its config type hidden, as the registry lists it. */
export interface RegisteredFamily {
  readonly name: string;
  readonly architectures: readonly string[];
  readonly modelTypes: readonly string[];
  open(configJson: unknown, generationConfig?: unknown): OpenedFamily;
}

/** Erases a family's config type: the config is parsed once and bound into the opened family. */
export function registerFamily<C>(f: ModelFamily<C>): RegisteredFamily {
  return {
    name: f.name,
    architectures: f.architectures,
    modelTypes: f.modelTypes,
    open(configJson, generationConfig) {
      const config = f.parseConfig(configJson, generationConfig);
      return {
        family: f.name,
        maxPositions: f.maxPositions(config),
        eosTokenIds: f.eosTokenIds?.(config) ?? [],
        prompt: {
          stringContentAsParts: f.prompt?.stringContentAsParts ?? false,
          addSpecialTokens: f.prompt?.addSpecialTokens ?? false,
          build: f.prompt?.build ?? buildChatPrompt,
        },
        createProcessor: (ctx) => f.createProcessor(config, ctx),
        load: (gpu, source, opts) => f.load(gpu, config, source, opts),
      };
    },
  };
}
