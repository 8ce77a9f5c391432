// Qwen2-VL language model (Qwen2VLTextModel + lm_head): the shared decoder (models/decoder)
// configured as Qwen2 with M-RoPE — q/k/v biases, split projections in the checkpoint fused on
// the GPU, no sliding window, 3-row positions split by mrope_section. Records; submits nothing.
import type { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import type { KvCache } from "../../ops/kv_cache.ts";
import { ropeTables, type RopeTables } from "../common/rope.ts";
import type { DecoderConfig } from "../decoder/config.ts";
import { decoderForward, type DecoderForwardOptions } from "../decoder/forward.ts";
import type { Qwen2VLTextConfig } from "./config.ts";
import type { TextWeights } from "./weights.ts";

export type TextForwardOptions = DecoderForwardOptions;

/** The decoder configuration of a Qwen2-VL text config. */
export function qwen2VLDecoderConfig(t: Qwen2VLTextConfig): DecoderConfig {
  return {
    hiddenSize: t.hiddenSize,
    intermediateSize: t.intermediateSize,
    numLayers: t.numLayers,
    numHeads: t.numHeads,
    numKvHeads: t.numKvHeads,
    headDim: t.headDim,
    vocabSize: t.vocabSize,
    rmsNormEps: t.rmsNormEps,
    qkvBias: true,
    oBias: false,
    mlpBias: false,
    qkvLayout: "split",
    gateUpLayout: "split",
    tieWordEmbeddings: t.tieWordEmbeddings,
    slidingWindow: new Array<null>(t.numLayers).fill(null),
    rope: { kind: "default", theta: t.ropeTheta, dim: t.headDim, sections: [...t.mropeSection] },
    maxPositionEmbeddings: t.maxPositionEmbeddings,
  };
}

/** Per text config: the decoder config and its rope table (default M-RoPE: independent of length). */
const decoders = new WeakMap<Qwen2VLTextConfig, { cfg: DecoderConfig; rope: RopeTables }>();
function decoderOf(t: Qwen2VLTextConfig): { cfg: DecoderConfig; rope: RopeTables } {
  let d = decoders.get(t);
  if (!d) {
    const cfg = qwen2VLDecoderConfig(t);
    d = { cfg, rope: ropeTables(cfg.rope, 1) };
    decoders.set(t, d);
  }
  return d;
}

/**
 * Runs L new tokens through the decoder: inputsEmbeds f32 [L, hidden] is the residual stream
 * (overwritten in place, not released); positions i32 [3, L] (t, h, w rows); caches one per layer
 * holding the same `past` rows. Returns f32 logits [rows, vocab], owned by the caller (null for
 * logits "none").
 */
export function textForward(
  rec: Recorder,
  cfg: Qwen2VLTextConfig,
  w: TextWeights,
  inputsEmbeds: Tensor,
  positions: Tensor,
  caches: readonly KvCache[],
  opts: TextForwardOptions & { logits: "none" },
): null;
export function textForward(
  rec: Recorder,
  cfg: Qwen2VLTextConfig,
  w: TextWeights,
  inputsEmbeds: Tensor,
  positions: Tensor,
  caches: readonly KvCache[],
  opts?: TextForwardOptions & { logits?: "last" | "all" },
): Tensor;
export function textForward(
  rec: Recorder,
  cfg: Qwen2VLTextConfig,
  w: TextWeights,
  inputsEmbeds: Tensor,
  positions: Tensor,
  caches: readonly KvCache[],
  opts?: TextForwardOptions,
): Tensor | null;
export function textForward(
  rec: Recorder,
  cfg: Qwen2VLTextConfig,
  w: TextWeights,
  inputsEmbeds: Tensor,
  positions: Tensor,
  caches: readonly KvCache[],
  opts: TextForwardOptions = {},
): Tensor | null {
  const d = decoderOf(cfg);
  return decoderForward(rec, d.cfg, w, inputsEmbeds, positions, d.rope, caches, opts);
}
