// Config parsing and weight loading for the CPU reference of Llama 3.2 Vision (mllama;
// transformers: configuration_mllama.py, modeling_mllama.py; contract: /work/shared/MLLAMA.md §1,
// §2). Accepts both tensor-name layouts (hub names and transformers >= 4.52's `model.` prefixes).
// Shares no code with src/.

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { RefRope } from "./ref_decoder.ts";
import type { Linear } from "./ref_math.ts";
import { readSafetensorsDir, type RefTensor } from "./safetensors_min.ts";

export interface RefMllamaVisionConfig {
  hiddenSize: number;
  numHeads: number;
  headDim: number;
  intermediateSize: number;
  hiddenAct: string;
  numLayers: number;
  numGlobalLayers: number;
  /** Local-layer inputs tapped for the output (§4.8, §4.12). */
  intermediateLayersIndices: number[];
  /** image_size: the tile side. */
  tileSize: number;
  patchSize: number;
  numChannels: number;
  normEps: number;
  maxNumTiles: number;
  /** (rows, cols) pairs; aspect_ratio_id = index + 1. */
  supportedAspectRatios: [number, number][];
  /** (tile/patch)^2 + 1: patches per tile with the class token (P). */
  numPatches: number;
  /** P rounded up to a multiple of 8 (L, §4.6). */
  paddedPatches: number;
  /** hidden * (1 + taps). */
  outputDim: number;
}

export interface RefMllamaTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  crossAttentionLayers: number[];
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  hiddenAct: string;
  rope: RefRope;
}

export interface RefMllamaConfig {
  vision: RefMllamaVisionConfig;
  text: RefMllamaTextConfig;
  imageTokenId: number;
  /** generation_config.eos_token_id (else text_config.eos_token_id). */
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

const num = (o: Json, key: string, dflt: number): number => {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number") throw new Error(`reference: config ${key} is not a number`);
  return v;
};
const str = (o: Json, key: string, dflt: string): string => (typeof o[key] === "string" ? (o[key] as string) : dflt);
const idList = (v: unknown): number[] => (v === undefined || v === null ? [] : Array.isArray(v) ? (v as number[]) : [v as number]);

/** config.json (+ generation_config.json) with the class defaults of configuration_mllama.py. */
export function parseMllamaConfig(config: Json, generation: Json | null = null): RefMllamaConfig {
  const vc = (config.vision_config ?? {}) as Json;
  const tc = (config.text_config ?? {}) as Json;

  const vHidden = num(vc, "hidden_size", 1280);
  // The saved key is attention_heads (attribute_map); num_attention_heads is its alias.
  const vHeads = num(vc, "attention_heads", num(vc, "num_attention_heads", 16));
  const tile = num(vc, "image_size", 448);
  const patch = num(vc, "patch_size", 14);
  if (tile % patch !== 0) throw new Error(`reference: image_size ${tile} is not a multiple of patch_size ${patch}`);
  const P = (tile / patch) ** 2 + 1;
  const taps = (vc.intermediate_layers_indices as number[] | undefined) ?? [3, 7, 15, 23, 30];
  const maxTiles = num(vc, "max_num_tiles", 4);
  const ratios = (vc.supported_aspect_ratios as [number, number][] | undefined) ?? [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]];
  const vision: RefMllamaVisionConfig = {
    hiddenSize: vHidden,
    numHeads: vHeads,
    headDim: vHidden / vHeads,
    intermediateSize: num(vc, "intermediate_size", 5120),
    hiddenAct: str(vc, "hidden_act", "gelu"),
    numLayers: num(vc, "num_hidden_layers", 32),
    numGlobalLayers: num(vc, "num_global_layers", 8),
    intermediateLayersIndices: taps,
    tileSize: tile,
    patchSize: patch,
    numChannels: num(vc, "num_channels", 3),
    normEps: num(vc, "norm_eps", 1e-5),
    maxNumTiles: maxTiles,
    supportedAspectRatios: ratios,
    numPatches: P,
    paddedPatches: P + ((8 - (P % 8)) % 8),
    outputDim: vHidden * (1 + taps.length),
  };
  if (!Number.isInteger(vision.headDim)) throw new Error(`reference: vision hidden ${vHidden} not divisible by ${vHeads} heads`);
  const fileOut = vc.vision_output_dim;
  if (typeof fileOut === "number" && fileOut !== vision.outputDim) throw new Error(`reference: vision_output_dim ${fileOut} != hidden * (1 + taps) = ${vision.outputDim}`);

  const tHidden = num(tc, "hidden_size", 4096);
  const tHeads = num(tc, "num_attention_heads", 32);
  const headDim = tHidden / tHeads;
  const base = num(tc, "rope_theta", 500000);
  const rs = (tc.rope_scaling ?? null) as Json | null;
  let rope: RefRope = { type: "default", base, dim: headDim };
  const kind = rs ? str(rs, "rope_type", str(rs, "type", "default")) : "default";
  if (kind === "llama3" && rs) {
    rope = {
      type: "llama3", base, dim: headDim, factor: num(rs, "factor", 8), low: num(rs, "low_freq_factor", 1),
      high: num(rs, "high_freq_factor", 4), oldContext: num(rs, "original_max_position_embeddings", 8192),
    };
  } else if (kind !== "default") {
    throw new Error(`reference: rope type ${kind}`);
  }
  const text: RefMllamaTextConfig = {
    vocabSize: num(tc, "vocab_size", 128256),
    hiddenSize: tHidden,
    intermediateSize: num(tc, "intermediate_size", 14336),
    numLayers: num(tc, "num_hidden_layers", 40),
    crossAttentionLayers: (tc.cross_attention_layers as number[] | undefined) ?? [3, 8, 13, 18, 23, 28, 33, 38],
    numHeads: tHeads,
    numKvHeads: num(tc, "num_key_value_heads", 8),
    headDim,
    rmsNormEps: num(tc, "rms_norm_eps", 1e-5),
    hiddenAct: str(tc, "hidden_act", "silu"),
    rope,
  };
  if (!Number.isInteger(headDim)) throw new Error(`reference: text hidden ${tHidden} not divisible by ${tHeads} heads`);
  const genEos = generation ? idList(generation.eos_token_id) : [];
  return {
    vision,
    text,
    imageTokenId: num(config, "image_token_index", num(config, "image_token_id", 128256)),
    eosTokenIds: genEos.length > 0 ? genEos : idList(tc.eos_token_id),
  };
}

const readJsonIfPresent = (path: string): Json | null => (existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as Json) : null);

export function loadMllamaConfig(dir: string): RefMllamaConfig {
  const cfg = readJsonIfPresent(join(dir, "config.json"));
  if (!cfg) throw new Error(`${dir}: no config.json`);
  return parseMllamaConfig(cfg, readJsonIfPresent(join(dir, "generation_config.json")));
}

// ---------------------------------------------------------------- weights

export interface RefLayerNormWeights { weight: Float32Array; bias: Float32Array }

export interface RefMllamaVisionLayer {
  inputLayernorm: RefLayerNormWeights;
  postAttentionLayernorm: RefLayerNormWeights;
  q: Linear; k: Linear; v: Linear; o: Linear;
  fc1: Linear; fc2: Linear;
  /** Raw gate values (tanh applied at use); null in local layers. */
  gateAttn: number | null;
  gateFfn: number | null;
}

export interface RefMllamaVisionWeights {
  /** Conv weight [D, C, p, p] seen as a Linear over (c, ky, kx) patch vectors, no bias. */
  patchEmbedding: Linear;
  classEmbedding: Float32Array; // [D]
  positionEmbedding: Float32Array; // [P, D]
  positionGate: number;
  tileEmbedding: Float32Array; // [ratios + 1, T * P * D]
  preTileEmbedding: Float32Array; // [ratios + 1, T * D]
  preTileGate: number;
  postTileEmbedding: Float32Array; // [ratios + 1, T * D]
  postTileGate: number;
  layernormPre: RefLayerNormWeights;
  layernormPost: RefLayerNormWeights;
  layers: RefMllamaVisionLayer[];
  globalLayers: RefMllamaVisionLayer[];
}

export interface RefMllamaSelfLayer {
  kind: "self";
  inputNorm: Float32Array; postNorm: Float32Array;
  q: Linear; k: Linear; v: Linear; o: Linear;
  gate: Linear; up: Linear; down: Linear;
}

export interface RefMllamaCrossLayer {
  kind: "cross";
  inputNorm: Float32Array; postNorm: Float32Array;
  q: Linear; k: Linear; v: Linear; o: Linear;
  qNorm: Float32Array; kNorm: Float32Array;
  /** Raw gate values (tanh applied at use). */
  attnGate: number; mlpGate: number;
  gate: Linear; up: Linear; down: Linear;
}

export interface RefMllamaWeights {
  vision: RefMllamaVisionWeights;
  projector: Linear; // [text hidden, vision outputDim]
  embedTokens: Float32Array; // [embedRows, H]
  embedRows: number;
  layers: (RefMllamaSelfLayer | RefMllamaCrossLayer)[];
  norm: Float32Array;
  lmHead: Float32Array; // [vocab, H]
}

export type MllamaTensorLayout = "old" | "new";

/** Sees every tensor once, under its name in the file, before use; returns the values to use. */
export type WeightTransform = (name: string, data: Float32Array, shape: number[]) => Float32Array;

/** §2: hub ("old") name -> the file's name under the given layout. */
export function mllamaFileName(hubName: string, layout: MllamaTensorLayout): string {
  if (layout === "old") return hubName;
  if (hubName.startsWith("language_model.model.")) return "model.language_model." + hubName.slice("language_model.model.".length);
  if (hubName.startsWith("language_model.lm_head.")) return "lm_head." + hubName.slice("language_model.lm_head.".length);
  return "model." + hubName;
}

/** Which layout a tensor map uses (the embedding table decides). */
export function detectMllamaLayout(names: Iterable<string>): MllamaTensorLayout {
  for (const n of names) {
    if (n === "language_model.model.embed_tokens.weight") return "old";
    if (n === "model.language_model.embed_tokens.weight") return "new";
  }
  throw new Error("reference: no language_model embed_tokens under either mllama layout");
}

/** Reads the weights of §2 from a tensor map (either layout), checking every shape. */
export function buildMllamaWeights(c: RefMllamaConfig, tensors: Map<string, RefTensor>, transform?: WeightTransform): { weights: RefMllamaWeights; unused: string[]; layout: MllamaTensorLayout } {
  const layout = detectMllamaLayout(tensors.keys());
  const used = new Set<string>();
  const get = (hubName: string, shape: number[]): Float32Array => {
    const name = mllamaFileName(hubName, layout);
    const t = tensors.get(name);
    if (!t) throw new Error(`reference: missing tensor ${name}`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`reference: ${name} has shape [${t.shape}], expected [${shape}]`);
    }
    used.add(name);
    return transform ? transform(name, t.data, [...t.shape]) : t.data;
  };
  const scalar = (hubName: string): number => get(hubName, [1])[0];
  const lin = (name: string, outDim: number, inDim: number, bias: boolean): Linear => ({
    weight: get(`${name}.weight`, [outDim, inDim]),
    bias: bias ? get(`${name}.bias`, [outDim]) : null,
    inDim,
    outDim,
  });
  const ln = (name: string, dim: number): RefLayerNormWeights => ({ weight: get(`${name}.weight`, [dim]), bias: get(`${name}.bias`, [dim]) });

  const v = c.vision;
  const D = v.hiddenSize;
  const p = v.patchSize;
  const C = v.numChannels;
  const T = v.maxNumTiles;
  const P = v.numPatches;
  const arRows = v.supportedAspectRatios.length + 1;
  const vm = "vision_model";
  const visionLayer = (l: string, gated: boolean): RefMllamaVisionLayer => ({
    inputLayernorm: ln(`${l}.input_layernorm`, D),
    postAttentionLayernorm: ln(`${l}.post_attention_layernorm`, D),
    q: lin(`${l}.self_attn.q_proj`, D, D, false),
    k: lin(`${l}.self_attn.k_proj`, D, D, false),
    v: lin(`${l}.self_attn.v_proj`, D, D, false),
    o: lin(`${l}.self_attn.o_proj`, D, D, false),
    fc1: lin(`${l}.mlp.fc1`, v.intermediateSize, D, true),
    fc2: lin(`${l}.mlp.fc2`, D, v.intermediateSize, true),
    gateAttn: gated ? scalar(`${l}.gate_attn`) : null,
    gateFfn: gated ? scalar(`${l}.gate_ffn`) : null,
  });
  const vision: RefMllamaVisionWeights = {
    patchEmbedding: { weight: get(`${vm}.patch_embedding.weight`, [D, C, p, p]), bias: null, inDim: C * p * p, outDim: D },
    classEmbedding: get(`${vm}.class_embedding`, [D]),
    positionEmbedding: get(`${vm}.gated_positional_embedding.embedding`, [P, D]),
    positionGate: scalar(`${vm}.gated_positional_embedding.gate`),
    tileEmbedding: get(`${vm}.gated_positional_embedding.tile_embedding.weight`, [arRows, T * P * D]),
    preTileEmbedding: get(`${vm}.pre_tile_positional_embedding.embedding.weight`, [arRows, T * D]),
    preTileGate: scalar(`${vm}.pre_tile_positional_embedding.gate`),
    postTileEmbedding: get(`${vm}.post_tile_positional_embedding.embedding.weight`, [arRows, T * D]),
    postTileGate: scalar(`${vm}.post_tile_positional_embedding.gate`),
    layernormPre: ln(`${vm}.layernorm_pre`, D),
    layernormPost: ln(`${vm}.layernorm_post`, D),
    layers: Array.from({ length: v.numLayers }, (_, i) => visionLayer(`${vm}.transformer.layers.${i}`, false)),
    globalLayers: Array.from({ length: v.numGlobalLayers }, (_, i) => visionLayer(`${vm}.global_transformer.layers.${i}`, true)),
  };

  const t = c.text;
  const H = t.hiddenSize;
  const qd = t.numHeads * t.headDim;
  const kd = t.numKvHeads * t.headDim;
  const I = t.intermediateSize;
  const projector = lin("multi_modal_projector", H, v.outputDim, true);
  const lm = "language_model.model";
  // embed_tokens has vocab_size + 8 rows (§1); take whatever row count the file has, >= vocab.
  const embedName = mllamaFileName(`${lm}.embed_tokens.weight`, layout);
  const embedRows = tensors.get(embedName)?.shape[0] ?? 0;
  if (embedRows < t.vocabSize) throw new Error(`reference: ${embedName} has ${embedRows} rows < vocab_size ${t.vocabSize}`);
  const embedTokens = get(`${lm}.embed_tokens.weight`, [embedRows, H]);
  const layers: (RefMllamaSelfLayer | RefMllamaCrossLayer)[] = [];
  for (let i = 0; i < t.numLayers; i++) {
    const l = `${lm}.layers.${i}`;
    const common = {
      inputNorm: get(`${l}.input_layernorm.weight`, [H]),
      postNorm: get(`${l}.post_attention_layernorm.weight`, [H]),
      gate: lin(`${l}.mlp.gate_proj`, I, H, false),
      up: lin(`${l}.mlp.up_proj`, I, H, false),
      down: lin(`${l}.mlp.down_proj`, H, I, false),
    };
    if (t.crossAttentionLayers.includes(i)) {
      const a = `${l}.cross_attn`;
      layers.push({
        kind: "cross", ...common,
        q: lin(`${a}.q_proj`, qd, H, false), k: lin(`${a}.k_proj`, kd, H, false),
        v: lin(`${a}.v_proj`, kd, H, false), o: lin(`${a}.o_proj`, H, qd, false),
        qNorm: get(`${a}.q_norm.weight`, [t.headDim]), kNorm: get(`${a}.k_norm.weight`, [t.headDim]),
        attnGate: scalar(`${l}.cross_attn_attn_gate`), mlpGate: scalar(`${l}.cross_attn_mlp_gate`),
      });
    } else {
      const a = `${l}.self_attn`;
      layers.push({
        kind: "self", ...common,
        q: lin(`${a}.q_proj`, qd, H, false), k: lin(`${a}.k_proj`, kd, H, false),
        v: lin(`${a}.v_proj`, kd, H, false), o: lin(`${a}.o_proj`, H, qd, false),
      });
    }
  }
  const weights: RefMllamaWeights = {
    vision,
    projector,
    embedTokens,
    embedRows,
    layers,
    norm: get(`${lm}.norm.weight`, [H]),
    lmHead: get("language_model.lm_head.weight", [t.vocabSize, H]),
  };
  return { weights, unused: [...tensors.keys()].filter((n) => !used.has(n)), layout };
}

export function loadMllamaWeights(dir: string, c: RefMllamaConfig, transform?: WeightTransform): { weights: RefMllamaWeights; unused: string[]; layout: MllamaTensorLayout } {
  return buildMllamaWeights(c, readSafetensorsDir(dir), transform);
}
