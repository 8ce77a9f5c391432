// Independent CPU reference of Llama 3.2 Vision (MllamaForConditionalGeneration), written from
// /work/shared/MLLAMA.md and transformers' modeling_mllama.py / processing_mllama.py (the authority
// where they differ). It shares no code with the runtime (nothing from src/); it starts where
// transformers' model starts, from pixel_values [num_images, T, 3, tile, tile], aspect_ratio_ids
// [num_images] and aspect_ratio_mask [num_images, T] as the processor gives them (image
// preprocessing, §3, is not here), and from prompt text for the prompt ids (§5: the checkpoint's
// chat template through @huggingface/jinja, its tokenizer.json through @huggingface/tokenizers).
//
// Numerics: f32 storage, f64 accumulation of dot products, norm sums and softmax (ref_math.ts).
// Masked keys (finfo.min) are left out of softmax: their weight is exactly 0 in f32.
//
// Layout:
//   ref_mllama_model.ts   config.json & co. (class defaults), weights under either §2 layout
//   ref_mllama_vision.ts  §4: tile embeddings, padded sequence and its mask, local/global layers, taps
//   ref_mllama_text.ts    §6 cross-attention mask, §7 decoder with self/cross layers, §8 cache
//   this file             prompt rendering/tokenization, the loaded reference, greedy generation

import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { buildMllamaWeights, loadMllamaConfig, loadMllamaWeights, type MllamaTensorLayout, type RefMllamaConfig, type RefMllamaWeights, type WeightTransform } from "./ref_mllama_model.ts";
import { crossAttentionDenseMask, crossAttentionRows, embedTokens, lmHeadRow, RefMllamaCache, textForward, type CrossAttentionRow } from "./ref_mllama_text.ts";
import { projectVisionFeatures, visionImageForward } from "./ref_mllama_vision.ts";
import type { RefTensor } from "./safetensors_min.ts";

export { buildMllamaWeights, detectMllamaLayout, loadMllamaConfig, loadMllamaWeights, mllamaFileName, parseMllamaConfig } from "./ref_mllama_model.ts";
export type {
  MllamaTensorLayout, RefMllamaConfig, RefMllamaCrossLayer, RefMllamaSelfLayer, RefMllamaTextConfig, RefMllamaVisionConfig,
  RefMllamaVisionLayer, RefMllamaVisionWeights, RefMllamaWeights, WeightTransform,
} from "./ref_mllama_model.ts";
export { gateTanh, projectVisionFeatures, visionAttentionMask, visionImageForward, visionPaddingFlags, type MllamaVisionImageOutput } from "./ref_mllama_vision.ts";
export {
  crossAttentionDenseMask, crossAttentionRows, crossAttentionSpans, embedTokens, lmHeadRow, mllamaInvFreq, RefMllamaCache, textForward,
  type CrossAttentionRow,
} from "./ref_mllama_text.ts";

/** log-sum-exp of f32 logits (f64 arithmetic). */
export function mllamaLogSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/** log_softmax of f32 logits (f64 arithmetic). */
export function mllamaLogSoftmax(logits: Float32Array): Float64Array {
  const lse = mllamaLogSumExp(logits);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** argmax, first index on ties (torch.argmax). */
export function mllamaArgmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export type MllamaContentPart = { type: "text"; text: string } | { type: "image" } | { type: "image_url"; image_url: { url: string } };
export interface MllamaChatMessage { role: string; content: string | MllamaContentPart[] }

export interface MllamaRenderOptions {
  /** Default true. */
  addGenerationPrompt?: boolean;
  /** Sets the template's date_string (otherwise strftime_now of the renderer, i.e. today). */
  dateString?: string;
}

export interface MllamaGenerateResult {
  /** Generated ids; an eos id, when reached, is the last one (it is emitted, as HF generate does). */
  tokens: number[];
  /** log_softmax of the raw logits at each chosen id. */
  logprobs: number[];
}

export interface MllamaReference {
  config: RefMllamaConfig;
  weights: RefMllamaWeights;
  layout: MllamaTensorLayout;
  /** Tensors in the checkpoint that the reference did not read. */
  unusedTensors: string[];
  /**
   * §4 without the projector: [numImages * T * P, D*(K+1)] (global output, then taps interleaved).
   * pixelValues [numImages, T, C, tile, tile], aspectRatioIds [numImages], aspectRatioMask [numImages, T].
   */
  visionFeatures(pixelValues: Float32Array, aspectRatioIds: ArrayLike<number>, aspectRatioMask: ArrayLike<number>, numImages: number): Float32Array;
  /** §4 + projector: cross_states [numImages * T * P, text hidden] in order image, tile, patch. */
  crossStates(pixelValues: Float32Array, aspectRatioIds: ArrayLike<number>, aspectRatioMask: ArrayLike<number>, numImages: number): Float32Array;
  /**
   * Full forward of ids (no cache reuse) with the §6 mask from the ids; logits [vocab] of the last
   * position. crossStates null (and numTilesPerImage []) = text-only request: cross layers skipped.
   */
  logits(ids: number[], crossStates: Float32Array | null, numTilesPerImage: readonly number[]): Float32Array;
  /** Greedy generation (§8): prefill, cross K/V once, generated tokens reuse the last prompt mask row; eos stops. */
  generate(ids: number[], crossStates: Float32Array | null, numTilesPerImage: readonly number[], maxTokens: number): MllamaGenerateResult;
  /** §5: the checkpoint's chat template rendered with @huggingface/jinja (image_url -> image, string content -> a text part). */
  renderPrompt(messages: MllamaChatMessage[], opts?: MllamaRenderOptions): string;
  /** §5: the rendered text tokenized with special tokens recognised, no BOS added. */
  promptIds(text: string): number[];
  /** decode(ids, skip_special_tokens=true) with the checkpoint's tokenizer. */
  decode(ids: number[]): string;
}

export interface LoadMllamaReferenceOptions {
  /** Sees every tensor once (under its name in the file) before use, e.g. to round matrices to q8/q4. */
  transform?: WeightTransform;
  /** The directory's tensors already read (readSafetensorsDir), to load variants without re-reading. */
  tensors?: Map<string, RefTensor>;
}

type Json = Record<string, unknown>;
const readJson = (path: string): Json | null => (existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as Json) : null);

/** chat_template.json (what the processor renders), else tokenizer_config.json, else chat_template.jinja. */
function readChatTemplate(dir: string): string {
  const fromProcessor = readJson(join(dir, "chat_template.json"))?.chat_template;
  if (typeof fromProcessor === "string") return fromProcessor;
  const fromTokenizer = readJson(join(dir, "tokenizer_config.json"))?.chat_template;
  if (typeof fromTokenizer === "string") return fromTokenizer;
  const jinja = join(dir, "chat_template.jinja");
  if (existsSync(jinja)) return readFileSync(jinja, "utf8");
  throw new Error(`${dir}: no chat template`);
}

function tokenText(v: unknown, dflt: string): string {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  return dflt;
}

/** Loads config, weights, tokenizer and chat template of a Llama 3.2 Vision checkpoint directory. */
export function loadMllamaReference(dir: string, opts: LoadMllamaReferenceOptions = {}): MllamaReference {
  const config = loadMllamaConfig(dir);
  const { weights, unused, layout } = opts.tensors ? buildMllamaWeights(config, opts.tensors, opts.transform) : loadMllamaWeights(dir, config, opts.transform);
  const v = config.vision;
  const T = v.maxNumTiles;
  const P = v.numPatches;
  let tokenizer: Tokenizer | null = null;
  const tokenizerConfig = (): Json => readJson(join(dir, "tokenizer_config.json")) ?? {};
  const tok = (): Tokenizer => {
    if (!tokenizer) {
      const tj = readJson(join(dir, "tokenizer.json"));
      if (!tj) throw new Error(`${dir}: no tokenizer.json`);
      tokenizer = new Tokenizer(tj, tokenizerConfig());
    }
    return tokenizer;
  };

  const visionFeatures = (pixelValues: Float32Array, aspectRatioIds: ArrayLike<number>, aspectRatioMask: ArrayLike<number>, numImages: number): Float32Array => {
    const per = T * v.numChannels * v.tileSize * v.tileSize;
    if (pixelValues.length !== numImages * per) throw new Error(`reference: pixel_values has ${pixelValues.length} values, expected ${numImages} x ${per}`);
    if (aspectRatioIds.length !== numImages || aspectRatioMask.length !== numImages * T) throw new Error("reference: aspect_ratio_ids / aspect_ratio_mask do not match num_images");
    const out = new Float32Array(numImages * T * P * v.outputDim);
    for (let i = 0; i < numImages; i++) {
      const maskRow = Array.from({ length: T }, (_, t) => aspectRatioMask[i * T + t]);
      const r = visionImageForward(config, weights, pixelValues.subarray(i * per, (i + 1) * per), aspectRatioIds[i], maskRow);
      out.set(r.features, i * T * P * v.outputDim);
    }
    return out;
  };

  /** The §6 rows of the prompt, or null for a text-only request. */
  const maskRows = (ids: number[], crossStates: Float32Array | null, numTilesPerImage: readonly number[]): CrossAttentionRow[] | null => {
    if (crossStates === null) {
      if (ids.includes(config.imageTokenId)) throw new Error("reference: <|image|> in the prompt but no vision states");
      return null;
    }
    const N = numTilesPerImage.length;
    if (crossStates.length !== N * T * P * config.text.hiddenSize) throw new Error(`reference: cross states of ${crossStates.length} values for ${N} images`);
    return crossAttentionRows(crossAttentionDenseMask(ids, config.imageTokenId, numTilesPerImage, T), ids.length, N, T, P);
  };

  const prefill = (ids: number[], crossStates: Float32Array | null, numTilesPerImage: readonly number[], cache: RefMllamaCache): Float32Array => {
    if (ids.length === 0) throw new Error("reference: empty prompt");
    const rows = maskRows(ids, crossStates, numTilesPerImage);
    if (rows) cache.lastRow = rows[rows.length - 1];
    const h = textForward(config, weights, embedTokens(config, weights, ids), cache, rows ? { states: crossStates, rows } : null);
    return lmHeadRow(config, weights, h);
  };

  return {
    config,
    weights,
    layout,
    unusedTensors: unused,
    visionFeatures,
    crossStates(pixelValues, aspectRatioIds, aspectRatioMask, numImages) {
      const features = visionFeatures(pixelValues, aspectRatioIds, aspectRatioMask, numImages);
      return projectVisionFeatures(weights, features, numImages * T * P);
    },
    logits(ids, crossStates, numTilesPerImage) {
      return prefill(ids, crossStates, numTilesPerImage, new RefMllamaCache(config.text.numLayers));
    },
    generate(ids, crossStates, numTilesPerImage, maxTokens) {
      const cache = new RefMllamaCache(config.text.numLayers);
      const tokens: number[] = [];
      const logprobs: number[] = [];
      if (maxTokens <= 0) return { tokens, logprobs };
      let logits = prefill(ids, crossStates, numTilesPerImage, cache);
      for (;;) {
        const next = mllamaArgmax(logits);
        tokens.push(next);
        logprobs.push(logits[next] - mllamaLogSumExp(logits));
        if (config.eosTokenIds.includes(next) || tokens.length >= maxTokens) break;
        // Decode steps: cached cross K/V (no states needed), the last prompt row (§6.5).
        const cross = cache.lastRow ? { states: null, rows: [cache.lastRow] } : null;
        logits = lmHeadRow(config, weights, textForward(config, weights, embedTokens(config, weights, [next]), cache, cross));
      }
      return { tokens, logprobs };
    },
    renderPrompt(messages, o = {}) {
      const template = new Template(readChatTemplate(dir));
      const mapped = messages.map((m) => {
        if (typeof m.content === "string") return m.role === "system" ? m : { role: m.role, content: [{ type: "text", text: m.content }] };
        return { role: m.role, content: m.content.map((p) => (p.type === "image_url" ? { type: "image" } : p)) };
      });
      const context: Record<string, unknown> = {
        messages: mapped,
        bos_token: tokenText(tokenizerConfig().bos_token, "<|begin_of_text|>"),
        add_generation_prompt: o.addGenerationPrompt ?? true,
      };
      if (o.dateString !== undefined) context.date_string = o.dateString;
      return template.render(context);
    },
    promptIds(text) {
      return [...tok().encode(text, { add_special_tokens: false }).ids];
    },
    decode(ids) {
      return tok().decode(ids, { skip_special_tokens: true });
    },
  };
}
