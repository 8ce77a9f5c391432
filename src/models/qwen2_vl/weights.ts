// Qwen2-VL checkpoint -> GPU weights. One table of checkpoint names (kept
// verbatim, both spellings), tensors streamed to the GPU one at a time in the
// requested format, shapes checked against the config before anything is read.
import type { GpuContext } from "../../gpu/device.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import type { Qwen2VLConfig } from "./config.ts";
import type { LinearWeight, TensorSource, WeightFormats, WeightLoadOptions } from "../common/source.ts";
import { releaseTensors, resolveFormats, WeightLoader, type WeightMaker } from "../common/weight_loader.ts";
import { decoderTensorTable } from "../decoder/names.ts";
import { buildDecoderWeights, type DecoderWeights } from "../decoder/weights.ts";
import { qwen2VLDecoderConfig } from "./text.ts";

export type { LinearWeight };

export interface VisionBlockWeights {
  norm1: { weight: Tensor; bias: Tensor };
  norm2: { weight: Tensor; bias: Tensor };
  qkv: LinearWeight;
  qkvBias: Tensor;
  proj: LinearWeight;
  projBias: Tensor;
  fc1: LinearWeight;
  fc1Bias: Tensor;
  fc2: LinearWeight;
  fc2Bias: Tensor;
}

export interface VisionWeights {
  /** Conv3d [embed, C, T, P, P] viewed as a [embed, C*T*P*P] linear weight (no bias). */
  patchEmbed: LinearWeight;
  blocks: VisionBlockWeights[];
  lnQ: { weight: Tensor; bias: Tensor };
  mlp0: LinearWeight;
  mlp0Bias: Tensor;
  mlp2: LinearWeight;
  mlp2Bias: Tensor;
}

/** The language model's weights: the shared decoder's. */
export type TextWeights = DecoderWeights;

export interface Qwen2VLWeights {
  text: TextWeights;
  vision: VisionWeights;
  formats: WeightFormats;
  /** Bytes the tensors occupy on the GPU (before pool rounding). */
  gpuBytes: number;
}

// ---------------------------------------------------------------- name table

/**
 * Checkpoint names for a canonical name. Released checkpoints use `model.*` (LLM), `visual.*`
 * and `lm_head.weight`; newer transformers saves `model.language_model.*` and `model.visual.*`.
 */
export function tensorNameCandidates(canonical: string): string[] {
  if (canonical.startsWith("visual.")) return [canonical, "model." + canonical];
  if (canonical.startsWith("model.")) return [canonical, "model.language_model." + canonical.slice("model.".length)];
  return [canonical];
}

export const qwen2VLNames = {
  patchEmbed: "visual.patch_embed.proj.weight",
  block: (i: number) => `visual.blocks.${i}`,
  mergerLnQ: "visual.merger.ln_q",
  mergerMlp0: "visual.merger.mlp.0",
  mergerMlp2: "visual.merger.mlp.2",
} as const;

// ---------------------------------------------------------------- loader

export interface TensorSpec {
  /** Canonical (released-checkpoint) name; see tensorNameCandidates for the other spelling. */
  name: string;
  shape: number[];
  /** Another accepted stored shape with the same element order (the Conv3d patch embedding). */
  alt?: number[];
}

/** Every checkpoint tensor the model reads, with its expected shape, in load order. */
export function qwen2VLTensorTable(c: Qwen2VLConfig): TensorSpec[] {
  const N = qwen2VLNames;
  // The language model's tensors: the shared decoder's table (Qwen2's names and shapes).
  const out: TensorSpec[] = decoderTensorTable(qwen2VLDecoderConfig(c.text)).map(({ name, shape }) => ({ name, shape }));
  const v = c.vision;
  const e = v.embedDim;
  const patchDim = v.inChannels * v.temporalPatchSize * v.patchSize * v.patchSize;
  out.push({ name: N.patchEmbed, shape: [e, patchDim], alt: [e, v.inChannels, v.temporalPatchSize, v.patchSize, v.patchSize] });
  for (let i = 0; i < v.depth; i++) {
    const p = N.block(i);
    for (const k of ["norm1", "norm2"]) out.push({ name: `${p}.${k}.weight`, shape: [e] }, { name: `${p}.${k}.bias`, shape: [e] });
    const lin: [string, number, number][] = [["attn.qkv", 3 * e, e], ["attn.proj", e, e], ["mlp.fc1", v.mlpHiddenDim, e], ["mlp.fc2", e, v.mlpHiddenDim]];
    for (const [k, rows, cols] of lin) out.push({ name: `${p}.${k}.weight`, shape: [rows, cols] }, { name: `${p}.${k}.bias`, shape: [rows] });
  }
  const merged = e * v.spatialMergeSize ** 2;
  out.push(
    { name: `${N.mergerLnQ}.weight`, shape: [e] }, { name: `${N.mergerLnQ}.bias`, shape: [e] },
    { name: `${N.mergerMlp0}.weight`, shape: [merged, merged] }, { name: `${N.mergerMlp0}.bias`, shape: [merged] },
    { name: `${N.mergerMlp2}.weight`, shape: [v.hiddenSize, merged] }, { name: `${N.mergerMlp2}.bias`, shape: [v.hiddenSize] },
  );
  return out;
}

/**
 * Loads every tensor of a Qwen2-VL checkpoint onto the GPU. Checks every tensor's presence and
 * shape before reading any (missing_tensor / shape_mismatch name the tensor). On failure,
 * tensors already uploaded are returned to the pool.
 */
export async function loadQwen2VLWeights(
  gpu: GpuContext,
  config: Qwen2VLConfig,
  source: TensorSource,
  opts: WeightLoadOptions = {},
): Promise<Qwen2VLWeights> {
  const formats = resolveFormats(opts);
  const table = qwen2VLTensorTable(config);
  const L = new WeightLoader(gpu, source, table.length, opts, tensorNameCandidates);
  // Every name and shape first: a bad checkpoint fails before anything is read or uploaded.
  for (const spec of table) L.check(spec.name, spec.shape, spec.alt);
  return buildQwen2VLWeights(gpu, config, L, formats);
}

/**
 * The weight set's structure: every tensor made by `L` in load order (fused q|k|v and gate|up,
 * tied lm_head shared). On failure, tensors already made are returned to the pool.
 */
export async function buildQwen2VLWeights(gpu: GpuContext, config: Qwen2VLConfig, L: WeightMaker, formats: WeightFormats): Promise<Qwen2VLWeights> {
  const uploaded: (Tensor | LinearWeight)[] = [];
  const keep = <T extends Tensor | LinearWeight>(x: T): T => (uploaded.push(x), x);
  try {
    const text = await buildDecoderWeights(gpu, qwen2VLDecoderConfig(config.text), L, formats);
    uploaded.push(...textItems(text));
    const N = qwen2VLNames;
    const v = config.vision;
    const e = v.embedDim;
    const vf = formats.vision;
    const patchDim = v.inChannels * v.temporalPatchSize * v.patchSize * v.patchSize;
    const conv5d = [e, v.inChannels, v.temporalPatchSize, v.patchSize, v.patchSize];
    // The Conv3d kernel equals its stride, so it is a [embed, patchDim] linear on patch rows.
    const patchEmbed = keep(await L.matrix([{ canonical: N.patchEmbed, rows: e }], patchDim, vf, "patch_embed", conv5d));
    const blocks: VisionBlockWeights[] = [];
    for (let i = 0; i < v.depth; i++) {
      const p = N.block(i);
      const ln = async (k: string): Promise<{ weight: Tensor; bias: Tensor }> => ({
        weight: keep(await L.vector([`${p}.${k}.weight`], [e], `V${i}.${k}.weight`)),
        bias: keep(await L.vector([`${p}.${k}.bias`], [e], `V${i}.${k}.bias`)),
      });
      const lin = async (k: string, rows: number, cols: number): Promise<[LinearWeight, Tensor]> => [
        keep(await L.matrix([{ canonical: `${p}.${k}.weight`, rows }], cols, vf, `V${i}.${k}`)),
        keep(await L.vector([`${p}.${k}.bias`], [rows], `V${i}.${k}.bias`)),
      ];
      const norm1 = await ln("norm1");
      const norm2 = await ln("norm2");
      const [qkv, qkvBias] = await lin("attn.qkv", 3 * e, e);
      const [proj, projBias] = await lin("attn.proj", e, e);
      const [fc1, fc1Bias] = await lin("mlp.fc1", v.mlpHiddenDim, e);
      const [fc2, fc2Bias] = await lin("mlp.fc2", e, v.mlpHiddenDim);
      blocks.push({ norm1, norm2, qkv, qkvBias, proj, projBias, fc1, fc1Bias, fc2, fc2Bias });
    }
    const merged = e * v.spatialMergeSize ** 2;
    const lnQ = {
      weight: keep(await L.vector([`${N.mergerLnQ}.weight`], [e], "merger.ln_q.weight")),
      bias: keep(await L.vector([`${N.mergerLnQ}.bias`], [e], "merger.ln_q.bias")),
    };
    const mlp0 = keep(await L.matrix([{ canonical: `${N.mergerMlp0}.weight`, rows: merged }], merged, vf, "merger.mlp.0"));
    const mlp0Bias = keep(await L.vector([`${N.mergerMlp0}.bias`], [merged], "merger.mlp.0.bias"));
    const mlp2 = keep(await L.matrix([{ canonical: `${N.mergerMlp2}.weight`, rows: v.hiddenSize }], merged, vf, "merger.mlp.2"));
    const mlp2Bias = keep(await L.vector([`${N.mergerMlp2}.bias`], [v.hiddenSize], "merger.mlp.2.bias"));

    return {
      text,
      vision: { patchEmbed, blocks, lnQ, mlp0, mlp0Bias, mlp2, mlp2Bias },
      formats,
      gpuBytes: L.gpuBytes,
    };
  } catch (err) {
    releaseTensors(gpu, uploaded);
    throw err;
  }
}

/** Returns every weight buffer to the pool (the tied lm_head once). */
export function releaseQwen2VLWeights(gpu: GpuContext, w: Qwen2VLWeights): void {
  const items: (Tensor | LinearWeight)[] = textItems(w.text);
  const v = w.vision;
  items.push(v.patchEmbed, v.lnQ.weight, v.lnQ.bias, v.mlp0, v.mlp0Bias, v.mlp2, v.mlp2Bias);
  for (const b of v.blocks) {
    items.push(b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias, b.qkv, b.qkvBias, b.proj, b.projBias, b.fc1, b.fc1Bias, b.fc2, b.fc2Bias);
  }
  releaseTensors(gpu, items);
}

/** Every tensor of the language model's weights (the tied lm_head is the embedding itself). */
function textItems(t: TextWeights): (Tensor | LinearWeight)[] {
  const items: (Tensor | LinearWeight | null)[] = [t.embed, t.norm, t.lmHead];
  for (const l of t.layers) items.push(l.inputNorm, l.qkv, l.qkvBias, l.o, l.oBias, l.postNorm, l.gateUp, l.gateUpBias, l.down, l.downBias);
  return items.filter((x): x is Tensor | LinearWeight => x !== null);
}
