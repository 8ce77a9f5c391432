// One configurable ViT encoder stack shared by the families' vision towers: pre-norm blocks
// with LayerNorm or RMSNorm, quick_gelu / gelu (erf) / gelu_tanh MLPs, optional tanh gates on both
// residual branches (mllama's global transformer), bidirectional attention under any mask the
// attention op takes (segments per image, full with a key-padding mask), an optional hook that
// rotates q and k (Qwen2-VL's 2-D rotary), and the hidden states of chosen layers ("taps").
// Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { expectDtype, expectShape, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { gelu, geluTanh, quickGelu } from "../../ops/activation.ts";
import { attentionPrefill, type AttentionMask, type KeyMask } from "../../ops/attention.ts";
import { gatedAdd } from "../../ops/gated_add.ts";
import { layerNorm } from "../../ops/layer_norm.ts";
import { linear } from "../../ops/linear.ts";
import { rmsNorm } from "../../ops/rms_norm.ts";
import type { LinearWeight } from "../common/source.ts";

export type VitNorm = "layer_norm" | "rms_norm";
export type VitActivation = "quick_gelu" | "gelu" | "gelu_tanh";

export interface VitConfig {
  hiddenSize: number;
  numHeads: number;
  headDim: number;
  norm: VitNorm;
  normEps: number;
  act: VitActivation;
}

export interface VitNormWeights {
  weight: Tensor;
  /** LayerNorm only. */
  bias?: Tensor;
}

export interface VitBlockWeights {
  norm1: VitNormWeights;
  norm2: VitNormWeights;
  /** q | k | v rows stacked [3 * heads * headDim, hidden] (separate checkpoint tensors are fused at load). */
  qkv: LinearWeight;
  qkvBias?: Tensor;
  proj: LinearWeight;
  projBias?: Tensor;
  fc1: LinearWeight;
  fc1Bias?: Tensor;
  fc2: LinearWeight;
  fc2Bias?: Tensor;
  /** tanh gates (1-element weights) on the attention and MLP residual branches: x += tanh(g) * branch. */
  gateAttn?: Tensor;
  gateMlp?: Tensor;
}

export interface VitRunOptions {
  mask: AttentionMask;
  keyMask?: KeyMask;
  /** Rotates q and k in the fused qkv rows [n, 3 * heads * headDim] (2-D rotary); none by default. */
  rotate?: (rec: Recorder, qkv: Tensor) => void;
  /**
   * Layer indices whose output hidden state is kept (copied; index i = after block i; -1 = the
   * input), e.g. Phi-3.5's second-to-last layer or mllama's intermediate layers. Returned in order.
   */
  taps?: readonly number[];
}

export function vitNorm(rec: Recorder, cfg: VitConfig, x: Tensor, w: VitNormWeights): Tensor {
  if (cfg.norm === "rms_norm") return rmsNorm(rec, x, w.weight, cfg.normEps);
  if (!w.bias) throw new WebvlmError("internal", "vit: LayerNorm without a bias");
  return layerNorm(rec, x, w.weight, w.bias, cfg.normEps);
}

export function vitActivation(rec: Recorder, act: VitActivation, x: Tensor): Tensor {
  if (act === "quick_gelu") return quickGelu(rec, x);
  if (act === "gelu") return gelu(rec, x);
  return geluTanh(rec, x);
}

/** The config's hidden_act spelled as transformers does, mapped onto the kernels. */
export function parseVitActivation(name: string): VitActivation {
  if (name === "quick_gelu") return "quick_gelu";
  if (name === "gelu") return "gelu";
  if (name === "gelu_pytorch_tanh" || name === "gelu_new" || name === "gelu_fast") return "gelu_tanh";
  throw new WebvlmError("unsupported_feature", `vision hidden_act ${name} is not supported (quick_gelu, gelu, gelu_pytorch_tanh)`);
}

function copyRows(rec: Recorder, x: Tensor): Tensor {
  const t = allocTensor(rec.ctx, x.shape, "f32", "vit.tap");
  rec.copy(x, t);
  return t;
}

/**
 * Runs the blocks over x f32 [n, hidden] in place (x is the residual stream and holds the last
 * block's output afterwards). Returns the tapped hidden states (the caller releases them).
 */
export function runVitBlocks(rec: Recorder, cfg: VitConfig, blocks: readonly VitBlockWeights[], x: Tensor, opts: VitRunOptions): Tensor[] {
  const ctx = rec.ctx;
  const e = cfg.numHeads * cfg.headDim;
  expectDtype("vit.x", x, ["f32"]);
  expectShape("vit.x", x, [null, cfg.hiddenSize]);
  const taps = opts.taps ?? [];
  for (const t of taps) {
    if (!Number.isInteger(t) || t < -1 || t >= blocks.length) throw new WebvlmError("internal", `vit: tap ${t} outside [-1, ${blocks.length})`);
  }
  const tapped = new Map<number, Tensor>();
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));
  if (taps.includes(-1)) tapped.set(-1, copyRows(rec, x));

  blocks.forEach((b, i) => {
    const h = vitNorm(rec, cfg, x, b.norm1);
    const qkv = linear(rec, h, b.qkv, b.qkvBias);
    free(h);
    opts.rotate?.(rec, qkv);
    const view = (col: number) => ({ tensor: qkv, rowStride: 3 * e, colOffset: col });
    const attn = attentionPrefill(rec, view(0), view(e), view(2 * e), {
      numHeads: cfg.numHeads,
      numKvHeads: cfg.numHeads,
      headDim: cfg.headDim,
      mask: opts.mask,
      keyMask: opts.keyMask,
    });
    free(qkv);
    residualAdd(rec, x, attn, b.proj, b.projBias, b.gateAttn);
    free(attn);
    const h2 = vitNorm(rec, cfg, x, b.norm2);
    const f1 = linear(rec, h2, b.fc1, b.fc1Bias);
    free(h2);
    const act = vitActivation(rec, cfg.act, f1);
    free(f1);
    residualAdd(rec, x, act, b.fc2, b.fc2Bias, b.gateMlp);
    free(act);
    if (taps.includes(i)) tapped.set(i, copyRows(rec, x));
  });
  return taps.map((t) => tapped.get(t) as Tensor);
}

/** x += branch W^T + b (fused into the projection), or x += tanh(gate) * (branch W^T + b). */
function residualAdd(rec: Recorder, x: Tensor, branch: Tensor, w: LinearWeight, bias: Tensor | undefined, gate: Tensor | undefined): void {
  if (!gate) {
    linear(rec, branch, w, bias, x, { accumulate: true });
    return;
  }
  const y = linear(rec, branch, w, bias);
  gatedAdd(rec, x, y, gate, { out: x });
  rec.ctx.pool.release(y.buffer);
}
