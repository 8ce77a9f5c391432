// Independent CPU reference of Qwen2-VL (Qwen2VLForConditionalGeneration),
// written from huggingface/transformers src/transformers/models/qwen2_vl/
// modeling_qwen2_vl.py. It shares no code with the runtime (nothing from src/).
//
// Numerics: f32 storage (Float32Array; every stored tensor is rounded to f32
// like torch float32), f64 accumulation of dot products, norm sums and
// softmax. Batch size 1, no padding / attention mask, greedy decoding only.
//
// Layout:
//   safetensors_min.ts  checkpoint reader (F32/F16/BF16 -> Float32Array)
//   ref_math.ts         erf, activations, linear, LayerNorm, RMSNorm, rotary, attention
//   ref_model.ts        config.json parsing, tensor naming, weight loading
//   ref_vision.ts       vision tower (patch embed, 2-D rotary, cu_seqlens attention, merger)
//   ref_rope_index.ts   get_rope_index (3-row M-RoPE positions, rope delta)
//   ref_text.ts         Qwen2 decoder with M-RoPE, KV cache, lm_head
//   this file           embedding merge and greedy generation

import { getRopeIndex } from "./ref_rope_index.ts";
import type { RefModel } from "./ref_model.ts";
import { embedTokens, RefKVCache, textForward } from "./ref_text.ts";
import { visionForward, type Grid } from "./ref_vision.ts";

export { erf, erfc, gelu, quickGelu, silu, rotateHalf, applyRotaryInPlace, ropeInvFreq, rmsNorm, layerNorm, linear } from "./ref_math.ts";
export { buildReferenceModel, canonicalTensorName, loadReferenceModel, parseConfig } from "./ref_model.ts";
export type { RefConfig, RefModel, RefTextConfig, RefVisionConfig } from "./ref_model.ts";
export { getRopeIndex, type RopeIndex } from "./ref_rope_index.ts";
export { embedTokens, lmHead, mropeCosSin, RefKVCache, textForward, type TextForwardOptions } from "./ref_text.ts";
export { visionCuSeqlens, visionForward, visionPatchPositions, visionRotaryCosSin, type Grid } from "./ref_vision.ts";
export { readSafetensorsDir, readSafetensorsFile, type RefTensor } from "./safetensors_min.ts";

/**
 * masked_scatter of vision embeddings into the token embeddings: the k-th
 * occurrence of tokenId (default <|image_pad|>) in inputIds receives row k of
 * visionEmbeds. Throws when the number of such tokens differs from the rows.
 * Returns a new [L, hidden] array.
 */
export function mergeImageEmbeds(
  model: RefModel, inputIds: number[], inputsEmbeds: Float32Array, visionEmbeds: Float32Array,
  tokenId: number = model.config.imageTokenId,
): Float32Array {
  const h = model.config.text.hiddenSize;
  const rows = visionEmbeds.length / h;
  const slots = inputIds.reduce<number[]>((acc, id, i) => (id === tokenId ? [...acc, i] : acc), []);
  if (slots.length !== rows) {
    throw new Error(`Image features and image tokens do not match: tokens: ${slots.length}, features ${rows}`);
  }
  const out = Float32Array.from(inputsEmbeds);
  slots.forEach((pos, k) => out.set(visionEmbeds.subarray(k * h, (k + 1) * h), pos * h));
  return out;
}

/** torch.argmax: index of the first maximum. */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

export interface GenerateOptions {
  /** Video patch rows and their grids (<|video_pad|> tokens), if any. */
  videoPixelValues?: Float32Array;
  videoGrids?: Grid[];
}

export interface GenerateResult {
  /** Generated ids (an eos id, when reached, is included as the last one, as HF generate returns it). */
  tokens: number[];
  /** Logits of the last prompt position [vocab]. */
  firstLogits: Float32Array;
  /** rope delta of the prompt (from getRopeIndex). */
  ropeDelta: number;
}

/**
 * Greedy generation as Qwen2VLForConditionalGeneration.generate does it with
 * top_k 1: prefill the prompt (vision embeddings merged in, positions from
 * get_rope_index), then one token at a time at cache index i with position
 * i + rope_delta on all three rows, until an eos id or maxNewTokens.
 */
export function greedyGenerate(
  model: RefModel, inputIds: number[], pixelValues: Float32Array | null, grids: Grid[],
  maxNewTokens: number, eosIds: number[], options: GenerateOptions = {},
): GenerateResult {
  let embeds = embedTokens(model, inputIds);
  if (pixelValues && grids.length > 0) {
    embeds = mergeImageEmbeds(model, inputIds, embeds, visionForward(model, pixelValues, grids), model.config.imageTokenId);
  } else if (inputIds.includes(model.config.imageTokenId)) {
    throw new Error("Image features and image tokens do not match: no pixel values for <|image_pad|> tokens");
  }
  const videoGrids = options.videoGrids ?? [];
  if (options.videoPixelValues && videoGrids.length > 0) {
    const videoEmbeds = visionForward(model, options.videoPixelValues, videoGrids);
    embeds = mergeImageEmbeds(model, inputIds, embeds, videoEmbeds, model.config.videoTokenId);
  } else if (inputIds.includes(model.config.videoTokenId)) {
    throw new Error("Video features and video tokens do not match: no pixel values for <|video_pad|> tokens");
  }
  const { positions, ropeDelta } = getRopeIndex(inputIds, pixelValues ? grids : [], model.config, videoGrids);

  const cache = new RefKVCache(model.config.text.numLayers);
  const firstLogits = textForward(model, embeds, positions, cache, { lastOnly: true });
  const tokens: number[] = [];
  let logits = firstLogits;
  while (tokens.length < maxNewTokens) {
    const next = argmax(logits);
    tokens.push(next);
    if (eosIds.includes(next) || tokens.length >= maxNewTokens) break;
    const p = cache.length + ropeDelta;
    logits = textForward(model, embedTokens(model, [next]), [[p], [p], [p]], cache, { lastOnly: true });
  }
  return { tokens, firstLogits, ropeDelta };
}
