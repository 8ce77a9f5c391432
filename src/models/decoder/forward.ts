// The decoder forward (LlamaModel + lm_head shape): per layer, input norm fused into the q|k|v
// projection, RoPE from the rope spec's inv_freq table and the KV append in one dispatch,
// causal (or sliding-window) attention over the cache, o_proj adding into the residual stream,
// post-attention norm fused into gate|up, SiLU-gated product, down_proj adding into the residual.
// Layers listed in config.crossAttentionLayers are gated cross-attention layers (mllama): they read
// the vision K/V and mask rows the caller passes (opts.cross), keep no KV cache, and are identity
// without them. Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { expectDtype, expectShape, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../../gpu/transfer.ts";
import { siluMulFused } from "../../ops/activation.ts";
import { attentionDecode, attentionPrefill, type AttentionMask } from "../../ops/attention.ts";
import type { KvCache } from "../../ops/kv_cache.ts";
import { linear } from "../../ops/linear.ts";
import { rmsNorm } from "../../ops/rms_norm.ts";
import { ropeAppendKv } from "../../ops/rope.ts";
import type { RopeTables } from "../common/rope.ts";
import { isCrossLayer, selfAttentionLayerCount, type DecoderConfig } from "./config.ts";
import { crossAttentionLayer, type CrossAttentionMask, type CrossKv } from "./cross_attention.ts";
import type { DecoderWeights } from "./weights.ts";

export interface DecoderForwardOptions {
  /**
   * Rows whose logits are computed: "last" (prefill / decode, default), "all", or "none" (a prefill
   * chunk before the last only fills the caches: no final norm, no lm_head, null returned).
   */
  logits?: "last" | "all" | "none";
  /**
   * What the cross-attention layers read (config.crossAttentionLayers): per cross layer in order its
   * vision K/V, and this chunk's mask rows. Absent: the cross layers are identity (a text-only
   * mllama request: transformers skips them when there are no cross-attention states).
   */
  cross?: { kv: readonly CrossKv[]; mask: CrossAttentionMask } | null;
}

/**
 * Keys each of S query rows sees under a sliding window: query s (cache index past + s) sees
 * (past + s - window, past + s]; u32 [S, 2] of [lo, hi).
 */
export function windowRanges(past: number, S: number, window: number): Uint32Array {
  const r = new Uint32Array(2 * S);
  for (let s = 0; s < S; s++) {
    const p = past + s;
    r[2 * s] = Math.max(0, p - window + 1);
    r[2 * s + 1] = p + 1;
  }
  return r;
}

/**
 * Runs L new tokens through the decoder. x f32 [L, hidden] is the residual stream (overwritten in
 * place, not released). positions: i32 [rows, L] with one row per rope section (1 for text-only
 * families, 3 for M-RoPE). rope: the inv_freq table and scaling of this forward (ropeTables).
 * caches: one per self-attention layer (cross layers keep none), all holding `past` =
 * caches[0].length rows; this chunk is appended.
 * Returns f32 logits [rows, vocab] (caller releases), or null for logits "none". Sliding-window key
 * ranges are uploaded on entry, so `rec` must not hold dispatches that still read buffers the caller
 * released into the pool.
 */
export function decoderForward(
  rec: Recorder,
  cfg: DecoderConfig,
  w: DecoderWeights,
  x: Tensor,
  positions: Tensor,
  rope: RopeTables,
  caches: readonly KvCache[],
  opts: DecoderForwardOptions & { logits: "none" },
): null;
export function decoderForward(
  rec: Recorder,
  cfg: DecoderConfig,
  w: DecoderWeights,
  x: Tensor,
  positions: Tensor,
  rope: RopeTables,
  caches: readonly KvCache[],
  opts?: DecoderForwardOptions & { logits?: "last" | "all" },
): Tensor;
export function decoderForward(
  rec: Recorder,
  cfg: DecoderConfig,
  w: DecoderWeights,
  x: Tensor,
  positions: Tensor,
  rope: RopeTables,
  caches: readonly KvCache[],
  opts?: DecoderForwardOptions,
): Tensor | null;
export function decoderForward(
  rec: Recorder,
  cfg: DecoderConfig,
  w: DecoderWeights,
  x: Tensor,
  positions: Tensor,
  rope: RopeTables,
  caches: readonly KvCache[],
  opts: DecoderForwardOptions = {},
): Tensor | null {
  const ctx = rec.ctx;
  const H = cfg.hiddenSize;
  const D = cfg.headDim;
  const Hq = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const W = (Hq + 2 * Hkv) * D;
  expectDtype("decoder.x", x, ["f32"]);
  expectShape("decoder.x", x, [null, H]);
  const L = x.shape[0];
  if (L < 1) throw new WebvlmError("bad_request", "decoder: empty chunk");
  const numSelf = selfAttentionLayerCount(cfg);
  if (caches.length !== numSelf) throw new WebvlmError("internal", `decoder: ${caches.length} caches for ${numSelf} self-attention layers`);
  const cross = opts.cross ?? null;
  if (cross && cross.kv.length !== w.crossLayers.length) {
    throw new WebvlmError("internal", `decoder: ${cross.kv.length} cross K/V for ${w.crossLayers.length} cross-attention layers`);
  }
  const past = caches[0].length;
  if (caches.some((c) => c.length !== past)) throw new WebvlmError("internal", "decoder: layer caches disagree on their length");
  if (past + L > caches[0].maxSeq) {
    throw new WebvlmError("context_length_exceeded", `${past + L} tokens exceed the cache's ${caches[0].maxSeq}`, { needed: past + L, maxSeq: caches[0].maxSeq });
  }
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));

  // Sliding windows that cut keys in this chunk: one key-range table per distinct window (prefill).
  // Uploaded before anything is recorded: a queue write into a buffer released earlier in this
  // recording would land before the recorded dispatches that still use that buffer.
  const rangeTables = new Map<number, Tensor>();
  if (L > 1) {
    for (const window of new Set(cfg.slidingWindow)) {
      if (window !== null && past + L > window) {
        rangeTables.set(window, uploadTensor(ctx, windowRanges(past, L, window), [L, 2], "u32", "decoder.window_ranges"));
      }
    }
  }
  const maskFor = (window: number | null): AttentionMask => {
    const t = window === null ? undefined : rangeTables.get(window);
    return t ? { kind: "ranges", ranges: t, kvLength: past + L } : { kind: "causal", past };
  };

  try {
    let selfIndex = 0;
    let crossIndex = 0;
    for (let li = 0; li < cfg.numLayers; li++) {
      if (isCrossLayer(cfg, li)) {
        const ci = crossIndex++;
        if (cross) {
          const attn = { hiddenSize: H, numHeads: Hq, numKvHeads: Hkv, headDim: D, rmsNormEps: cfg.rmsNormEps };
          crossAttentionLayer(rec, attn, w.crossLayers[ci], x, cross.kv[ci], cross.mask);
        }
        continue;
      }
      const lw = w.layers[selfIndex];
      const cache = caches[selfIndex++];
      const window = cfg.slidingWindow[li];
      const qkv = linear(rec, x, lw.qkv, lw.qkvBias ?? undefined, undefined, { rmsNorm: { weight: lw.inputNorm, eps: cfg.rmsNormEps } });
      ropeAppendKv(rec, qkv, positions, cache, past, {
        numQHeads: Hq,
        headDim: D,
        rowStride: W,
        invFreq: rope.invFreq,
        scaling: rope.scaling,
        sections: cfg.rope.sections,
      });
      const q = { tensor: qkv, rowStride: W, colOffset: 0 };
      let attn: Tensor;
      if (L === 1) {
        const lo = window === null ? 0 : Math.max(0, past - window + 1);
        attn = attentionDecode(rec, q, cache, past + 1, { numHeads: Hq, keyRange: lo > 0 ? [lo, past + 1] : undefined });
      } else {
        attn = attentionPrefill(rec, q, { tensor: cache.k }, { tensor: cache.v }, { numHeads: Hq, numKvHeads: Hkv, headDim: D, mask: maskFor(window) });
      }
      free(qkv);
      linear(rec, attn, lw.o, lw.oBias ?? undefined, x, { accumulate: true });
      free(attn);
      const gu = linear(rec, x, lw.gateUp, lw.gateUpBias ?? undefined, undefined, { rmsNorm: { weight: lw.postNorm, eps: cfg.rmsNormEps } });
      const act = siluMulFused(rec, gu);
      free(gu);
      linear(rec, act, lw.down, lw.downBias ?? undefined, x, { accumulate: true });
      free(act);
    }
  } finally {
    // Released once recorded: later users of these buffers come after this forward in stream order.
    for (const t of rangeTables.values()) free(t);
  }

  if (opts.logits === "none") return null;
  let rows = x;
  if ((opts.logits ?? "last") === "last" && L > 1) {
    rows = allocTensor(ctx, [1, H], "f32", "decoder.last_row");
    rec.copy({ buffer: x.buffer, offset: x.offset + (L - 1) * H * 4, size: H * 4 }, rows);
  }
  const normed = rmsNorm(rec, rows, w.norm, cfg.rmsNormEps);
  if (rows !== x) free(rows);
  const logits = linear(rec, normed, w.lmHead);
  free(normed);
  return logits;
}
