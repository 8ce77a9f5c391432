// Config parsing and weight loading for the CPU reference of Qwen2-VL
// (transformers: configuration_qwen2_vl.py, modeling_qwen2_vl.py).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Linear } from "./ref_math.ts";
import { readSafetensorsDir, type RefTensor } from "./safetensors_min.ts";

export interface RefVisionConfig {
  depth: number;
  embedDim: number;
  numHeads: number;
  headDim: number; // embedDim / numHeads
  mlpHidden: number; // int(embedDim * mlp_ratio)
  hiddenAct: string; // vision MLP activation (quick_gelu)
  inChannels: number;
  patchSize: number;
  temporalPatchSize: number;
  spatialMergeSize: number;
  outHidden: number; // vision_config.hidden_size: merger output = LLM hidden size
  patchDim: number; // inChannels * temporalPatchSize * patchSize^2 (1176)
}

export interface RefTextConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number; // hiddenSize / numHeads (Qwen2VLAttention ignores config.head_dim)
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  mropeSection: number[]; // e.g. [16, 24, 24]; sums to headDim / 2
  hiddenAct: string;
}

export interface RefConfig {
  text: RefTextConfig;
  vision: RefVisionConfig;
  tieWordEmbeddings: boolean;
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
  visionEndTokenId: number;
}

export interface RefLayerNorm { weight: Float32Array; bias: Float32Array }

export interface RefVisionBlock {
  norm1: RefLayerNorm;
  norm2: RefLayerNorm;
  qkv: Linear;
  proj: Linear;
  fc1: Linear;
  fc2: Linear;
}

export interface RefVisionWeights {
  patchEmbed: Linear; // Conv3d weight [embed, C, T, P, P] viewed as [embed, patchDim], no bias
  blocks: RefVisionBlock[];
  mergerLnQ: RefLayerNorm;
  mergerFc1: Linear; // merger.mlp.0
  mergerFc2: Linear; // merger.mlp.2
}

export interface RefDecoderLayer {
  inputNorm: Float32Array;
  postAttentionNorm: Float32Array;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export interface RefTextWeights {
  embedTokens: Float32Array; // [vocab, hidden]
  layers: RefDecoderLayer[];
  norm: Float32Array;
  lmHead: Float32Array; // [vocab, hidden]; the same array as embedTokens when tied
}

export interface RefModel {
  config: RefConfig;
  vision: RefVisionWeights;
  text: RefTextWeights;
  /** Checkpoint tensors the reference did not use (should be empty). */
  unusedTensors: string[];
}

// ---------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------

type Json = Record<string, any>;

/**
 * Parses a Qwen2-VL config.json. Text fields may sit at the top level (released
 * checkpoints) or in `text_config` (newer transformers); text_config wins.
 * M-RoPE sections come from `rope_scaling` or `rope_parameters`
 * ({type|rope_type: "mrope"|"default", mrope_section}). Defaults are those of
 * Qwen2VLTextConfig / Qwen2VLVisionConfig / Qwen2VLConfig.
 */
export function parseConfig(json: Json): RefConfig {
  const tc: Json = json.text_config ?? {};
  const pick = (key: string): any => (tc[key] !== undefined ? tc[key] : json[key]);
  const need = (key: string): number => {
    const v = pick(key);
    if (typeof v !== "number") throw new Error(`config: missing ${key}`);
    return v;
  };

  let rope: Json | null = pick("rope_scaling") ?? pick("rope_parameters") ?? null;
  if (rope && rope.mrope_section === undefined && rope.full_attention) rope = rope.full_attention; // per-layer-type form
  if (!rope || !Array.isArray(rope.mrope_section)) throw new Error("config: rope_scaling.mrope_section missing");
  const ropeType = rope.rope_type ?? rope.type ?? "default";
  if (ropeType !== "mrope" && ropeType !== "default") throw new Error(`config: unsupported rope type ${ropeType}`);

  if (pick("use_sliding_window") === true) throw new Error("config: use_sliding_window is not supported by the reference");
  const hiddenSize = need("hidden_size");
  const numHeads = need("num_attention_heads");
  const kv = pick("num_key_value_heads");
  const text: RefTextConfig = {
    hiddenSize,
    intermediateSize: need("intermediate_size"),
    numLayers: need("num_hidden_layers"),
    numHeads,
    numKvHeads: kv === undefined ? 8 : kv === null ? numHeads : kv, // Qwen2VLTextConfig: default 8, None -> heads
    headDim: hiddenSize / numHeads,
    vocabSize: need("vocab_size"),
    rmsNormEps: pick("rms_norm_eps") ?? 1e-5,
    ropeTheta: pick("rope_theta") ?? rope.rope_theta ?? 1e6,
    mropeSection: rope.mrope_section.map(Number),
    hiddenAct: pick("hidden_act") ?? "silu",
  };
  if (!Number.isInteger(text.headDim)) throw new Error("config: hidden_size not divisible by num_attention_heads");
  if (text.numHeads % text.numKvHeads !== 0) throw new Error("config: heads not a multiple of kv heads");
  const sectionSum = text.mropeSection.reduce((a, b) => a + b, 0);
  if (text.mropeSection.length !== 3 || sectionSum !== text.headDim / 2) {
    throw new Error(`config: mrope_section [${text.mropeSection}] must be 3 numbers summing to head_dim/2 = ${text.headDim / 2}`);
  }

  const vc: Json = json.vision_config ?? {};
  const embedDim = vc.embed_dim ?? 1280;
  const numVisionHeads = vc.num_heads ?? 16;
  const inChannels = vc.in_channels ?? vc.in_chans ?? 3;
  const patchSize = vc.patch_size ?? vc.spatial_patch_size ?? 14;
  const temporalPatchSize = vc.temporal_patch_size ?? 2;
  const vision: RefVisionConfig = {
    depth: vc.depth ?? 32,
    embedDim,
    numHeads: numVisionHeads,
    headDim: embedDim / numVisionHeads,
    mlpHidden: Math.trunc(embedDim * (vc.mlp_ratio ?? 4)),
    hiddenAct: vc.hidden_act ?? "quick_gelu",
    inChannels,
    patchSize,
    temporalPatchSize,
    spatialMergeSize: vc.spatial_merge_size ?? 2,
    outHidden: vc.hidden_size ?? 3584,
    patchDim: inChannels * temporalPatchSize * patchSize * patchSize,
  };
  if (!Number.isInteger(vision.headDim) || vision.headDim % 4 !== 0) {
    throw new Error("config: vision head_dim must be an integer multiple of 4 (2-D rotary)");
  }

  return {
    text,
    vision,
    tieWordEmbeddings: json.tie_word_embeddings ?? tc.tie_word_embeddings ?? false,
    imageTokenId: json.image_token_id ?? 151655,
    videoTokenId: json.video_token_id ?? 151656,
    visionStartTokenId: json.vision_start_token_id ?? 151652,
    visionEndTokenId: json.vision_end_token_id ?? 151653,
  };
}

// ---------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------

/**
 * Maps both checkpoint spellings onto one: released checkpoints use
 * `model.layers.*`, `model.embed_tokens`, `model.norm`, `visual.*`, `lm_head`;
 * newer transformers saves `model.language_model.*` and `model.visual.*`
 * (see Qwen2VLForConditionalGeneration._checkpoint_conversion_mapping).
 * Result: `lm.*` for the language model, `visual.*`, `lm_head.weight`.
 */
export function canonicalTensorName(name: string): string {
  if (name.startsWith("model.language_model.")) return "lm." + name.slice("model.language_model.".length);
  if (name.startsWith("model.visual.")) return "visual." + name.slice("model.visual.".length);
  if (name.startsWith("visual.")) return name;
  if (name.startsWith("model.")) return "lm." + name.slice("model.".length);
  return name;
}

class TensorTaker {
  private readonly tensors = new Map<string, RefTensor>();
  private readonly used = new Set<string>();
  constructor(raw: Map<string, RefTensor>) {
    for (const [name, t] of raw) {
      const canonical = canonicalTensorName(name);
      if (this.tensors.has(canonical)) throw new Error(`checkpoint: ${name} duplicates ${canonical}`);
      this.tensors.set(canonical, t);
    }
  }
  has(name: string): boolean {
    return this.tensors.has(name);
  }
  take(name: string, shape: number[]): Float32Array {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`checkpoint: missing tensor ${name}`);
    const count = shape.reduce((a, b) => a * b, 1);
    const tCount = t.shape.reduce((a, b) => a * b, 1);
    // Conv3d weights are [out, C, T, P, P]; callers ask for the flattened [out, patchDim] view.
    if (tCount !== count || t.shape[0] !== shape[0]) {
      throw new Error(`checkpoint: ${name} has shape [${t.shape}], expected [${shape}]`);
    }
    this.used.add(name);
    return t.data;
  }
  linear(prefix: string, inDim: number, outDim: number, withBias: boolean): Linear {
    return {
      weight: this.take(`${prefix}.weight`, [outDim, inDim]),
      bias: withBias ? this.take(`${prefix}.bias`, [outDim]) : null,
      inDim,
      outDim,
    };
  }
  layerNorm(prefix: string, dim: number): RefLayerNorm {
    return { weight: this.take(`${prefix}.weight`, [dim]), bias: this.take(`${prefix}.bias`, [dim]) };
  }
  unused(): string[] {
    return [...this.tensors.keys()].filter((n) => !this.used.has(n));
  }
}

/** Builds the reference model from a parsed config and raw checkpoint tensors. */
export function buildReferenceModel(config: RefConfig, raw: Map<string, RefTensor>): RefModel {
  const t = new TensorTaker(raw);
  const vc = config.vision;
  const tc = config.text;

  const blocks: RefVisionBlock[] = [];
  for (let i = 0; i < vc.depth; i++) {
    const p = `visual.blocks.${i}`;
    blocks.push({
      norm1: t.layerNorm(`${p}.norm1`, vc.embedDim),
      norm2: t.layerNorm(`${p}.norm2`, vc.embedDim),
      qkv: t.linear(`${p}.attn.qkv`, vc.embedDim, 3 * vc.embedDim, true),
      proj: t.linear(`${p}.attn.proj`, vc.embedDim, vc.embedDim, true),
      fc1: t.linear(`${p}.mlp.fc1`, vc.embedDim, vc.mlpHidden, true),
      fc2: t.linear(`${p}.mlp.fc2`, vc.mlpHidden, vc.embedDim, true),
    });
  }
  const mergedDim = vc.embedDim * vc.spatialMergeSize ** 2;
  const vision: RefVisionWeights = {
    patchEmbed: t.linear("visual.patch_embed.proj", vc.patchDim, vc.embedDim, false),
    blocks,
    mergerLnQ: t.layerNorm("visual.merger.ln_q", vc.embedDim),
    mergerFc1: t.linear("visual.merger.mlp.0", mergedDim, mergedDim, true),
    mergerFc2: t.linear("visual.merger.mlp.2", mergedDim, vc.outHidden, true),
  };

  const h = tc.hiddenSize;
  const kvDim = tc.numKvHeads * tc.headDim;
  const layers: RefDecoderLayer[] = [];
  for (let i = 0; i < tc.numLayers; i++) {
    const p = `lm.layers.${i}`;
    layers.push({
      inputNorm: t.take(`${p}.input_layernorm.weight`, [h]),
      postAttentionNorm: t.take(`${p}.post_attention_layernorm.weight`, [h]),
      q: t.linear(`${p}.self_attn.q_proj`, h, tc.numHeads * tc.headDim, true),
      k: t.linear(`${p}.self_attn.k_proj`, h, kvDim, true),
      v: t.linear(`${p}.self_attn.v_proj`, h, kvDim, true),
      o: t.linear(`${p}.self_attn.o_proj`, tc.numHeads * tc.headDim, h, false),
      gate: t.linear(`${p}.mlp.gate_proj`, h, tc.intermediateSize, false),
      up: t.linear(`${p}.mlp.up_proj`, h, tc.intermediateSize, false),
      down: t.linear(`${p}.mlp.down_proj`, tc.intermediateSize, h, false),
    });
  }
  const embedTokens = t.take("lm.embed_tokens.weight", [tc.vocabSize, h]);
  let lmHead: Float32Array;
  if (config.tieWordEmbeddings) {
    lmHead = embedTokens;
    if (t.has("lm_head.weight")) t.take("lm_head.weight", [tc.vocabSize, h]); // tied: HF overwrites it with embed_tokens
  } else {
    lmHead = t.take("lm_head.weight", [tc.vocabSize, h]);
  }
  const text: RefTextWeights = { embedTokens, layers, norm: t.take("lm.norm.weight", [h]), lmHead };
  if (vision.mergerFc2.outDim !== h) throw new Error(`config: vision hidden_size ${vc.outHidden} != LLM hidden ${h}`);
  return { config, vision, text, unusedTensors: t.unused() };
}

/** Loads config.json and the safetensors weights of a checkpoint directory. */
export function loadReferenceModel(dir: string): RefModel {
  const json = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Json;
  return buildReferenceModel(parseConfig(json), readSafetensorsDir(dir));
}
