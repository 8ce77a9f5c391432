// Qwen2-VL language model (Qwen2VLTextModel + lm_head): a Qwen2 decoder with
// M-RoPE, over per-layer KV caches. Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { expectDtype, expectShape, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { siluMulFused } from "../../ops/activation.ts";
import { attentionDecode, attentionPrefill } from "../../ops/attention.ts";
import type { KvCache } from "../../ops/kv_cache.ts";
import { linear } from "../../ops/linear.ts";
import { rmsNorm } from "../../ops/rms_norm.ts";
import { ropeAppendKv } from "../../ops/rope.ts";
import type { Qwen2VLTextConfig } from "./config.ts";
import type { TextWeights } from "./weights.ts";

export interface TextForwardOptions {
  /**
   * Rows of the chunk whose logits are computed: "last" (prefill / decode) or "all".
   * The lm_head over ~152k vocab rows dominates small steps, so only needed rows go through it.
   */
  logits?: "last" | "all";
}

/**
 * Runs L new tokens through the decoder. inputsEmbeds f32 [L, hidden] is the residual stream:
 * o_proj and down_proj add into it in place (overwritten, not released);
 * positions i32 [3, L] (t, h, w rows); caches: one per layer, all holding the same `past`
 * rows (past = caches[0].length), to which this chunk's keys and values are appended.
 * L == 1 takes the decode attention kernel (split over the cache), L > 1 the causal prefill one.
 * Returns f32 logits [rows, vocab], owned by the caller.
 */
export function textForward(
  rec: Recorder,
  cfg: Qwen2VLTextConfig,
  w: TextWeights,
  inputsEmbeds: Tensor,
  positions: Tensor,
  caches: readonly KvCache[],
  opts: TextForwardOptions = {},
): Tensor {
  const ctx = rec.ctx;
  const H = cfg.hiddenSize;
  const D = cfg.headDim;
  const Hq = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const W = (Hq + 2 * Hkv) * D; // fused q | k | v row
  expectDtype("text.inputsEmbeds", inputsEmbeds, ["f32"]);
  expectShape("text.inputsEmbeds", inputsEmbeds, [null, H]);
  const L = inputsEmbeds.shape[0];
  expectDtype("text.positions", positions, ["i32", "u32"]);
  expectShape("text.positions", positions, [3, L]);
  if (L < 1) throw new WebvlmError("bad_request", "text: empty chunk");
  if (caches.length !== cfg.numLayers) throw new WebvlmError("internal", `text: ${caches.length} caches for ${cfg.numLayers} layers`);
  const past = caches[0].length;
  if (caches.some((c) => c.length !== past)) throw new WebvlmError("internal", "text: layer caches disagree on their length");
  if (past + L > caches[0].maxSeq) {
    throw new WebvlmError("context_length_exceeded", `${past + L} tokens exceed the cache's ${caches[0].maxSeq}`, {
      needed: past + L,
      maxSeq: caches[0].maxSeq,
    });
  }
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));

  const x = inputsEmbeds;
  for (let li = 0; li < cfg.numLayers; li++) {
    const lw = w.layers[li];
    const cache = caches[li];
    // input_layernorm fused into the q|k|v projection (decode; prefill normalizes first).
    const qkv = linear(rec, x, lw.qkv, lw.qkvBias, undefined, { rmsNorm: { weight: lw.inputNorm, eps: cfg.rmsNormEps } });
    // RoPE on q and k and the append of k and v to the cache: one dispatch over the fused row.
    ropeAppendKv(rec, qkv, positions, cache, past, {
      numQHeads: Hq,
      headDim: D,
      rowStride: W,
      theta: cfg.ropeTheta,
      sections: cfg.mropeSection,
      restartPerSection: false,
    });
    const q = { tensor: qkv, rowStride: W, colOffset: 0 };
    const attn = L === 1
      ? attentionDecode(rec, q, cache, past + 1, { numHeads: Hq })
      : attentionPrefill(rec, q, { tensor: cache.k }, { tensor: cache.v }, {
        numHeads: Hq,
        numKvHeads: Hkv,
        headDim: D,
        mask: { kind: "causal", past },
      });
    free(qkv);
    // Residual adds fused into the projections: x += attn W_o^T, later x += act W_down^T.
    linear(rec, attn, lw.o, undefined, x, { accumulate: true });
    free(attn);
    const gu = linear(rec, x, lw.gateUp, undefined, undefined, { rmsNorm: { weight: lw.postNorm, eps: cfg.rmsNormEps } });
    const act = siluMulFused(rec, gu);
    free(gu);
    linear(rec, act, lw.down, undefined, x, { accumulate: true });
    free(act);
  }

  // Final norm and lm_head only on the rows whose logits are wanted.
  let rows = x;
  if ((opts.logits ?? "last") === "last" && L > 1) {
    rows = allocTensor(ctx, [1, H], "f32", "text.last_row");
    rec.copy({ buffer: x.buffer, offset: x.offset + (L - 1) * H * 4, size: H * 4 }, rows);
  }
  // The final norm stays a dispatch of its own: fused, each of lm_head's ~152k/R row teams would
  // recompute the mean square and re-read the norm weight.
  const normed = rmsNorm(rec, rows, w.norm, cfg.rmsNormEps);
  if (rows !== x) free(rows);
  const logits = linear(rec, normed, w.lmHead);
  free(normed);
  return logits;
}
