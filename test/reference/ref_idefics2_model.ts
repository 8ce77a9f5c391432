// Config parsing and weight loading for the CPU reference of Idefics2
// (transformers: configuration_idefics2.py, modeling_idefics2.py; contract:
// /work/shared/IDEFICS2.md §2, §3, §9). Shares no code with src/.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Linear } from "./ref_math.ts";
import { readSafetensorsDir } from "./safetensors_min.ts";

export interface RefIdefics2VisionConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  headDim: number;
  numChannels: number;
  imageSize: number;
  patchSize: number;
  /** image_size // patch_size: positions per side of the position table. */
  patchesPerSide: number;
  hiddenAct: string;
  layerNormEps: number;
}

export interface RefIdefics2PerceiverConfig {
  /** After §2's override (= text hidden size whenever the file's value differs). */
  hiddenSize: number;
  /** After §2's override (the text's rms_norm_eps when hidden_size was overridden). */
  rmsNormEps: number;
  hiddenAct: string;
  nLatents: number;
  depth: number;
  numHeads: number;
  headDim: number;
  numKvHeads: number;
}

export interface RefIdefics2TextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  hiddenAct: string;
  rmsNormEps: number;
  ropeTheta: number;
  /** null = plain causal. */
  slidingWindow: number | null;
}

export interface RefIdefics2Config {
  vision: RefIdefics2VisionConfig;
  perceiver: RefIdefics2PerceiverConfig;
  text: RefIdefics2TextConfig;
  imageTokenId: number;
  /** Top-level or text_config tie_word_embeddings (either one ties the head). */
  tieWordEmbeddings: boolean;
  /** generation_config.eos_token_id (else text_config.eos_token_id, else 2). */
  eosTokenIds: number[];
  /** generation_config.bad_words_ids: single-id entries only (what Idefics2 ships). */
  badWordsIds: number[];
  /** processor_config.image_seq_len (default 64). */
  imageSeqLen: number;
  /** preprocessor_config.do_image_splitting (class default false). */
  doImageSplitting: boolean;
}

type Json = Record<string, unknown>;

const num = (o: Json, key: string, dflt: number): number => {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number") throw new Error(`reference: config ${key} is not a number`);
  return v;
};
const str = (o: Json, key: string, dflt: string): string => (typeof o[key] === "string" ? (o[key] as string) : dflt);
const ids = (v: unknown): number[] => (v === undefined || v === null ? [] : Array.isArray(v) ? (v as number[]) : [v as number]);

function readJsonIfPresent(path: string): Json | null {
  return existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as Json) : null;
}

/**
 * The four JSON files as transformers reads them, with the class defaults of §2 and the perceiver
 * override of Idefics2Config.__init__.
 */
export function parseIdefics2Config(config: Json, generation: Json | null = null, processor: Json | null = null, preprocessor: Json | null = null): RefIdefics2Config {
  const vc = (config.vision_config ?? {}) as Json;
  const pc = (config.perceiver_config ?? {}) as Json;
  const tc = (config.text_config ?? {}) as Json;

  const vHidden = num(vc, "hidden_size", 768);
  const vHeads = num(vc, "num_attention_heads", 12);
  const imageSize = num(vc, "image_size", 224);
  const patchSize = num(vc, "patch_size", 32);
  const vision: RefIdefics2VisionConfig = {
    hiddenSize: vHidden,
    intermediateSize: num(vc, "intermediate_size", 3072),
    numLayers: num(vc, "num_hidden_layers", 12),
    numHeads: vHeads,
    headDim: Math.floor(vHidden / vHeads),
    numChannels: num(vc, "num_channels", 3),
    imageSize,
    patchSize,
    patchesPerSide: Math.floor(imageSize / patchSize),
    hiddenAct: str(vc, "hidden_act", "gelu_pytorch_tanh"),
    layerNormEps: num(vc, "layer_norm_eps", 1e-6),
  };
  if (vision.headDim * vHeads !== vHidden) throw new Error(`reference: vision hidden ${vHidden} not divisible by ${vHeads} heads`);

  const tHidden = num(tc, "hidden_size", 4096);
  const tHeads = num(tc, "num_attention_heads", 32);
  const ropeParams = (tc.rope_parameters ?? {}) as Json;
  const text: RefIdefics2TextConfig = {
    vocabSize: num(tc, "vocab_size", 32000),
    hiddenSize: tHidden,
    intermediateSize: num(tc, "intermediate_size", 14336),
    numLayers: num(tc, "num_hidden_layers", 32),
    numHeads: tHeads,
    numKvHeads: tc.num_key_value_heads === null ? tHeads : num(tc, "num_key_value_heads", 8),
    headDim: num(tc, "head_dim", Math.floor(tHidden / tHeads)),
    hiddenAct: str(tc, "hidden_act", "silu"),
    // Idefics2Config builds a missing text_config with rms_norm_eps 1e-5 (MistralConfig's default is 1e-6).
    rmsNormEps: num(tc, "rms_norm_eps", config.text_config === undefined || config.text_config === null ? 1e-5 : 1e-6),
    ropeTheta: num(tc, "rope_theta", num(ropeParams, "rope_theta", 10000)),
    // MistralConfig: absent -> 4096, explicit null -> no window.
    slidingWindow: tc.sliding_window === null ? null : num(tc, "sliding_window", 4096),
  };

  let pHidden = num(pc, "hidden_size", 4096);
  let pEps = num(pc, "rms_norm_eps", 1e-6);
  if (pHidden !== text.hiddenSize) {
    pHidden = text.hiddenSize;
    pEps = text.rmsNormEps;
  }
  const perceiver: RefIdefics2PerceiverConfig = {
    hiddenSize: pHidden,
    rmsNormEps: pEps,
    hiddenAct: str(pc, "hidden_act", "silu"),
    nLatents: num(pc, "resampler_n_latents", 64),
    depth: num(pc, "resampler_depth", 3),
    numHeads: num(pc, "resampler_n_heads", 16),
    headDim: num(pc, "resampler_head_dim", 96),
    numKvHeads: num(pc, "num_key_value_heads", 4),
  };

  const gen = generation ?? {};
  const eos = ids(gen.eos_token_id);
  const bad = ((gen.bad_words_ids ?? []) as number[][]).map((seq) => {
    if (seq.length !== 1) throw new Error("reference: multi-token bad_words_ids are not supported");
    return seq[0];
  });
  return {
    vision,
    perceiver,
    text,
    imageTokenId: num(config, "image_token_id", 32001),
    tieWordEmbeddings: config.tie_word_embeddings === true || tc.tie_word_embeddings === true,
    eosTokenIds: eos.length > 0 ? eos : ids(tc.eos_token_id ?? 2),
    badWordsIds: bad,
    imageSeqLen: num(processor ?? {}, "image_seq_len", 64),
    doImageSplitting: (preprocessor ?? {}).do_image_splitting === true,
  };
}

export function loadIdefics2Config(dir: string): RefIdefics2Config {
  const config = readJsonIfPresent(join(dir, "config.json"));
  if (!config) throw new Error(`${dir}: no config.json`);
  return parseIdefics2Config(
    config,
    readJsonIfPresent(join(dir, "generation_config.json")),
    readJsonIfPresent(join(dir, "processor_config.json")),
    readJsonIfPresent(join(dir, "preprocessor_config.json")),
  );
}

// ---------------------------------------------------------------- weights

export interface RefNorm { weight: Float32Array; bias: Float32Array }

export interface RefIdefics2VisionLayer {
  layerNorm1: RefNorm;
  layerNorm2: RefNorm;
  q: Linear;
  k: Linear;
  v: Linear;
  out: Linear;
  fc1: Linear;
  fc2: Linear;
}

export interface RefIdefics2PerceiverLayer {
  inputLatentsNorm: Float32Array;
  inputContextNorm: Float32Array;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  postAttentionNorm: Float32Array;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export interface RefIdefics2TextLayer {
  inputNorm: Float32Array;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  postAttentionNorm: Float32Array;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export interface RefIdefics2Weights {
  /** Conv2d weight [D, C, p, p] viewed as a Linear [D, C*p*p] (patch flattened as (c, y, x)), with bias. */
  patchEmbed: Linear;
  positionEmbedding: Float32Array; // [nps*nps, D]
  visionLayers: RefIdefics2VisionLayer[];
  postLayerNorm: RefNorm;
  projGate: Linear;
  projUp: Linear;
  projDown: Linear;
  latents: Float32Array; // [L, H]
  perceiverLayers: RefIdefics2PerceiverLayer[];
  perceiverNorm: Float32Array;
  embedTokens: Float32Array; // [vocab, H]
  textLayers: RefIdefics2TextLayer[];
  textNorm: Float32Array;
  lmHead: Float32Array; // [vocab, H]; = embedTokens when tied
}

export type WeightTransform = (name: string, data: Float32Array, shape: number[]) => Float32Array;

/**
 * Reads model.safetensors (or the sharded index) under the names of §3, checking every shape.
 * `transform` sees every tensor once, before use (e.g. to round matrices to a quantized format).
 */
export function loadIdefics2Weights(dir: string, c: RefIdefics2Config, transform?: WeightTransform): { weights: RefIdefics2Weights; unused: string[] } {
  const tensors = readSafetensorsDir(dir);
  const used = new Set<string>();
  const get = (name: string, shape: number[]): Float32Array => {
    const t = tensors.get(name);
    if (!t) throw new Error(`reference: missing tensor ${name}`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`reference: ${name} has shape [${t.shape}], expected [${shape}]`);
    }
    used.add(name);
    return transform ? transform(name, t.data, [...t.shape]) : t.data;
  };
  const lin = (name: string, outDim: number, inDim: number, bias: boolean): Linear => ({
    weight: get(`${name}.weight`, [outDim, inDim]),
    bias: bias ? get(`${name}.bias`, [outDim]) : null,
    inDim,
    outDim,
  });
  const ln = (name: string, dim: number): RefNorm => ({ weight: get(`${name}.weight`, [dim]), bias: get(`${name}.bias`, [dim]) });

  const v = c.vision;
  const D = v.hiddenSize;
  const p = v.patchSize;
  const C = v.numChannels;
  const vp = "model.vision_model";
  const patchEmbed: Linear = {
    weight: get(`${vp}.embeddings.patch_embedding.weight`, [D, C, p, p]),
    bias: get(`${vp}.embeddings.patch_embedding.bias`, [D]),
    inDim: C * p * p,
    outDim: D,
  };
  const visionLayers: RefIdefics2VisionLayer[] = [];
  for (let i = 0; i < v.numLayers; i++) {
    const l = `${vp}.encoder.layers.${i}`;
    visionLayers.push({
      layerNorm1: ln(`${l}.layer_norm1`, D),
      layerNorm2: ln(`${l}.layer_norm2`, D),
      q: lin(`${l}.self_attn.q_proj`, D, D, true),
      k: lin(`${l}.self_attn.k_proj`, D, D, true),
      v: lin(`${l}.self_attn.v_proj`, D, D, true),
      out: lin(`${l}.self_attn.out_proj`, D, D, true),
      fc1: lin(`${l}.mlp.fc1`, v.intermediateSize, D, true),
      fc2: lin(`${l}.mlp.fc2`, D, v.intermediateSize, true),
    });
  }

  const t = c.text;
  const H = t.hiddenSize;
  const pr = c.perceiver;
  const PH = pr.hiddenSize;
  const cp = "model.connector";
  const perceiverLayers: RefIdefics2PerceiverLayer[] = [];
  for (let j = 0; j < pr.depth; j++) {
    const l = `${cp}.perceiver_resampler.layers.${j}`;
    perceiverLayers.push({
      inputLatentsNorm: get(`${l}.input_latents_norm.weight`, [PH]),
      inputContextNorm: get(`${l}.input_context_norm.weight`, [PH]),
      q: lin(`${l}.self_attn.q_proj`, pr.numHeads * pr.headDim, PH, false),
      k: lin(`${l}.self_attn.k_proj`, pr.numKvHeads * pr.headDim, PH, false),
      v: lin(`${l}.self_attn.v_proj`, pr.numKvHeads * pr.headDim, PH, false),
      o: lin(`${l}.self_attn.o_proj`, PH, pr.numHeads * pr.headDim, false),
      postAttentionNorm: get(`${l}.post_attention_layernorm.weight`, [PH]),
      gate: lin(`${l}.mlp.gate_proj`, 4 * PH, PH, false),
      up: lin(`${l}.mlp.up_proj`, 4 * PH, PH, false),
      down: lin(`${l}.mlp.down_proj`, PH, 4 * PH, false),
    });
  }

  const tp = "model.text_model";
  const textLayers: RefIdefics2TextLayer[] = [];
  for (let k = 0; k < t.numLayers; k++) {
    const l = `${tp}.layers.${k}`;
    textLayers.push({
      inputNorm: get(`${l}.input_layernorm.weight`, [H]),
      q: lin(`${l}.self_attn.q_proj`, t.numHeads * t.headDim, H, false),
      k: lin(`${l}.self_attn.k_proj`, t.numKvHeads * t.headDim, H, false),
      v: lin(`${l}.self_attn.v_proj`, t.numKvHeads * t.headDim, H, false),
      o: lin(`${l}.self_attn.o_proj`, H, t.numHeads * t.headDim, false),
      postAttentionNorm: get(`${l}.post_attention_layernorm.weight`, [H]),
      gate: lin(`${l}.mlp.gate_proj`, t.intermediateSize, H, false),
      up: lin(`${l}.mlp.up_proj`, t.intermediateSize, H, false),
      down: lin(`${l}.mlp.down_proj`, H, t.intermediateSize, false),
    });
  }
  const embedTokens = get(`${tp}.embed_tokens.weight`, [t.vocabSize, H]);
  let lmHead: Float32Array;
  if (c.tieWordEmbeddings) lmHead = embedTokens;
  else if (tensors.has("lm_head.weight")) lmHead = get("lm_head.weight", [t.vocabSize, H]);
  else throw new Error("reference: tie_word_embeddings is false but lm_head.weight is missing");

  const weights: RefIdefics2Weights = {
    patchEmbed,
    positionEmbedding: get(`${vp}.embeddings.position_embedding.weight`, [v.patchesPerSide * v.patchesPerSide, D]),
    visionLayers,
    postLayerNorm: ln(`${vp}.post_layernorm`, D),
    projGate: lin(`${cp}.modality_projection.gate_proj`, t.intermediateSize, D, false),
    projUp: lin(`${cp}.modality_projection.up_proj`, t.intermediateSize, D, false),
    projDown: lin(`${cp}.modality_projection.down_proj`, H, t.intermediateSize, false),
    latents: get(`${cp}.perceiver_resampler.latents`, [pr.nLatents, PH]),
    perceiverLayers,
    perceiverNorm: get(`${cp}.perceiver_resampler.norm.weight`, [PH]),
    embedTokens,
    textLayers,
    textNorm: get(`${tp}.norm.weight`, [H]),
    lmHead,
  };
  if (PH !== H) throw new Error(`reference: perceiver hidden ${PH} != text hidden ${H}`);
  return { weights, unused: [...tensors.keys()].filter((n) => !used.has(n)) };
}
