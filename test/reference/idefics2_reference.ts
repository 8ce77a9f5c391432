// Independent CPU reference of Idefics2 (Idefics2ForConditionalGeneration), written from
// /work/shared/IDEFICS2.md and transformers' modeling_idefics2.py / processing_idefics2.py. It
// shares no code with the runtime (nothing from src/); it starts where transformers' model starts,
// from pixel_values [N, 3, Hmax, Wmax] + pixel_attention_mask [N, Hmax, Wmax] (image
// preprocessing, §5, is not here), and from prompt text for the prompt ids (§4.3-4.4, through
// the checkpoint's tokenizer.json run by @huggingface/tokenizers, a third-party library).
//
// Numerics: f32 storage (every stored tensor rounded to f32 like torch float32), f64 accumulation
// of dot products, norm sums and softmax (as the Qwen2-VL reference, ref_math.ts). Masked keys
// (finfo.min) are left out of softmax: their weight is exactly 0 in f32.
//
// Layout:
//   ref_idefics2_model.ts      config.json & co. (defaults, §2 perceiver override), weights by §3 names
//   ref_idefics2_vision.ts     padding-image drop, patch mask, bucketed positions, SigLIP encoder
//   ref_idefics2_connector.ts  modality projection + perceiver resampler
//   ref_idefics2_text.ts       merge, Mistral decoder with sliding window and KV cache, lm_head
//   this file                  prompt expansion/tokenization, the loaded reference, greedy generation

import { Tokenizer } from "@huggingface/tokenizers";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { connectorForward } from "./ref_idefics2_connector.ts";
import { loadIdefics2Config, loadIdefics2Weights, type RefIdefics2Config, type RefIdefics2Weights, type WeightTransform } from "./ref_idefics2_model.ts";
import { embedIds, lmHeadRow, mergeImageFeatures, RefIdefics2Cache, textForward } from "./ref_idefics2_text.ts";
import { dropPaddingImages, visionForward } from "./ref_idefics2_vision.ts";

export { parseIdefics2Config, loadIdefics2Config, loadIdefics2Weights } from "./ref_idefics2_model.ts";
export type { RefIdefics2Config, RefIdefics2PerceiverConfig, RefIdefics2TextConfig, RefIdefics2VisionConfig, RefIdefics2Weights, WeightTransform } from "./ref_idefics2_model.ts";
export { bucketBoundaries, bucketCoords, dropPaddingImages, geluTanh, patchAttentionMask, visionPositionIds } from "./ref_idefics2_vision.ts";
export { modalityProjection, perceiverResampler } from "./ref_idefics2_connector.ts";
export { embedIds, mergeImageFeatures, RefIdefics2Cache, textForward } from "./ref_idefics2_text.ts";

const FAKE = "<fake_token_around_image>";
const IMAGE = "<image>";

/**
 * §4.3 (Idefics2Processor.__call__): every `<image>` becomes F I×n F (×5 when splitting), then
 * doubled F's collapse; both are plain non-overlapping left-to-right replaces (Python str.replace).
 */
export function expandIdefics2Prompt(text: string, imageSeqLen: number, split: boolean): string {
  let imageStr = FAKE + IMAGE.repeat(imageSeqLen) + FAKE;
  if (split) imageStr = imageStr.repeat(5);
  return text.split(IMAGE).join(imageStr).split(FAKE + FAKE).join(FAKE);
}

/** log_softmax of f32 logits (f64 arithmetic). */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const l of logits) if (l > max) max = l;
  let sum = 0;
  for (const l of logits) sum += Math.exp(l - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(logits, (l) => l - lse);
}

/** §9: argmax with the bad-word ids set to -inf (first index on ties). */
export function greedyPick(logits: Float32Array, badWordsIds: readonly number[]): number {
  let best = -1;
  let bestValue = -Infinity;
  const bad = new Set(badWordsIds);
  for (let i = 0; i < logits.length; i++) {
    if (bad.has(i)) continue;
    if (best < 0 || logits[i] > bestValue) {
      best = i;
      bestValue = logits[i];
    }
  }
  return best;
}

export interface Idefics2GenerateResult {
  /** Generated ids; an eos id, when reached, is the last one (it is emitted, as HF generate does). */
  tokens: number[];
  /** log_softmax of the raw logits at each chosen id. */
  logprobs: number[];
}

export interface Idefics2Reference {
  config: RefIdefics2Config;
  weights: RefIdefics2Weights;
  /** Tensors in the checkpoint that the reference did not read (e.g. lm_head.weight of a tied checkpoint). */
  unusedTensors: string[];
  /**
   * Vision tower + connector (§6-7): pixel values [n, 3, hMax, wMax] and pixel attention mask
   * [n, hMax, wMax] (nonzero = valid) -> [N*L, H] for the N non-padding images, in order.
   */
  imageFeatures(pixelValues: Float32Array, pixelAttentionMask: ArrayLike<number>, n: number, hMax: number, wMax: number): Float32Array;
  /** post_layernorm output [N*S, D] (S = (hMax//p)*(wMax//p), all patches) for debugging. */
  visionHidden(pixelValues: Float32Array, pixelAttentionMask: ArrayLike<number>, n: number, hMax: number, wMax: number): Float32Array;
  /** Full forward of the prompt (no cache reuse); logits [vocab] of the last position. */
  logits(ids: number[], imageFeatures?: Float32Array | null): Float32Array;
  /** Greedy generation (§9) with a KV cache: bad_words_ids masked in the choice, logprobs from raw logits, eos stops. */
  generate(ids: number[], imageFeatures: Float32Array | null | undefined, maxTokens: number): Idefics2GenerateResult;
  /** §4.3 expansion (processor image_seq_len, preprocessor do_image_splitting) + tokenization with add_special_tokens. */
  promptIds(text: string): number[];
  /** decode(ids, skip_special_tokens=true) with the checkpoint's tokenizer. */
  decode(ids: number[]): string;
}

export interface LoadIdefics2ReferenceOptions {
  /** Sees every tensor once before use (e.g. rounds matrices to q8/q4 values); returns the values to use. */
  transform?: WeightTransform;
}

/** Loads config, weights and tokenizer of an Idefics2 checkpoint directory. */
export function loadIdefics2Reference(dir: string, opts: LoadIdefics2ReferenceOptions = {}): Idefics2Reference {
  const config = loadIdefics2Config(dir);
  const { weights, unused } = loadIdefics2Weights(dir, config, opts.transform);
  let tokenizer: Tokenizer | null = null;
  const tok = (): Tokenizer => {
    if (!tokenizer) {
      const tj = join(dir, "tokenizer.json");
      if (!existsSync(tj)) throw new Error(`${dir}: no tokenizer.json`);
      const tcPath = join(dir, "tokenizer_config.json");
      const tc = existsSync(tcPath) ? JSON.parse(readFileSync(tcPath, "utf8")) : {};
      tokenizer = new Tokenizer(JSON.parse(readFileSync(tj, "utf8")), tc);
    }
    return tokenizer;
  };

  const vision = (pixelValues: Float32Array, mask: ArrayLike<number>, n: number, hMax: number, wMax: number) =>
    visionForward(config, weights, dropPaddingImages(pixelValues, mask, n, config.vision.numChannels, hMax, wMax), hMax, wMax);

  const prefill = (ids: number[], imageFeatures: Float32Array | null | undefined, cache: RefIdefics2Cache): Float32Array => {
    if (ids.length === 0) throw new Error("reference: empty prompt");
    const embeds = mergeImageFeatures(config, ids, embedIds(config, weights, ids), imageFeatures ?? null);
    return lmHeadRow(config, weights, textForward(config, weights, embeds, cache, ids.length - 1));
  };

  return {
    config,
    weights,
    unusedTensors: unused,
    imageFeatures(pixelValues, pixelAttentionMask, n, hMax, wMax) {
      const v = vision(pixelValues, pixelAttentionMask, n, hMax, wMax);
      return connectorForward(config, weights, v.hidden, v.patchMask, v.count);
    },
    visionHidden(pixelValues, pixelAttentionMask, n, hMax, wMax) {
      return vision(pixelValues, pixelAttentionMask, n, hMax, wMax).hidden;
    },
    logits(ids, imageFeatures) {
      return prefill(ids, imageFeatures, new RefIdefics2Cache(config.text.numLayers));
    },
    generate(ids, imageFeatures, maxTokens) {
      const cache = new RefIdefics2Cache(config.text.numLayers);
      const tokens: number[] = [];
      const logprobs: number[] = [];
      if (maxTokens <= 0) return { tokens, logprobs };
      let logits = prefill(ids, imageFeatures, cache);
      for (;;) {
        const next = greedyPick(logits, config.badWordsIds);
        tokens.push(next);
        logprobs.push(logSoftmax(logits)[next]);
        if (config.eosTokenIds.includes(next) || tokens.length >= maxTokens) break;
        // Decode steps embed the id plainly (no image features after prefill).
        logits = lmHeadRow(config, weights, textForward(config, weights, embedIds(config, weights, [next]), cache));
      }
      return { tokens, logprobs };
    },
    promptIds(text) {
      const expanded = expandIdefics2Prompt(text, config.imageSeqLen, config.doImageSplitting);
      return [...tok().encode(expanded, { add_special_tokens: true }).ids];
    },
    decode(ids) {
      return tok().decode(ids, { skip_special_tokens: true });
    },
  };
}
