// CPU reference for the text-only decoders (transformers: modeling_llama.py, modeling_mistral.py,
// modeling_qwen2.py, modeling_phi3.py, modeling_rope_utils.py, masking_utils.py), f32 storage with
// f64 accumulation like the rest of test/reference. Shares no code with src/.
//
// What it follows, per file:
// - configuration_*.py defaults: head_dim = config.head_dim or hidden // heads; Qwen2 biases on
//   q/k/v only; Llama attention_bias (q/k/v/o) and mlp_bias; Mistral sliding_window (4096 when
//   absent); Phi-3 qkv_proj / gate_up_proj split by rows (query, key, value / gate, up) and
//   original_max_position_embeddings (4096 when absent); Qwen2's window only with use_sliding_window.
// - modeling_rope_utils.py: default, llama3 and longrope inv_freq (each op on f32 tensors rounded
//   to f32), longrope's attention_factor; dynamic_rope_update's longrope switch: a forward whose
//   max(position_ids) + 1 exceeds original_max_position_embeddings uses long_factor.
// - RotaryEmbedding.forward: freqs = inv_freq x position (f32), cos/sin of cat(freqs, freqs), both
//   multiplied by attention_scaling; apply_rotary_pos_emb with rotate_half.
// - masking_utils.py: causal kv <= q, and with a sliding window also kv > q - sliding_window.
// - Phi3ForCausalLM.prepare_inputs_for_generation (generate's loop): with rope_scaling set, a step
//   whose input_ids (the whole sequence so far) reach original_max_position_embeddings + 1 while
//   cache_position[0] (tokens cached) <= original_max_position_embeddings drops past_key_values,
//   so that step's forward runs the whole sequence from an empty cache.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { applyRotaryInPlace, attendOne, f32, linear, rmsNorm, silu, type Linear } from "./ref_math.ts";
import { readSafetensorsDir, type RefTensor } from "./safetensors_min.ts";

type Json = Record<string, any>;

export type RefRope =
  | { type: "default"; base: number; dim: number }
  | { type: "llama3"; base: number; dim: number; factor: number; low: number; high: number; oldContext: number }
  | { type: "longrope"; base: number; dim: number; short: number[]; long: number[]; originalMax: number; attentionFactor: number };

export interface RefDecoderConfig {
  modelType: string;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  eps: number;
  tied: boolean;
  /** Per layer sliding window or null. */
  windows: (number | null)[];
  rope: RefRope;
  eos: number[];
  /** Phi-3 with rope_scaling: original_max_position_embeddings, where generate drops the cache; else null. */
  recomputeAt: number | null;
}

export function refDecoderConfig(cfg: Json, gen: Json = {}): RefDecoderConfig {
  const type = cfg.model_type as string;
  const heads = cfg.num_attention_heads;
  const headDim = cfg.head_dim ?? Math.floor(cfg.hidden_size / heads);
  const layers = cfg.num_hidden_layers;
  const base = cfg.rope_theta ?? 10000;
  let windows: (number | null)[] = new Array(layers).fill(null);
  if (type === "mistral") windows = windows.map(() => (cfg.sliding_window === undefined ? 4096 : cfg.sliding_window));
  if (type === "phi3") windows = windows.map(() => cfg.sliding_window ?? null);
  if (type === "qwen2" && cfg.use_sliding_window) windows = windows.map((_, i) => (i >= (cfg.max_window_layers ?? 28) ? cfg.sliding_window : null));
  const rs = cfg.rope_scaling;
  let rope: RefRope = { type: "default", base, dim: headDim };
  const kind = rs ? (rs.rope_type ?? rs.type) : "default";
  if (kind === "llama3") {
    rope = { type: "llama3", base, dim: headDim, factor: rs.factor, low: rs.low_freq_factor, high: rs.high_freq_factor, oldContext: rs.original_max_position_embeddings };
  } else if (kind === "longrope" || kind === "su") {
    const originalMax = cfg.original_max_position_embeddings ?? 4096;
    const factor = cfg.max_position_embeddings / originalMax;
    const attentionFactor = rs.attention_factor ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(originalMax)));
    rope = { type: "longrope", base, dim: headDim, short: rs.short_factor, long: rs.long_factor, originalMax, attentionFactor };
  } else if (kind !== "default") {
    throw new Error(`reference: rope type ${kind}`);
  }
  const ids = (v: unknown): number[] => (v === undefined || v === null ? [] : Array.isArray(v) ? v : [v as number]);
  return {
    modelType: type,
    hidden: cfg.hidden_size,
    intermediate: cfg.intermediate_size,
    layers,
    heads,
    kvHeads: cfg.num_key_value_heads ?? heads,
    headDim,
    vocab: cfg.vocab_size,
    eps: cfg.rms_norm_eps,
    tied: cfg.tie_word_embeddings ?? false,
    windows,
    rope,
    eos: [...ids(gen.eos_token_id), ...ids(cfg.eos_token_id)],
    recomputeAt: type === "phi3" && rs ? (cfg.original_max_position_embeddings ?? 4096) : null,
  };
}

// ---------------------------------------------------------------- rotary tables

/** torch.arange(0, dim, 2).float() / dim, then base ** that, all f32. */
function basePowers(base: number, dim: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim; i += 2) out[i / 2] = f32(base ** f32(i / dim));
  return out;
}

/** Python scalar / f32 tensor, as torch's __rtruediv__: reciprocal(t) * scalar. */
const rdiv = (scalar: number, t: number): number => f32(f32(1 / t) * f32(scalar));

/**
 * inv_freq and attention_scaling for a forward whose positions reach seqLen - 1
 * (_compute_*_parameters + dynamic_rope_update).
 */
export function refRopeParameters(rope: RefRope, seqLen: number): { invFreq: Float32Array; attentionScaling: number } {
  const pw = basePowers(rope.base, rope.dim);
  if (rope.type === "default") return { invFreq: pw.map((p) => f32(1 / p)), attentionScaling: 1 };
  if (rope.type === "longrope") {
    const ext = seqLen > rope.originalMax ? rope.long : rope.short;
    return { invFreq: pw.map((p, j) => f32(1 / f32(f32(ext[j]) * p))), attentionScaling: rope.attentionFactor };
  }
  // _compute_llama3_parameters, op by op.
  const invFreq = pw.map((p) => f32(1 / p));
  const lowFreqWavelen = f32(rope.oldContext / rope.low);
  const highFreqWavelen = f32(rope.oldContext / rope.high);
  const wavelen = invFreq.map((x) => rdiv(2 * Math.PI, x));
  const invFreqLlama = invFreq.map((x, j) => (wavelen[j] > lowFreqWavelen ? f32(x / f32(rope.factor)) : x));
  const smoothFactor = wavelen.map((w) => f32(f32(rdiv(rope.oldContext, w) - f32(rope.low)) / f32(rope.high - rope.low)));
  const smoothed = invFreqLlama.map((x, j) => {
    const s = smoothFactor[j];
    return f32(f32(f32(f32(1 - s) * x) / f32(rope.factor)) + f32(s * x));
  });
  const out = invFreqLlama.map((x, j) => {
    const isMedium = !(wavelen[j] < highFreqWavelen) && !(wavelen[j] > lowFreqWavelen);
    return isMedium ? smoothed[j] : x;
  });
  return { invFreq: out, attentionScaling: 1 };
}

// ---------------------------------------------------------------- weights

interface RefLayer {
  inputNorm: Float32Array;
  postNorm: Float32Array;
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  gate: Linear;
  up: Linear;
  down: Linear;
}

export interface RefDecoder {
  config: RefDecoderConfig;
  embed: Float32Array;
  layers: RefLayer[];
  norm: Float32Array;
  lmHead: Float32Array;
  unused: string[];
}

export function loadRefDecoder(dir: string): RefDecoder {
  const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  let gen: Json = {};
  try {
    gen = JSON.parse(readFileSync(join(dir, "generation_config.json"), "utf8"));
  } catch {
    gen = {};
  }
  return buildRefDecoder(refDecoderConfig(cfg, gen), readSafetensorsDir(dir));
}

export function buildRefDecoder(c: RefDecoderConfig, tensors: Map<string, RefTensor>): RefDecoder {
  const used = new Set<string>();
  const get = (name: string): RefTensor => {
    const t = tensors.get(name);
    if (!t) throw new Error(`reference: missing ${name}`);
    used.add(name);
    return t;
  };
  const opt = (name: string): Float32Array | null => (tensors.has(name) ? get(name).data : null);
  const lin = (w: Float32Array, b: Float32Array | null, outDim: number, inDim: number): Linear => {
    if (w.length !== outDim * inDim) throw new Error(`reference: weight of ${w.length} for ${outDim}x${inDim}`);
    return { weight: w, bias: b, inDim, outDim };
  };
  const H = c.hidden;
  const qd = c.heads * c.headDim;
  const kd = c.kvHeads * c.headDim;
  const I = c.intermediate;
  const layers: RefLayer[] = [];
  for (let i = 0; i < c.layers; i++) {
    const p = `model.layers.${i}`;
    let q: Linear, k: Linear, v: Linear, gate: Linear, up: Linear;
    if (tensors.has(`${p}.self_attn.qkv_proj.weight`)) {
      // Phi3Attention: query_pos = heads * head_dim; key = [query_pos, query_pos + kv * head_dim); value = rest.
      const w = get(`${p}.self_attn.qkv_proj.weight`).data;
      q = lin(w.slice(0, qd * H), null, qd, H);
      k = lin(w.slice(qd * H, (qd + kd) * H), null, kd, H);
      v = lin(w.slice((qd + kd) * H), null, kd, H);
      // Phi3MLP: gate, up_states = gate_up_proj(x).chunk(2, dim=-1).
      const gu = get(`${p}.mlp.gate_up_proj.weight`).data;
      gate = lin(gu.slice(0, I * H), null, I, H);
      up = lin(gu.slice(I * H), null, I, H);
    } else {
      q = lin(get(`${p}.self_attn.q_proj.weight`).data, opt(`${p}.self_attn.q_proj.bias`), qd, H);
      k = lin(get(`${p}.self_attn.k_proj.weight`).data, opt(`${p}.self_attn.k_proj.bias`), kd, H);
      v = lin(get(`${p}.self_attn.v_proj.weight`).data, opt(`${p}.self_attn.v_proj.bias`), kd, H);
      gate = lin(get(`${p}.mlp.gate_proj.weight`).data, opt(`${p}.mlp.gate_proj.bias`), I, H);
      up = lin(get(`${p}.mlp.up_proj.weight`).data, opt(`${p}.mlp.up_proj.bias`), I, H);
    }
    layers.push({
      inputNorm: get(`${p}.input_layernorm.weight`).data,
      postNorm: get(`${p}.post_attention_layernorm.weight`).data,
      q, k, v, gate, up,
      o: lin(get(`${p}.self_attn.o_proj.weight`).data, opt(`${p}.self_attn.o_proj.bias`), H, qd),
      down: lin(get(`${p}.mlp.down_proj.weight`).data, opt(`${p}.mlp.down_proj.bias`), H, I),
    });
  }
  const embed = get("model.embed_tokens.weight").data;
  const lmHead = c.tied ? embed : get("lm_head.weight").data;
  return { config: c, embed, layers, norm: get("model.norm.weight").data, lmHead, unused: [...tensors.keys()].filter((n) => !used.has(n)) };
}

// ---------------------------------------------------------------- forward

export class RefDecoderCache {
  keys: Float32Array[][];
  values: Float32Array[][];
  constructor(layers: number) {
    this.keys = Array.from({ length: layers }, () => []);
    this.values = Array.from({ length: layers }, () => []);
  }
  get length(): number {
    return this.keys[0].length;
  }
}

/** Runs ids at positions cache.length.. through the model; returns the last position's logits. */
export function refDecoderForward(m: RefDecoder, ids: number[], cache: RefDecoderCache): Float32Array {
  const c = m.config;
  const H = c.hidden;
  const hd = c.headDim;
  const L = ids.length;
  const past = cache.length;
  const qd = c.heads * hd;
  const kd = c.kvHeads * hd;
  const groups = c.heads / c.kvHeads;
  const { invFreq, attentionScaling } = refRopeParameters(c.rope, past + L);
  const cosSin = (p: number): { cos: Float32Array; sin: Float32Array } => {
    const cos = new Float32Array(hd);
    const sin = new Float32Array(hd);
    for (let d = 0; d < hd; d++) {
      const angle = f32(invFreq[d % (hd / 2)] * p);
      cos[d] = f32(f32(Math.cos(angle)) * f32(attentionScaling));
      sin[d] = f32(f32(Math.sin(angle)) * f32(attentionScaling));
    }
    return { cos, sin };
  };
  const rot = Array.from({ length: L }, (_, i) => cosSin(past + i));

  let x = new Float32Array(L * H);
  ids.forEach((id, i) => x.set(m.embed.subarray(id * H, (id + 1) * H), i * H));
  for (let li = 0; li < c.layers; li++) {
    const layer = m.layers[li];
    const h = rmsNorm(x, L, H, layer.inputNorm, c.eps);
    const q = linear(h, L, layer.q);
    const k = linear(h, L, layer.k);
    const v = linear(h, L, layer.v);
    for (let i = 0; i < L; i++) {
      for (let a = 0; a < c.heads; a++) applyRotaryInPlace(q, i * qd + a * hd, hd, rot[i].cos, rot[i].sin);
      for (let a = 0; a < c.kvHeads; a++) applyRotaryInPlace(k, i * kd + a * hd, hd, rot[i].cos, rot[i].sin);
      cache.keys[li].push(k.slice(i * kd, (i + 1) * kd));
      cache.values[li].push(v.slice(i * kd, (i + 1) * kd));
    }
    const window = c.windows[li];
    const attn = new Float32Array(L * qd);
    for (let a = 0; a < c.heads; a++) {
      const g = Math.floor(a / groups);
      for (let i = 0; i < L; i++) {
        const qi = past + i;
        const ks: Float32Array[] = [];
        const vs: Float32Array[] = [];
        for (let j = 0; j <= qi; j++) {
          if (window !== null && !(j > qi - window)) continue;
          ks.push(cache.keys[li][j].subarray(g * hd, (g + 1) * hd));
          vs.push(cache.values[li][j].subarray(g * hd, (g + 1) * hd));
        }
        attendOne(q.subarray(i * qd + a * hd, i * qd + (a + 1) * hd), ks, vs, hd ** -0.5, attn, i * qd + a * hd);
      }
    }
    const o = linear(attn, L, layer.o);
    x = x.map((val, i) => val + o[i]);
    const h2 = rmsNorm(x, L, H, layer.postNorm, c.eps);
    const gate = linear(h2, L, layer.gate);
    const up = linear(h2, L, layer.up);
    const prod = gate.map((gv, i) => f32(silu(gv)) * up[i]);
    const down = linear(prod, L, layer.down);
    x = x.map((val, i) => val + down[i]);
  }
  const last = rmsNorm(x.subarray((L - 1) * H), 1, H, m.norm, c.eps);
  const logits = new Float32Array(c.vocab);
  for (let t = 0; t < c.vocab; t++) {
    let acc = 0;
    for (let d = 0; d < H; d++) acc += last[d] * m.lmHead[t * H + d];
    logits[t] = acc;
  }
  return logits;
}

export function refArgmax(a: Float32Array): number {
  let best = 0;
  for (let i = 1; i < a.length; i++) if (a[i] > a[best]) best = i;
  return best;
}

/**
 * Greedy generation: prefill, then one token per step, stopping after an eos id. `recomputedAt`
 * lists the indices in `tokens` of the tokens whose step ran the whole sequence from an empty
 * cache (Phi-3's rope switch).
 */
export function refDecoderGreedy(m: RefDecoder, prompt: number[], count: number): { tokens: number[]; firstLogits: Float32Array; lastLogits: Float32Array; recomputedAt: number[] } {
  let cache = new RefDecoderCache(m.config.layers);
  const firstLogits = refDecoderForward(m, prompt, cache);
  let lastLogits = firstLogits;
  const tokens = [refArgmax(firstLogits)];
  const recomputedAt: number[] = [];
  const o = m.config.recomputeAt;
  while (tokens.length < count && !m.config.eos.includes(tokens[tokens.length - 1])) {
    const inputIds = [...prompt, ...tokens];
    if (o !== null && inputIds.length >= o + 1 && cache.length <= o) {
      cache = new RefDecoderCache(m.config.layers);
      recomputedAt.push(tokens.length);
      lastLogits = refDecoderForward(m, inputIds, cache);
    } else {
      lastLogits = refDecoderForward(m, [tokens[tokens.length - 1]], cache);
    }
    tokens.push(refArgmax(lastLogits));
  }
  return { tokens, firstLogits, lastLogits, recomputedAt };
}
