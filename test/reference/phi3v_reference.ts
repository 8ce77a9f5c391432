// Independent CPU reference of Phi-3.5-vision (Phi3VForCausalLM, model_type "phi3_v"), written
// from /work/shared/PHI3V.md and the checkpoint's remote code (modeling_phi3_v.py,
// image_embedding_phi3_v.py, processing_phi3_v.py). It shares no code with the runtime (nothing
// from src/); the model starts from each image's pixel values (global view first, then the hc·wc tiles,
// [3, 336, 336] each, as Phi3VImageProcessor gives them) and image_size, and from prompt ids or
// messages (tokenized by @huggingface/tokenizers on the checkpoint's tokenizer.json, third-party);
// preprocess() makes those pixel values from 8-bit RGB for end-to-end checks.
//
// Image positions: an id marks an image position when -1e9 < id < 0 (the processor's -k) or
// id === 32044 (`<|image|>`, the runtime's placeholder). The images' features fill those
// positions in sequence order, image after image; everything else is embedded as a token.
//
// Numerics: f32 storage, f64 accumulation (ref_math.ts). Masked keys are left out of softmax.
//
// Layout:
//   ref_phi3v_model.ts   config.json & co., CLIP sizes from tensors, weights by §2 names
//   ref_phi3v_vision.ts  CLIP tower, HD assembly, projection; num_img_tokens
//   ref_phi3v_text.ts    embedding merge, Phi-3 decoder with su/longrope and the KV cache
//   ref_phi3v_prompt.ts  message parts -> tags, chat template, per-chunk tokenization
//   ref_phi3v_image.ts   §3 HD transform from 8-bit RGB (Pillow bilinear, white pad, torch bicubic)
//   this file            the loaded reference and greedy generation with §6's recompute rule
import { Tokenizer } from "@huggingface/tokenizers";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadPhi3VModel, type Phi3VWeightTransform, type RefPhi3VConfig, type RefPhi3VWeights } from "./ref_phi3v_model.ts";
import { phi3vPreprocess, type Phi3VProcessedImage, type RefRgbImage } from "./ref_phi3v_image.ts";
import { phi3vPromptIds, renderPhi3VChat, type Phi3VRefMessage } from "./ref_phi3v_prompt.ts";
import { decoderForward, embedIds, factorsForLength, isImagePosition, mergeImageFeatures, RefPhi3VCache, type RopeFactors } from "./ref_phi3v_text.ts";
import { clipImageTiles, phi3vImageFeatures, phi3vNumImageTokens } from "./ref_phi3v_vision.ts";

export { loadPhi3VModel, parsePhi3VConfig, phi3vAttentionScaling, PHI3V_IMAGE_TOKEN_ID } from "./ref_phi3v_model.ts";
export type { Phi3VWeightTransform, RefPhi3VConfig, RefPhi3VRope, RefPhi3VWeights } from "./ref_phi3v_model.ts";
export { assembleHd, clipTileFeatures, phi3vNumImageTokens, projectImage, tileGrid } from "./ref_phi3v_vision.ts";
export { decoderForward, embedIds, factorsForLength, isImagePosition, mergeImageFeatures, phi3vInvFreq, RefPhi3VCache } from "./ref_phi3v_text.ts";
export type { RopeFactors } from "./ref_phi3v_text.ts";
export { phi3vChatMessages, phi3vPromptIds, renderPhi3VChat } from "./ref_phi3v_prompt.ts";
export { hdScale, hdTargetSize, hdTransform, phi3vPreprocess, pillowBilinearResize, torchBicubicTo336 } from "./ref_phi3v_image.ts";
export type { Phi3VProcessedImage, RefRgbImage } from "./ref_phi3v_image.ts";
export type { Phi3VRefMessage } from "./ref_phi3v_prompt.ts";

/** One image as the processor gives it: [(1 + hc·wc), 3, 336, 336] (global first) and [H, W]. */
export interface Phi3VRefImage {
  pixelValues: Float32Array;
  imageSize: [number, number];
}

/** An image, or its already projected features [num_img_tokens, hidden]. */
export type Phi3VRefImageInput = Phi3VRefImage | Float32Array;

export interface Phi3VLogitsOptions {
  /** Factors to use instead of §6's choice by length (T > O -> long). */
  factors?: RopeFactors;
  /** Embed image positions as token id 0 (§6's recompute quirk) instead of the images' features. */
  imagesAsToken0?: boolean;
}

export interface Phi3VGenerateResult {
  /** Generated ids; an eos id, when reached, is the last one. */
  tokens: number[];
  /** log_softmax of the raw f32 logits at each chosen id. */
  logprobs: number[];
  /** Sequence length L = O + 1 at which the cache was dropped and recomputed, or null. */
  recomputedAt: number | null;
}

export interface Phi3VReference {
  config: RefPhi3VConfig;
  weights: RefPhi3VWeights;
  /** Tensors of the checkpoint the reference did not read (post_layernorm, CLIP layers past layer_idx). */
  unusedTensors: string[];
  /** §3 Phi3VImageProcessor on 8-bit RGB (num_crops defaults to preprocessor_config's). */
  preprocess(image: RefRgbImage, numCrops?: number): Phi3VProcessedImage;
  /** §3.6 token count of an image of size [H, W]. */
  numImageTokens(imageSize: [number, number]): number;
  /** CLIP features [576, C] (hidden_states[layer_idx], no CLS) of each used tile, global first. */
  clipFeatures(pixelValues: Float32Array, imageSize: [number, number]): Float32Array[];
  /** Projected image features [num_img_tokens, hidden]. */
  imageFeatures(pixelValues: Float32Array, imageSize: [number, number]): Float32Array;
  /** Input embeddings [ids.length, hidden] after the merge. */
  embed(ids: readonly number[], images?: readonly Phi3VRefImageInput[], opts?: Phi3VLogitsOptions): Float32Array;
  /** A fresh full forward over ids (no cache reuse); the last position's logits [vocab]. */
  logits(ids: readonly number[], images?: readonly Phi3VRefImageInput[], opts?: Phi3VLogitsOptions): Float32Array;
  /** Greedy generation (§7) with a KV cache and §6's recompute at L = O + 1; stops at eos ids or maxTokens. */
  generate(ids: readonly number[], images: readonly Phi3VRefImageInput[] | null | undefined, maxTokens: number): Phi3VGenerateResult;
  /** §5 chat rendering of OpenAI-shaped messages (tags, template, generation prompt). */
  renderChat(messages: readonly Phi3VRefMessage[]): string;
  /**
   * §5 prompt ids from messages or rendered text; counts[k−1] = image k's token count. Image
   * positions hold -k (processor) unless `placeholder` gives an id (e.g. 32044).
   */
  promptIds(input: string | readonly Phi3VRefMessage[], counts: readonly number[], placeholder?: number | "negative"): number[];
  /** decode(ids, skip_special_tokens=true). */
  decode(ids: readonly number[]): string;
}

export interface LoadPhi3VReferenceOptions {
  transform?: Phi3VWeightTransform;
}

/** log_softmax of f32 logits (f64 arithmetic). */
export function logSoftmaxAt(logits: Float32Array, index: number): number {
  let max = -Infinity;
  for (const l of logits) if (l > max) max = l;
  let sum = 0;
  for (const l of logits) sum += Math.exp(l - max);
  return logits[index] - max - Math.log(sum);
}

/** Greedy pick: first index of the maximum. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** Loads config, weights and tokenizer of a Phi-3.5-vision checkpoint directory. */
export function loadPhi3VReference(dir: string, opts: LoadPhi3VReferenceOptions = {}): Phi3VReference {
  const { config, weights, unused } = loadPhi3VModel(dir, opts.transform);
  const tokenizerConfigPath = join(dir, "tokenizer_config.json");
  const tokenizerConfig = (existsSync(tokenizerConfigPath) ? JSON.parse(readFileSync(tokenizerConfigPath, "utf8")) : {}) as Record<string, unknown>;
  let tokenizer: Tokenizer | null = null;
  const tok = (): Tokenizer => {
    if (!tokenizer) tokenizer = new Tokenizer(JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")), tokenizerConfig);
    return tokenizer;
  };

  const features = (images: readonly Phi3VRefImageInput[]): Float32Array[] =>
    images.map((im) => (im instanceof Float32Array ? im : phi3vImageFeatures(config, weights, im.pixelValues, im.imageSize)));

  const embedWith = (ids: readonly number[], imageFeatures: readonly Float32Array[] | null): Float32Array => {
    const e = embedIds(config, weights, ids);
    return imageFeatures === null ? e : mergeImageFeatures(config, ids, e, imageFeatures);
  };

  const embed = (ids: readonly number[], images: readonly Phi3VRefImageInput[] = [], o: Phi3VLogitsOptions = {}): Float32Array =>
    embedWith(ids, o.imagesAsToken0 ? null : features(images));

  const renderChat = (messages: readonly Phi3VRefMessage[]): string => {
    const template = tokenizerConfig.chat_template;
    if (typeof template !== "string") throw new Error(`reference: ${dir}: tokenizer_config.json has no chat_template`);
    const special: Record<string, string> = {};
    for (const k of ["bos_token", "eos_token", "pad_token", "unk_token"]) if (typeof tokenizerConfig[k] === "string") special[k] = tokenizerConfig[k] as string;
    return renderPhi3VChat(template, messages, special);
  };

  return {
    config,
    weights,
    unusedTensors: unused,
    preprocess: (image, numCrops) => phi3vPreprocess(image, numCrops ?? config.numCrops, config.imageMean, config.imageStd),
    numImageTokens: (imageSize) => phi3vNumImageTokens(imageSize),
    clipFeatures: (pixelValues, imageSize) => clipImageTiles(config, weights, pixelValues, imageSize),
    imageFeatures: (pixelValues, imageSize) => phi3vImageFeatures(config, weights, pixelValues, imageSize),
    embed,
    logits(ids, images = [], o = {}) {
      if (ids.length === 0) throw new Error("reference: empty prompt");
      const cache = new RefPhi3VCache(config.layers, config.kvHeads);
      return decoderForward(config, weights, embed(ids, images, o), cache, o.factors);
    },
    generate(ids, images, maxTokens) {
      if (ids.length === 0) throw new Error("reference: empty prompt");
      const O = config.rope.originalMax;
      const seq = [...ids];
      let cache = new RefPhi3VCache(config.layers, config.kvHeads);
      const tokens: number[] = [];
      const logprobs: number[] = [];
      let recomputedAt: number | null = null;
      if (maxTokens <= 0) return { tokens, logprobs, recomputedAt };
      // Prefill: one pass, factors by the prompt length.
      let logits = decoderForward(config, weights, embedWith(seq, features(images ?? [])), cache);
      for (;;) {
        const next = argmax(logits);
        tokens.push(next);
        logprobs.push(logSoftmaxAt(logits, next));
        if (config.eosTokenIds.includes(next) || tokens.length >= maxTokens) break;
        seq.push(next);
        const L = seq.length;
        if (config.rope.type !== null && L >= O + 1 && cache.length <= O) {
          // prepare_inputs_for_generation drops the cache; the recompute embeds the (clamped)
          // image positions as id 0, so image features are gone from here on.
          recomputedAt = L;
          cache = new RefPhi3VCache(config.layers, config.kvHeads);
          const e = new Float32Array(L * config.hidden);
          e.set(embedIds(config, weights, ids));
          e.set(embedIds(config, weights, seq.slice(ids.length), true), ids.length * config.hidden);
          logits = decoderForward(config, weights, e, cache);
        } else {
          logits = decoderForward(config, weights, embedIds(config, weights, [next], true), cache, factorsForLength(config, L));
        }
      }
      return { tokens, logprobs, recomputedAt };
    },
    renderChat,
    promptIds(input, counts, placeholder = "negative") {
      const text = typeof input === "string" ? input : renderChat(input);
      return phi3vPromptIds(tok(), text, counts, placeholder);
    },
    decode(ids) {
      return tok().decode([...ids], { skip_special_tokens: true });
    },
  };
}
