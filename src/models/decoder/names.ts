// The decoder's tensor table: checkpoint names verbatim (transformers' LlamaForCausalLM layout,
// shared by Qwen2, Mistral, Llama and Phi-3), each with its shape from the config and the GPU
// weight it goes into. One declarative list drives checking (missing_tensor / shape_mismatch
// before anything is read), loading (row-stacked into fused q|k|v and gate|up weights) and release.
// A cross-attention layer (mllama) has cross_attn.* (q/k/v/o, q_norm/k_norm) and two tanh gates in
// place of self_attn.*; its norms and MLP are named as a self layer's.
import { isCrossLayer, type DecoderConfig } from "./config.ts";

/** The GPU weight a checkpoint tensor goes into ("qkv" rows q | k | v, "gateUp" rows gate | up). */
export type Slot =
  | "embed" | "norm" | "lmHead" | "inputNorm" | "postNorm" | "qkv" | "qkvBias" | "o" | "oBias" | "gateUp" | "gateUpBias" | "down" | "downBias"
  // cross-attention layers (mllama): separate q/k/v (k/v read the vision states), per-head norms, tanh gates
  | "crossQ" | "crossK" | "crossV" | "crossO" | "qNorm" | "kNorm" | "attnGate" | "mlpGate";

export interface TensorSpec {
  /** Checkpoint name, verbatim. */
  name: string;
  shape: number[];
  slot: Slot;
  /** Layer index, or null for model-level tensors. */
  layer: number | null;
}

interface Entry {
  name: string;
  slot: Slot;
  shape: (c: DecoderConfig) => number[];
  when?: (c: DecoderConfig) => boolean;
}

const qDim = (c: DecoderConfig): number => c.numHeads * c.headDim;
const kvDim = (c: DecoderConfig): number => c.numKvHeads * c.headDim;
const split = (c: DecoderConfig): boolean => c.qkvLayout === "split";
const mlpSplit = (c: DecoderConfig): boolean => c.gateUpLayout === "split";

/** Per-layer tensors, under `model.layers.{i}.`, in row-stacking order within each slot. */
const LAYER: readonly Entry[] = [
  { name: "input_layernorm.weight", slot: "inputNorm", shape: (c) => [c.hiddenSize] },
  { name: "self_attn.q_proj.weight", slot: "qkv", shape: (c) => [qDim(c), c.hiddenSize], when: split },
  { name: "self_attn.k_proj.weight", slot: "qkv", shape: (c) => [kvDim(c), c.hiddenSize], when: split },
  { name: "self_attn.v_proj.weight", slot: "qkv", shape: (c) => [kvDim(c), c.hiddenSize], when: split },
  { name: "self_attn.qkv_proj.weight", slot: "qkv", shape: (c) => [qDim(c) + 2 * kvDim(c), c.hiddenSize], when: (c) => !split(c) },
  { name: "self_attn.q_proj.bias", slot: "qkvBias", shape: (c) => [qDim(c)], when: (c) => split(c) && c.qkvBias },
  { name: "self_attn.k_proj.bias", slot: "qkvBias", shape: (c) => [kvDim(c)], when: (c) => split(c) && c.qkvBias },
  { name: "self_attn.v_proj.bias", slot: "qkvBias", shape: (c) => [kvDim(c)], when: (c) => split(c) && c.qkvBias },
  { name: "self_attn.qkv_proj.bias", slot: "qkvBias", shape: (c) => [qDim(c) + 2 * kvDim(c)], when: (c) => !split(c) && c.qkvBias },
  { name: "self_attn.o_proj.weight", slot: "o", shape: (c) => [c.hiddenSize, qDim(c)] },
  { name: "self_attn.o_proj.bias", slot: "oBias", shape: (c) => [c.hiddenSize], when: (c) => c.oBias },
  { name: "post_attention_layernorm.weight", slot: "postNorm", shape: (c) => [c.hiddenSize] },
  { name: "mlp.gate_proj.weight", slot: "gateUp", shape: (c) => [c.intermediateSize, c.hiddenSize], when: mlpSplit },
  { name: "mlp.up_proj.weight", slot: "gateUp", shape: (c) => [c.intermediateSize, c.hiddenSize], when: mlpSplit },
  { name: "mlp.gate_up_proj.weight", slot: "gateUp", shape: (c) => [2 * c.intermediateSize, c.hiddenSize], when: (c) => !mlpSplit(c) },
  { name: "mlp.gate_proj.bias", slot: "gateUpBias", shape: (c) => [c.intermediateSize], when: (c) => mlpSplit(c) && c.mlpBias },
  { name: "mlp.up_proj.bias", slot: "gateUpBias", shape: (c) => [c.intermediateSize], when: (c) => mlpSplit(c) && c.mlpBias },
  { name: "mlp.gate_up_proj.bias", slot: "gateUpBias", shape: (c) => [2 * c.intermediateSize], when: (c) => !mlpSplit(c) && c.mlpBias },
  { name: "mlp.down_proj.weight", slot: "down", shape: (c) => [c.hiddenSize, c.intermediateSize] },
  { name: "mlp.down_proj.bias", slot: "downBias", shape: (c) => [c.hiddenSize], when: (c) => c.mlpBias },
];

/** A cross-attention layer's attention tensors (transformers' MllamaCrossAttentionDecoderLayer), replacing self_attn.*. */
const CROSS: readonly Entry[] = [
  { name: "cross_attn.q_proj.weight", slot: "crossQ", shape: (c) => [qDim(c), c.hiddenSize] },
  { name: "cross_attn.k_proj.weight", slot: "crossK", shape: (c) => [kvDim(c), c.hiddenSize] },
  { name: "cross_attn.v_proj.weight", slot: "crossV", shape: (c) => [kvDim(c), c.hiddenSize] },
  { name: "cross_attn.o_proj.weight", slot: "crossO", shape: (c) => [c.hiddenSize, qDim(c)] },
  { name: "cross_attn.q_norm.weight", slot: "qNorm", shape: (c) => [c.headDim] },
  { name: "cross_attn.k_norm.weight", slot: "kNorm", shape: (c) => [c.headDim] },
  { name: "cross_attn_attn_gate", slot: "attnGate", shape: () => [1] },
  { name: "cross_attn_mlp_gate", slot: "mlpGate", shape: () => [1] },
];

/** A cross layer's entries: its norms and MLP as a self layer's, cross_attn.* instead of self_attn.*. */
const CROSS_LAYER: readonly Entry[] = [LAYER[0], ...CROSS, ...LAYER.filter((e) => e.name !== LAYER[0].name && !e.name.startsWith("self_attn."))];

/** Model-level tensors; lm_head only when untied (a tied checkpoint's stored lm_head is ignored, as in HF). */
const TOP: readonly Entry[] = [
  { name: "model.embed_tokens.weight", slot: "embed", shape: (c) => [c.embedRows ?? c.vocabSize, c.hiddenSize] },
  { name: "model.norm.weight", slot: "norm", shape: (c) => [c.hiddenSize] },
  { name: "lm_head.weight", slot: "lmHead", shape: (c) => [c.vocabSize, c.hiddenSize], when: (c) => !c.tieWordEmbeddings },
];

/** Every checkpoint tensor the decoder reads, with its shape, in load order. */
export function decoderTensorTable(c: DecoderConfig): TensorSpec[] {
  const out: TensorSpec[] = [];
  const add = (e: Entry, name: string, layer: number | null): void => {
    if (!e.when || e.when(c)) out.push({ name, shape: e.shape(c), slot: e.slot, layer });
  };
  add(TOP[0], TOP[0].name, null);
  for (let i = 0; i < c.numLayers; i++) for (const e of isCrossLayer(c, i) ? CROSS_LAYER : LAYER) add(e, `model.layers.${i}.${e.name}`, i);
  add(TOP[1], TOP[1].name, null);
  add(TOP[2], TOP[2].name, null);
  return out;
}
