// What an Idefics2 weight set holds, counted from the built tensors: bytes per part (decoder
// linears, embedding + lm_head, vision tower, connector, norms/biases), and which matrices were
// split into row shards because one binding cannot hold them (ShardedWeight), plus — from the same
// shapes — how many would split under other adapters' binding limits.
import { byteSize, type Tensor } from "../src/gpu/tensor.ts";
import { tensorsOf } from "../src/models/common/weight_loader.ts";
import type { LinearWeight } from "../src/models/common/source.ts";
import type { Idefics2Weights } from "../src/models/idefics2/weights.ts";
import { rowsPerShard } from "../src/quant/formats.ts";

export type Idefics2WeightPart = "textLinear" | "embedding" | "vision" | "connector" | "normsAndBiases";

export interface NamedLinear {
  name: string;
  part: Exclude<Idefics2WeightPart, "normsAndBiases">;
  weight: LinearWeight;
}

/** One matrix stored as row shards. */
export interface ShardedTensorReport {
  name: string;
  format: string;
  rows: number;
  cols: number;
  shards: number;
}

export interface ShardCensus {
  /** Binding limit the weights were built under (bytes per tensor). */
  maxBindingBytes: number;
  /** Matrices (linear weights, embeddings, position table, latents) in the model. */
  matrices: number;
  /** Matrices split into row shards, and the shards they became. */
  shardedMatrices: number;
  shards: number;
  sharded: ShardedTensorReport[];
  /** The largest single tensor of any matrix (bytes): what one binding must hold after the split. */
  largestTensorBytes: number;
  /** Computed from the shapes: sharded matrices / shards if the binding limit were `bindingBytes`. */
  atOtherLimits: { bindingBytes: number; shardedMatrices: number; shards: number }[];
}

/** Every matrix of the weight set with a name and its part. */
export function idefics2Matrices(w: Idefics2Weights): NamedLinear[] {
  const out: NamedLinear[] = [];
  const t = w.text;
  out.push({ name: "text.embed_tokens", part: "embedding", weight: t.embed });
  if (t.lmHead !== t.embed) out.push({ name: "text.lm_head", part: "embedding", weight: t.lmHead });
  t.layers.forEach((l, i) => {
    for (const [k, m] of [["qkv", l.qkv], ["o", l.o], ["gate_up", l.gateUp], ["down", l.down]] as const) out.push({ name: `text.${i}.${k}`, part: "textLinear", weight: m });
  });
  const v = w.vision;
  out.push({ name: "vision.patch_embedding", part: "vision", weight: v.embed.patch });
  out.push({ name: "vision.position_embedding", part: "vision", weight: v.embed.positionEmbedding });
  v.blocks.forEach((b, i) => {
    for (const [k, m] of [["qkv", b.qkv], ["out_proj", b.proj], ["fc1", b.fc1], ["fc2", b.fc2]] as const) out.push({ name: `vision.${i}.${k}`, part: "vision", weight: m });
  });
  const c = w.connector;
  out.push({ name: "connector.modality_projection.gate_up", part: "connector", weight: c.projectionGateUp });
  out.push({ name: "connector.modality_projection.down", part: "connector", weight: c.projectionDown });
  out.push({ name: "connector.latents", part: "connector", weight: c.latentsWeight });
  c.layers.forEach((l, j) => {
    for (const [k, m] of [["q", l.q], ["kv", l.kv], ["o", l.o], ["gate_up", l.gateUp], ["down", l.down]] as const) out.push({ name: `connector.${j}.${k}`, part: "connector", weight: m });
  });
  return out;
}

/** Norm weights and biases (f32 vectors). */
function idefics2Vectors(w: Idefics2Weights): Tensor[] {
  const out: Tensor[] = [w.text.norm];
  for (const l of w.text.layers) for (const x of [l.inputNorm, l.postNorm, l.qkvBias, l.oBias, l.gateUpBias, l.downBias]) if (x) out.push(x);
  const v = w.vision;
  out.push(v.embed.patchBias, v.postLayernorm.weight, v.postLayernorm.bias);
  for (const b of v.blocks) {
    for (const x of [b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias, b.qkvBias, b.projBias, b.fc1Bias, b.fc2Bias]) if (x) out.push(x);
  }
  const c = w.connector;
  out.push(c.norm);
  for (const l of c.layers) out.push(l.inputLatentsNorm, l.inputContextNorm, l.postAttentionLayernorm);
  return out;
}

/** Bytes per part (tensor element bytes, before the pool's size rounding); `total` sums them. */
export function idefics2WeightBytes(w: Idefics2Weights): Record<Idefics2WeightPart | "total", number> {
  const bytes = { textLinear: 0, embedding: 0, vision: 0, connector: 0, normsAndBiases: 0, total: 0 };
  const seen = new Set<Tensor>();
  const add = (part: Idefics2WeightPart, ts: Tensor[]): void => {
    for (const t of ts) {
      if (seen.has(t)) continue;
      seen.add(t);
      bytes[part] += byteSize(t);
      bytes.total += byteSize(t);
    }
  };
  for (const m of idefics2Matrices(w)) add(m.part, tensorsOf([m.weight]));
  add("normsAndBiases", idefics2Vectors(w));
  return bytes;
}

/** Standard binding limits to compare against: WebGPU's default 128 MiB, 256 MiB, 1 GiB, 2 GiB - 4 (a common adapter maximum). */
export const REFERENCE_BINDING_LIMITS = [128 * 2 ** 20, 256 * 2 ** 20, 2 ** 30, 2 ** 31 - 4];

export function shardCensus(w: Idefics2Weights, maxBindingBytes: number): ShardCensus {
  const matrices = idefics2Matrices(w);
  const sharded: ShardedTensorReport[] = [];
  let shards = 0;
  let largest = 0;
  for (const m of matrices) {
    for (const t of tensorsOf([m.weight])) largest = Math.max(largest, byteSize(t));
    if ("shards" in m.weight) {
      sharded.push({ name: m.name, format: m.weight.format, rows: m.weight.rows, cols: m.weight.cols, shards: m.weight.shards.length });
      shards += m.weight.shards.length;
    }
  }
  const atOtherLimits = REFERENCE_BINDING_LIMITS.map((bindingBytes) => {
    let n = 0;
    let s = 0;
    for (const { weight, name } of matrices) {
      const perShard = rowsPerShard(bindingBytes, weight.cols, weight.format, name);
      if (weight.rows > perShard) {
        n++;
        s += Math.ceil(weight.rows / perShard);
      }
    }
    return { bindingBytes, shardedMatrices: n, shards: s };
  });
  return { maxBindingBytes, matrices: matrices.length, shardedMatrices: sharded.length, shards, sharded, largestTensorBytes: largest, atOtherLimits };
}
