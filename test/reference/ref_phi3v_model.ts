// Phi-3.5-vision reference: config.json / preprocessor / generation config and the checkpoint's
// weights under modeling_phi3_v.py's names (PHI3V.md §1-§2). CLIP sizes come from the tensors
// (the remote code hard-codes ViT-L/14-336): width from patch_embedding, depth from the highest
// layer index present, MLP size from fc1, heads = width / 64.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Linear } from "./ref_math.ts";
import { readSafetensorsDir } from "./safetensors_min.ts";

/** Sees every tensor once before use (e.g. rounds matrices to q8/q4 values); returns the values to use. */
export type Phi3VWeightTransform = (name: string, data: Float32Array, shape: number[]) => Float32Array;

export interface RefPhi3VRope {
  /** "su" and "longrope" are the same scheme; null = plain RoPE (no rope_scaling). */
  type: "su" | "longrope" | null;
  theta: number;
  shortFactor: number[] | null;
  longFactor: number[] | null;
  /** O: the factor switch length. */
  originalMax: number;
  /** M. */
  maxPositions: number;
  /** s = sqrt(1 + ln(M/O) / ln O), 1 when M/O <= 1 or without scaling. */
  attentionScaling: number;
}

export interface RefPhi3VConfig {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  rmsNormEps: number;
  /** Keys more than this many positions behind the query are masked (null: none). */
  slidingWindow: number | null;
  rope: RefPhi3VRope;
  /** generation_config.json eos ids (config.json's when that file is absent). */
  eosTokenIds: number[];
  bosTokenId: number;
  vision: {
    width: number;
    layers: number;
    intermediate: number;
    heads: number;
    /** hidden_states index (default -2). */
    layerIdx: number;
    /** Encoder layers actually run: hidden_states[layerIdx] is after this many layers. */
    layersRun: number;
  };
  /** preprocessor_config.json num_crops. */
  numCrops: number;
  imageMean: number[];
  imageStd: number[];
  /** `<|image|>` id the runtime uses as a placeholder (vLLM's 32044). */
  imageTokenId: number;
}

export const PHI3V_TILE = 336;
export const PHI3V_PATCH = 14;
export const PHI3V_GRID = PHI3V_TILE / PHI3V_PATCH; // 24
export const PHI3V_CLIP_HEAD_DIM = 64;
export const PHI3V_IMAGE_TOKEN_ID = 32044;

/** s of §6 for M = max_position_embeddings, O = original_max_position_embeddings. */
export function phi3vAttentionScaling(maxPositions: number, originalMax: number): number {
  const scale = maxPositions / originalMax;
  return scale <= 1 ? 1 : Math.sqrt(1 + Math.log(scale) / Math.log(originalMax));
}

type Json = Record<string, unknown>;
const readJson = (path: string): Json => JSON.parse(readFileSync(path, "utf8")) as Json;
const num = (v: unknown, what: string): number => {
  if (typeof v !== "number") throw new Error(`reference: ${what} missing or not a number`);
  return v;
};
const ids = (v: unknown): number[] => (v === undefined || v === null ? [] : Array.isArray(v) ? (v as number[]) : [v as number]);

export interface RefPhi3VWeights {
  embed: Float32Array; // [vocab, H]
  lmHead: Linear;
  norm: Float32Array;
  layers: {
    inputNorm: Float32Array;
    postNorm: Float32Array;
    qkv: Linear;
    o: Linear;
    gateUp: Linear;
    down: Linear;
  }[];
  clip: {
    classEmbedding: Float32Array; // [C]
    patchEmbedding: Float32Array; // [C, 3, 14, 14]
    positionEmbedding: Float32Array; // [577, C]
    preNorm: { weight: Float32Array; bias: Float32Array };
    layers: {
      norm1: { weight: Float32Array; bias: Float32Array };
      norm2: { weight: Float32Array; bias: Float32Array };
      q: Linear; k: Linear; v: Linear; out: Linear;
      fc1: Linear; fc2: Linear;
    }[];
  };
  glbGN: Float32Array; // [4C]
  subGN: Float32Array; // [4C]
  proj0: Linear;
  proj2: Linear;
}

/** Parses the checkpoint's JSON files; CLIP sizes need the tensor shapes (passed in). */
export function parsePhi3VConfig(cfg: Json, pre: Json, gen: Json | null, clip: { width: number; layers: number; intermediate: number }): RefPhi3VConfig {
  if (cfg.model_type !== "phi3_v") throw new Error(`reference: model_type ${String(cfg.model_type)} is not phi3_v`);
  const hidden = num(cfg.hidden_size, "hidden_size");
  const heads = num(cfg.num_attention_heads, "num_attention_heads");
  const rs = cfg.rope_scaling as Json | null | undefined;
  const originalMax = (cfg.original_max_position_embeddings as number | undefined) ?? 4096;
  const maxPositions = num(cfg.max_position_embeddings, "max_position_embeddings");
  let rope: RefPhi3VRope = { type: null, theta: (cfg.rope_theta as number | undefined) ?? 10000, shortFactor: null, longFactor: null, originalMax, maxPositions, attentionScaling: 1 };
  if (rs) {
    const type = rs.type ?? rs.rope_type;
    if (type !== "su" && type !== "longrope") throw new Error(`reference: rope_scaling type ${String(type)}`);
    const short = rs.short_factor as number[];
    const long = rs.long_factor as number[];
    if (short.length !== hidden / heads / 2 || long.length !== hidden / heads / 2) throw new Error("reference: rope factors must have head_dim/2 entries");
    rope = { ...rope, type, shortFactor: short, longFactor: long, attentionScaling: phi3vAttentionScaling(maxPositions, originalMax) };
  }
  const img = (cfg.img_processor as Json | undefined) ?? {};
  const layerIdx = (img.layer_idx as number | undefined) ?? -2;
  if ((img.type_feature ?? "patch") !== "patch") throw new Error(`reference: type_feature ${String(img.type_feature)}`);
  // hidden_states has L + 1 entries (embeddings output first): index i (or L + 1 + i) is after that many layers.
  const layersRun = layerIdx < 0 ? clip.layers + 1 + layerIdx : layerIdx;
  if (layersRun < 0 || layersRun > clip.layers) throw new Error(`reference: layer_idx ${layerIdx} with ${clip.layers} CLIP layers`);
  const embd = (cfg.embd_layer as Json | undefined) ?? {};
  if ((embd.hd_transform_order ?? "glb_sub") !== "sub_glb") throw new Error("reference: only hd_transform_order sub_glb is implemented");
  const eos = gen && gen.eos_token_id !== undefined ? ids(gen.eos_token_id) : ids(cfg.eos_token_id);
  return {
    hidden,
    intermediate: num(cfg.intermediate_size, "intermediate_size"),
    layers: num(cfg.num_hidden_layers, "num_hidden_layers"),
    heads,
    kvHeads: (cfg.num_key_value_heads as number | undefined) ?? heads,
    headDim: hidden / heads,
    vocab: num(cfg.vocab_size, "vocab_size"),
    rmsNormEps: (cfg.rms_norm_eps as number | undefined) ?? 1e-5,
    slidingWindow: (cfg.sliding_window as number | null | undefined) ?? null,
    rope,
    eosTokenIds: eos,
    bosTokenId: (cfg.bos_token_id as number | undefined) ?? 1,
    vision: { ...clip, heads: clip.width / PHI3V_CLIP_HEAD_DIM, layerIdx, layersRun },
    numCrops: (pre.num_crops as number | undefined) ?? 1,
    imageMean: (pre.image_mean as number[] | undefined) ?? [0.48145466, 0.4578275, 0.40821073],
    imageStd: (pre.image_std as number[] | undefined) ?? [0.26862954, 0.26130258, 0.27577711],
    imageTokenId: PHI3V_IMAGE_TOKEN_ID,
  };
}

const V = "model.vision_embed_tokens.img_processor.vision_model.";
const E = "model.vision_embed_tokens.";

/** Loads config and weights; unused = tensors of the file the reference never read. */
export function loadPhi3VModel(dir: string, transform?: Phi3VWeightTransform): { config: RefPhi3VConfig; weights: RefPhi3VWeights; unused: string[] } {
  const tensors = readSafetensorsDir(dir);
  const used = new Set<string>();
  const get = (name: string): { data: Float32Array; shape: number[] } => {
    const t = tensors.get(name);
    if (!t) throw new Error(`reference: ${dir}: missing tensor ${name}`);
    used.add(name);
    return { data: transform ? transform(name, t.data, t.shape) : t.data, shape: t.shape };
  };
  const vec = (name: string): Float32Array => get(name).data;
  const lin = (name: string, bias: boolean): Linear => {
    const w = get(`${name}.weight`);
    return { weight: w.data, bias: bias ? vec(`${name}.bias`) : null, outDim: w.shape[0], inDim: w.shape[1] };
  };
  const ln = (name: string): { weight: Float32Array; bias: Float32Array } => ({ weight: vec(`${name}.weight`), bias: vec(`${name}.bias`) });

  const patchShape = tensors.get(`${V}embeddings.patch_embedding.weight`)?.shape;
  if (!patchShape) throw new Error(`reference: ${dir}: no CLIP patch embedding`);
  let clipLayers = 0;
  const layerRe = /^model\.vision_embed_tokens\.img_processor\.vision_model\.encoder\.layers\.(\d+)\./;
  for (const name of tensors.keys()) {
    const m = layerRe.exec(name);
    if (m) clipLayers = Math.max(clipLayers, Number(m[1]) + 1);
  }
  const fc1 = tensors.get(`${V}encoder.layers.0.mlp.fc1.weight`);
  if (!fc1) throw new Error(`reference: ${dir}: no CLIP layer 0`);
  const clip = { width: patchShape[0], layers: clipLayers, intermediate: fc1.shape[0] };
  if (clip.width % PHI3V_CLIP_HEAD_DIM !== 0) throw new Error(`reference: CLIP width ${clip.width} is not a multiple of 64`);

  const preP = join(dir, "preprocessor_config.json");
  const genP = join(dir, "generation_config.json");
  const config = parsePhi3VConfig(readJson(join(dir, "config.json")), existsSync(preP) ? readJson(preP) : {}, existsSync(genP) ? readJson(genP) : null, clip);

  const layers = [];
  for (let l = 0; l < config.layers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      inputNorm: vec(`${p}input_layernorm.weight`),
      postNorm: vec(`${p}post_attention_layernorm.weight`),
      qkv: lin(`${p}self_attn.qkv_proj`, false),
      o: lin(`${p}self_attn.o_proj`, false),
      gateUp: lin(`${p}mlp.gate_up_proj`, false),
      down: lin(`${p}mlp.down_proj`, false),
    });
  }
  // Only the layers whose output is used are read (the rest, and post_layernorm, stay unused).
  const clipLayerWeights = [];
  for (let i = 0; i < config.vision.layersRun; i++) {
    const p = `${V}encoder.layers.${i}.`;
    clipLayerWeights.push({
      norm1: ln(`${p}layer_norm1`), norm2: ln(`${p}layer_norm2`),
      q: lin(`${p}self_attn.q_proj`, true), k: lin(`${p}self_attn.k_proj`, true),
      v: lin(`${p}self_attn.v_proj`, true), out: lin(`${p}self_attn.out_proj`, true),
      fc1: lin(`${p}mlp.fc1`, true), fc2: lin(`${p}mlp.fc2`, true),
    });
  }
  const weights: RefPhi3VWeights = {
    embed: vec("model.embed_tokens.weight"),
    lmHead: lin("lm_head", false),
    norm: vec("model.norm.weight"),
    layers,
    clip: {
      classEmbedding: vec(`${V}embeddings.class_embedding`),
      patchEmbedding: vec(`${V}embeddings.patch_embedding.weight`),
      positionEmbedding: vec(`${V}embeddings.position_embedding.weight`),
      preNorm: ln(`${V}pre_layrnorm`),
      layers: clipLayerWeights,
    },
    glbGN: vec(`${E}glb_GN`),
    subGN: vec(`${E}sub_GN`),
    proj0: lin(`${E}img_projection.0`, true),
    proj2: lin(`${E}img_projection.2`, true),
  };
  const unused = [...tensors.keys()].filter((n) => !used.has(n)).sort();
  return { config, weights, unused };
}
