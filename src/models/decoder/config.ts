// The decoder, configured by data alone: sizes, biases, fused or split projections, tied or
// untied lm_head, per-layer sliding windows and a rope spec. Families turn their config.json into
// one of these (parseDecoderConfig covers the Llama-shaped spellings: Qwen2, Mistral, Llama, Phi-3).
import { WebvlmError } from "../../api/errors.ts";
import { parseRopeSpec, type RopeSpec } from "../common/rope.ts";

export interface DecoderConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** From config.head_dim when given (it may differ from hidden / heads), else hidden / heads. */
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  /** q/k/v projections carry biases (Qwen2; Llama with attention_bias). */
  qkvBias: boolean;
  /** o_proj carries a bias (Llama attention_bias). */
  oBias: boolean;
  /** gate/up/down carry biases (Llama mlp_bias). */
  mlpBias: boolean;
  /** "split": q_proj, k_proj, v_proj in the checkpoint; "fused": one qkv_proj (Phi-3). One GPU weight either way. */
  qkvLayout: "split" | "fused";
  /** "split": gate_proj, up_proj; "fused": gate_up_proj (gate rows first, Phi-3). */
  gateUpLayout: "split" | "fused";
  tieWordEmbeddings: boolean;
  /**
   * Per layer: a query at position p sees keys (p - window, p] (transformers' sliding_window_overlay),
   * or null for full causal attention.
   */
  slidingWindow: (number | null)[];
  rope: RopeSpec;
  maxPositionEmbeddings: number;
  /**
   * Indices of gated cross-attention layers (mllama's cross_attention_layers): their tensors are
   * cross_attn.* instead of self_attn.*, they keep no KV cache and read the vision K/V the forward
   * is given. Absent or empty: every layer is self-attention.
   */
  crossAttentionLayers?: readonly number[];
  /** embed_tokens rows when they differ from lm_head's vocabSize (mllama: vocab_size + 8). */
  embedRows?: number;
}

/** Whether layer i is a cross-attention layer. */
export function isCrossLayer(c: DecoderConfig, i: number): boolean {
  return c.crossAttentionLayers?.includes(i) ?? false;
}

/** Self-attention layers (one KV cache each). */
export function selfAttentionLayerCount(c: DecoderConfig): number {
  return c.numLayers - (c.crossAttentionLayers?.length ?? 0);
}

/** What a family fixes about its checkpoints; the rest comes from config.json. */
export interface DecoderFamilyTraits {
  /** Family name for messages. */
  family: string;
  qkvLayout: "split" | "fused";
  gateUpLayout: "split" | "fused";
  /** Biases: fixed by the architecture, or read from attention_bias / mlp_bias (Llama). */
  qkvBias: boolean | "attention_bias";
  oBias: boolean | "attention_bias";
  mlpBias: boolean | "mlp_bias";
  defaultTheta: number;
  defaultEps: number;
  defaultMaxPositions: number;
  defaultTied: boolean;
  /** Values for config keys the checkpoint leaves out (transformers' config class defaults that matter here). */
  configDefaults?: Record<string, unknown>;
  /** Per-layer windows from the config (null = full attention). */
  windows(cfg: Record<string, unknown>, numLayers: number): (number | null)[];
}

type Json = Record<string, unknown>;
const bad = (msg: string): WebvlmError => new WebvlmError("bad_request", `config.json: ${msg}`);
export const isObj = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);

export function int(v: unknown, what: string, dflt?: number, min = 1): number {
  if (v === undefined || v === null) {
    if (dflt === undefined) throw bad(`missing ${what}`);
    return dflt;
  }
  if (!Number.isSafeInteger(v) || (v as number) < min) throw bad(`${what} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return v as number;
}

function num(v: unknown, what: string, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw bad(`${what} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

function flag(v: unknown, dflt: boolean): boolean {
  return v === undefined || v === null ? dflt : Boolean(v);
}

/** A window that is a positive integer, or null when absent. */
export function windowOf(v: unknown, what = "sliding_window"): number | null {
  if (v === undefined || v === null) return null;
  return int(v, what);
}

/** Parses a Llama-shaped config.json (top level, or text_config when present). */
export function parseDecoderConfig(json: unknown, t: DecoderFamilyTraits): DecoderConfig {
  if (!isObj(json)) throw bad("not a JSON object");
  const given: Json = isObj(json.text_config) ? { ...json, ...json.text_config } : json;
  const c: Json = { ...given };
  for (const [k, v] of Object.entries(t.configDefaults ?? {})) if (c[k] === undefined || (c[k] === null && !(k in given))) c[k] = v;
  const hiddenSize = int(c.hidden_size, "hidden_size");
  const numHeads = int(c.num_attention_heads, "num_attention_heads");
  const numKvHeads = int(c.num_key_value_heads, "num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) throw bad(`num_attention_heads ${numHeads} not divisible by num_key_value_heads ${numKvHeads}`);
  if (c.head_dim === undefined || c.head_dim === null) {
    if (hiddenSize % numHeads !== 0) throw bad(`hidden_size ${hiddenSize} not divisible by num_attention_heads ${numHeads} and no head_dim`);
  }
  const headDim = int(c.head_dim, "head_dim", Math.floor(hiddenSize / numHeads));
  const numLayers = int(c.num_hidden_layers, "num_hidden_layers");
  const maxPositionEmbeddings = int(c.max_position_embeddings, "max_position_embeddings", t.defaultMaxPositions);
  const act = c.hidden_act ?? "silu";
  if (act !== "silu" && act !== "swish") throw new WebvlmError("unsupported_feature", `${t.family}: hidden_act ${JSON.stringify(act)} is not supported (silu only)`);
  const pick = (v: boolean | string): boolean => (typeof v === "boolean" ? v : flag(c[v], false));
  const slidingWindow = t.windows(c, numLayers);
  if (slidingWindow.length !== numLayers) throw new WebvlmError("internal", `${t.family}: ${slidingWindow.length} windows for ${numLayers} layers`);
  return {
    hiddenSize,
    intermediateSize: int(c.intermediate_size, "intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int(c.vocab_size, "vocab_size"),
    rmsNormEps: num(c.rms_norm_eps, "rms_norm_eps", t.defaultEps),
    qkvBias: pick(t.qkvBias),
    oBias: pick(t.oBias),
    mlpBias: pick(t.mlpBias),
    qkvLayout: t.qkvLayout,
    gateUpLayout: t.gateUpLayout,
    tieWordEmbeddings: flag(c.tie_word_embeddings, t.defaultTied),
    slidingWindow,
    rope: parseRopeSpec(c, { defaultTheta: t.defaultTheta, headDim, maxPositions: maxPositionEmbeddings }),
    maxPositionEmbeddings,
  };
}

/** eos / bos / pad ids of config.json and generation_config.json (generation_config first). */
export function specialIds(json: Json, generationConfig: unknown): { eos: number[]; bos: number | null; pad: number | null } {
  const gen = isObj(generationConfig) ? generationConfig : {};
  const ids = (v: unknown): number[] => (v === undefined || v === null ? [] : (Array.isArray(v) ? v : [v]).filter((x): x is number => Number.isSafeInteger(x) && x >= 0));
  return {
    eos: [...new Set([...ids(gen.eos_token_id), ...ids(json.eos_token_id)])],
    bos: ids(gen.bos_token_id ?? json.bos_token_id)[0] ?? null,
    pad: ids(gen.pad_token_id ?? json.pad_token_id)[0] ?? null,
  };
}
