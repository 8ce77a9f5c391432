// A gated cross-attention decoder layer (transformers' MllamaCrossAttentionDecoderLayer): text
// queries attend to vision states through their own q/k/v/o projections, q and k RMS-normalized
// per head (q_norm / k_norm), no rotary; both residual branches are tanh-gated by learned scalars,
// and the MLP branch is zeroed on "full text rows" (text before any image). The vision keys and
// values are computed once per image set (crossAttentionKv) and kept across decode steps and turns.
// Records into a Recorder; submits nothing.
import type { Recorder } from "../../gpu/recorder.ts";
import { expectDtype, expectShape, reshape, type Tensor } from "../../gpu/tensor.ts";
import { siluMulFused } from "../../ops/activation.ts";
import { attentionPrefill, type EmptyRows } from "../../ops/attention.ts";
import { gatedAdd } from "../../ops/gated_add.ts";
import { linear } from "../../ops/linear.ts";
import { rmsNorm } from "../../ops/rms_norm.ts";
import type { LinearWeight } from "../common/source.ts";

export interface CrossAttentionConfig {
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
}

export interface CrossAttentionLayerWeights {
  inputNorm: Tensor;
  /** cross_attn.q_proj [H * D, hidden]; k_proj / v_proj [Hkv * D, hidden]; o_proj [hidden, H * D]. */
  q: LinearWeight;
  k: LinearWeight;
  v: LinearWeight;
  o: LinearWeight;
  /** cross_attn.q_norm / k_norm weights [D]. */
  qNorm: Tensor;
  kNorm: Tensor;
  /** cross_attn_attn_gate / cross_attn_mlp_gate: 1-element weights (tanh applied on the GPU). */
  attnGate: Tensor;
  mlpGate: Tensor;
  postNorm: Tensor;
  /** gate_proj | up_proj rows stacked [2 I, hidden]. */
  gateUp: LinearWeight;
  down: LinearWeight;
}

/**
 * A layer's keys (normalized) and values over the vision states: [tokens, Hkv * D] each, f32 as
 * crossAttentionKv makes them, or f16 pairs when the caller stores them like an f16 KV cache
 * (mllama: kv_append's packing, rows padded to an even width); attention reads either.
 */
export interface CrossKv {
  k: Tensor;
  v: Tensor;
  length: number;
}

/** k = k_norm(k_proj(states)) per head, v = v_proj(states). The caller keeps and later releases them. */
export function crossAttentionKv(rec: Recorder, cfg: CrossAttentionConfig, w: CrossAttentionLayerWeights, states: Tensor): CrossKv {
  expectDtype("crossAttention.states", states, ["f32"]);
  expectShape("crossAttention.states", states, [null, cfg.hiddenSize]);
  const n = states.shape[0];
  const kRaw = linear(rec, states, w.k);
  const k = rmsNorm(rec, reshape(kRaw, [n * cfg.numKvHeads, cfg.headDim]), w.kNorm, cfg.rmsNormEps);
  rec.ctx.pool.release(kRaw.buffer);
  const v = linear(rec, states, w.v);
  return { k: reshape(k, [n, cfg.numKvHeads * cfg.headDim]), v, length: n };
}

export interface CrossAttentionMask {
  /** u32 [L, 2]: the vision keys [lo, hi) each text row may see (hi <= lo: none). */
  ranges: Tensor;
  /** u32 [L]: 0 on full text rows (no image visible), whose MLP branch is zeroed. */
  rowMask: Tensor;
  /**
   * u32 [kv length]: 0 on keys no row may see even inside its range (mllama's padded tiles: an
   * image of 2 tiles leaves tiles 2..T-1 out). Ignored by rows with an empty range under "attendAll".
   */
  keyMask?: Tensor;
  /**
   * Attention output of rows with no visible key. "attendAll" (default) is transformers': such a
   * row's additive mask is multiplied by 0, so it attends to every vision key.
   */
  emptyRows?: EmptyRows;
}

/** One cross-attention layer over x f32 [L, hidden], in place (x is the residual stream). */
export function crossAttentionLayer(
  rec: Recorder, cfg: CrossAttentionConfig, w: CrossAttentionLayerWeights, x: Tensor, kv: CrossKv, mask: CrossAttentionMask,
): void {
  const ctx = rec.ctx;
  expectShape("crossAttention.x", x, [null, cfg.hiddenSize]);
  const L = x.shape[0];
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));
  const h = rmsNorm(rec, x, w.inputNorm, cfg.rmsNormEps);
  const qRaw = linear(rec, h, w.q);
  free(h);
  const q = rmsNorm(rec, reshape(qRaw, [L * cfg.numHeads, cfg.headDim]), w.qNorm, cfg.rmsNormEps);
  free(qRaw);
  const attn = attentionPrefill(rec, { tensor: reshape(q, [L, cfg.numHeads * cfg.headDim]) }, { tensor: kv.k }, { tensor: kv.v }, {
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numKvHeads,
    headDim: cfg.headDim,
    mask: { kind: "ranges", ranges: mask.ranges, kvLength: kv.length },
    keyMask: mask.keyMask ? { keep: mask.keyMask } : undefined,
    emptyRows: mask.emptyRows ?? "attendAll",
  });
  free(q);
  const o = linear(rec, attn, w.o);
  free(attn);
  gatedAdd(rec, x, o, w.attnGate, { out: x });
  free(o);
  const h2 = rmsNorm(rec, x, w.postNorm, cfg.rmsNormEps);
  const gu = linear(rec, h2, w.gateUp);
  free(h2);
  const act = siluMulFused(rec, gu);
  free(gu);
  const m = linear(rec, act, w.down);
  free(act);
  gatedAdd(rec, x, m, w.mlpGate, { out: x, rowMask: mask.rowMask });
  free(m);
}
