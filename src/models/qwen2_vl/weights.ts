// Qwen2-VL checkpoint -> GPU weights. One table of checkpoint names (kept
// verbatim, both spellings), tensors streamed to the GPU one at a time in the
// requested format, shapes checked against the config before anything is read.
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { byteSize, type Tensor } from "../../gpu/tensor.ts";
import { uploadTensor } from "../../gpu/transfer.ts";
import type { SafetensorsCheckpoint } from "../../loader/safetensors.ts";
import { rowsPerShard, type ShardedWeight, type Weight, type WeightFormat } from "../../quant/formats.ts";
import { maxWeightBytes, quantize, shardWeight, uploadQuantized, uploadWeight, weightTensors } from "../../quant/pack.ts";
import type { PackedWeightCache } from "../../quant/packed_cache.ts";
import type { Qwen2VLConfig } from "./config.ts";
import type { LinearWeight, TensorSource, WeightFormats, WeightLoadOptions } from "../common/source.ts";
import { DEFAULT_FORMATS } from "../common/source.ts";

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

export interface TextLayerWeights {
  inputNorm: Tensor;
  /** q_proj | k_proj | v_proj rows stacked: [(Hq + 2 Hkv) * D, hidden], one GEMV per token. */
  qkv: LinearWeight;
  qkvBias: Tensor;
  o: LinearWeight;
  postNorm: Tensor;
  /** gate_proj | up_proj rows stacked: [2 I, hidden] (siluMulFused reads both halves). */
  gateUp: LinearWeight;
  down: LinearWeight;
}

export interface TextWeights {
  /** embed_tokens [vocab, hidden]. */
  embed: LinearWeight;
  layers: TextLayerWeights[];
  norm: Tensor;
  /** lm_head [vocab, hidden]; the same object as `embed` when the embeddings are tied. */
  lmHead: LinearWeight;
}

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
  embed: "model.embed_tokens.weight",
  norm: "model.norm.weight",
  lmHead: "lm_head.weight",
  layer: (i: number) => {
    const p = `model.layers.${i}`;
    return {
      inputNorm: `${p}.input_layernorm.weight`,
      postNorm: `${p}.post_attention_layernorm.weight`,
      q: `${p}.self_attn.q_proj`,
      k: `${p}.self_attn.k_proj`,
      v: `${p}.self_attn.v_proj`,
      o: `${p}.self_attn.o_proj.weight`,
      gate: `${p}.mlp.gate_proj.weight`,
      up: `${p}.mlp.up_proj.weight`,
      down: `${p}.mlp.down_proj.weight`,
    };
  },
  patchEmbed: "visual.patch_embed.proj.weight",
  block: (i: number) => `visual.blocks.${i}`,
  mergerLnQ: "visual.merger.ln_q",
  mergerMlp0: "visual.merger.mlp.0",
  mergerMlp2: "visual.merger.mlp.2",
} as const;

// ---------------------------------------------------------------- loader

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Tensors to upload as one row-stacked matrix (fused q|k|v, gate|up). */
export interface MatrixPart {
  canonical: string;
  rows: number;
}

/**
 * Makes the GPU tensors of a weight set by canonical name: WeightLoader reads them from a
 * checkpoint; benchmarks fill them with random values on the GPU (bench/random_weights.ts).
 */
export interface WeightMaker {
  /** Bytes of the tensors made so far (before pool rounding). */
  readonly gpuBytes: number;
  /** An f32 vector (norm weight or bias), or several concatenated (fused biases). */
  vector(canonicals: string[], lengths: number[], label: string): Promise<Tensor>;
  /** A [sum rows, cols] matrix in `format` from row-stacked tensors; `alt`: another accepted stored shape. */
  matrix(parts: MatrixPart[], cols: number, format: WeightFormat, label: string, alt?: readonly number[]): Promise<LinearWeight>;
}

class WeightLoader implements WeightMaker {
  readonly maxBytes: number;
  gpuBytes = 0;
  done = 0;

  constructor(
    readonly gpu: GpuContext,
    readonly source: TensorSource,
    readonly total: number,
    readonly opts: WeightLoadOptions,
  ) {
    this.maxBytes = opts.maxBindingBytes ?? maxWeightBytes(gpu);
  }

  /** The checkpoint's name for a canonical one; missing_tensor naming it otherwise. */
  resolve(canonical: string): string {
    const candidates = tensorNameCandidates(canonical);
    const found = candidates.find((n) => this.source.has(n));
    if (!found) {
      throw new WebvlmError("missing_tensor", `tensor "${canonical}" not found in the checkpoint (looked for ${candidates.join(", ")})`, {
        tensor: canonical,
        candidates,
      });
    }
    return found;
  }

  /** Resolves and checks the stored shape; `alt` is a second accepted shape (same element order). */
  check(canonical: string, shape: readonly number[], alt?: readonly number[]): string {
    const name = this.resolve(canonical);
    const got = this.source.shape(name);
    if (!sameShape(got, shape) && !(alt && sameShape(got, alt))) {
      throw new WebvlmError("shape_mismatch", `tensor "${name}" has shape [${got.join(", ")}], expected [${shape.join(", ")}]`, {
        tensor: name,
        shape: [...got],
        expected: [...shape],
      });
    }
    return name;
  }

  async read(name: string, count: number): Promise<Float32Array> {
    const v = await this.source.read(name);
    if (v.length !== count) {
      throw new WebvlmError("shape_mismatch", `tensor "${name}": read ${v.length} values, expected ${count}`, { tensor: name });
    }
    return v;
  }

  tick(name: string): void {
    this.done++;
    this.opts.onProgress?.(this.done, this.total, name);
  }

  count(t: Tensor): Tensor {
    this.gpuBytes += byteSize(t);
    return t;
  }

  countWeight<W extends LinearWeight>(w: W): W {
    for (const t of tensorsOf([w])) this.count(t);
    return w;
  }

  /** An f32 vector (norm weight or bias), or several concatenated (fused biases). */
  async vector(canonicals: string[], lengths: number[], label: string): Promise<Tensor> {
    const total = lengths.reduce((a, b) => a + b, 0);
    const out = new Float32Array(total);
    let off = 0;
    for (let i = 0; i < canonicals.length; i++) {
      const name = this.check(canonicals[i], [lengths[i]]);
      out.set(await this.read(name, lengths[i]), off);
      off += lengths[i];
      this.tick(name);
    }
    return this.count(uploadTensor(this.gpu, out, [total], "f32", label));
  }

  /**
   * A [sum rows, cols] matrix from row-stacked checkpoint tensors, in `format`; split into row
   * shards when one tensor would exceed maxBytes. `alt` maps a canonical name to an accepted
   * alternative stored shape (the Conv3d patch embedding).
   */
  async matrix(parts: MatrixPart[], cols: number, format: WeightFormat, label: string, alt?: readonly number[]): Promise<LinearWeight> {
    const names = parts.map((p) => this.check(p.canonical, [p.rows, cols], alt));
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    const fits = rows <= rowsPerShard(this.maxBytes, cols, format, names[0]);
    if (!fits && parts.length === 1 && this.source.readRows) {
      return this.countWeight(await this.streamShards(names[0], rows, cols, format, label));
    }
    const quantized = format === "q4" || format === "q8";
    const cache = quantized && fits ? this.opts.packedCache : undefined;
    const key = `${names.join("+")}|${format}|${rows}x${cols}`;
    const hit = cache ? await cache.get(key) : undefined;
    if (hit && hit.format === format && hit.rows === rows && hit.cols === cols) {
      for (const n of names) this.tick(n);
      this.opts.onQuantize?.(label, true, hit.data.byteLength + hit.scales.byteLength);
      return this.countWeight(uploadQuantized(this.gpu, hit, label));
    }
    const values = new Float32Array(rows * cols);
    let off = 0;
    for (let i = 0; i < parts.length; i++) {
      values.set(await this.read(names[i], parts[i].rows * cols), off);
      off += parts[i].rows * cols;
    }
    let w: LinearWeight;
    if (quantized && fits) {
      const packed = quantize(values, rows, cols, format);
      w = uploadQuantized(this.gpu, packed, label);
      await cache?.put(key, packed);
      this.opts.onQuantize?.(label, false, packed.data.byteLength + packed.scales.byteLength);
    } else {
      w = fits ? uploadWeight(this.gpu, values, rows, cols, format, label) : shardWeight(this.gpu, values, rows, cols, format, this.maxBytes, label);
    }
    for (const n of names) this.tick(n);
    return this.countWeight(w);
  }

  /** Row shards read and uploaded one at a time (same split as shardWeight). */
  private async streamShards(name: string, rows: number, cols: number, format: WeightFormat, label: string): Promise<ShardedWeight> {
    const perShard = rowsPerShard(this.maxBytes, cols, format, name);
    const shards: { rowStart: number; weight: Weight }[] = [];
    for (let r = 0; r < rows; r += perShard) {
      const n = Math.min(perShard, rows - r);
      const part = await this.source.readRows!(name, r, n);
      if (part.length !== n * cols) throw new WebvlmError("shape_mismatch", `tensor "${name}": rows [${r}, ${r + n}) gave ${part.length} values`, { tensor: name });
      shards.push({ rowStart: r, weight: uploadWeight(this.gpu, part, n, cols, format, `${label}[${shards.length}]`) });
    }
    this.tick(name);
    return { format, rows, cols, shards };
  }
}

function resolveFormats(opts: WeightLoadOptions): WeightFormats {
  const f: WeightFormats = {
    textLinear: opts.textLinear ?? DEFAULT_FORMATS.textLinear,
    vision: opts.vision ?? DEFAULT_FORMATS.vision,
    embedding: opts.embedding ?? DEFAULT_FORMATS.embedding,
  };
  for (const [k, v] of Object.entries(f)) {
    if (!["f32", "f16", "q8", "q4"].includes(v)) throw new WebvlmError("bad_request", `weights: ${k} format ${JSON.stringify(v)} is not f32/f16/q8/q4`);
  }
  return f;
}

export interface TensorSpec {
  /** Canonical (released-checkpoint) name; see tensorNameCandidates for the other spelling. */
  name: string;
  shape: number[];
  /** Another accepted stored shape with the same element order (the Conv3d patch embedding). */
  alt?: number[];
}

/** Every checkpoint tensor the model reads, with its expected shape, in load order. */
export function qwen2VLTensorTable(c: Qwen2VLConfig): TensorSpec[] {
  const t = c.text;
  const H = t.hiddenSize;
  const qDim = t.numHeads * t.headDim;
  const kvDim = t.numKvHeads * t.headDim;
  const N = qwen2VLNames;
  const out: TensorSpec[] = [{ name: N.embed, shape: [t.vocabSize, H] }];
  for (let i = 0; i < t.numLayers; i++) {
    const n = N.layer(i);
    out.push(
      { name: n.inputNorm, shape: [H] },
      { name: `${n.q}.weight`, shape: [qDim, H] }, { name: `${n.k}.weight`, shape: [kvDim, H] }, { name: `${n.v}.weight`, shape: [kvDim, H] },
      { name: `${n.q}.bias`, shape: [qDim] }, { name: `${n.k}.bias`, shape: [kvDim] }, { name: `${n.v}.bias`, shape: [kvDim] },
      { name: n.o, shape: [H, qDim] },
      { name: n.postNorm, shape: [H] },
      { name: n.gate, shape: [t.intermediateSize, H] }, { name: n.up, shape: [t.intermediateSize, H] },
      { name: n.down, shape: [H, t.intermediateSize] },
    );
  }
  out.push({ name: N.norm, shape: [H] });
  if (!t.tieWordEmbeddings) out.push({ name: N.lmHead, shape: [t.vocabSize, H] });
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
  const L = new WeightLoader(gpu, source, table.length, opts);
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
    const t = config.text;
    const H = t.hiddenSize;
    const qDim = t.numHeads * t.headDim;
    const kvDim = t.numKvHeads * t.headDim;
    const N = qwen2VLNames;
    const embed = keep(await L.matrix([{ canonical: N.embed, rows: t.vocabSize }], H, formats.embedding, "embed_tokens"));
    const layers: TextLayerWeights[] = [];
    for (let i = 0; i < t.numLayers; i++) {
      const n = N.layer(i);
      const fmt = formats.textLinear;
      layers.push({
        inputNorm: keep(await L.vector([n.inputNorm], [H], `L${i}.input_layernorm`)),
        qkv: keep(await L.matrix([{ canonical: `${n.q}.weight`, rows: qDim }, { canonical: `${n.k}.weight`, rows: kvDim }, { canonical: `${n.v}.weight`, rows: kvDim }], H, fmt, `L${i}.qkv`)),
        qkvBias: keep(await L.vector([`${n.q}.bias`, `${n.k}.bias`, `${n.v}.bias`], [qDim, kvDim, kvDim], `L${i}.qkv.bias`)),
        o: keep(await L.matrix([{ canonical: n.o, rows: H }], qDim, fmt, `L${i}.o_proj`)),
        postNorm: keep(await L.vector([n.postNorm], [H], `L${i}.post_attention_layernorm`)),
        gateUp: keep(await L.matrix([{ canonical: n.gate, rows: t.intermediateSize }, { canonical: n.up, rows: t.intermediateSize }], H, fmt, `L${i}.gate_up`)),
        down: keep(await L.matrix([{ canonical: n.down, rows: H }], t.intermediateSize, fmt, `L${i}.down_proj`)),
      });
    }
    const norm = keep(await L.vector([N.norm], [H], "norm"));
    // Tied: HF overwrites lm_head with embed_tokens, so a stored lm_head.weight is ignored.
    const lmHead = t.tieWordEmbeddings ? embed : keep(await L.matrix([{ canonical: N.lmHead, rows: t.vocabSize }], H, formats.embedding, "lm_head"));

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
      text: { embed, layers, norm, lmHead },
      vision: { patchEmbed, blocks, lnQ, mlp0, mlp0Bias, mlp2, mlp2Bias },
      formats,
      gpuBytes: L.gpuBytes,
    };
  } catch (err) {
    releaseTensors(gpu, uploaded);
    throw err;
  }
}

function isLinearWeight(x: Tensor | LinearWeight): x is LinearWeight {
  return "format" in x;
}

/** Every GPU tensor behind a list of tensors / weights. */
export function tensorsOf(items: readonly (Tensor | LinearWeight)[]): Tensor[] {
  const out: Tensor[] = [];
  for (const x of items) {
    if (!isLinearWeight(x)) out.push(x);
    else if ("shards" in x) for (const s of x.shards) out.push(...weightTensors(s.weight));
    else out.push(...weightTensors(x));
  }
  return out;
}

function releaseTensors(gpu: GpuContext, items: readonly (Tensor | LinearWeight)[]): void {
  const seen = new Set<GPUBuffer>();
  for (const t of tensorsOf(items)) {
    if (seen.has(t.buffer)) continue;
    seen.add(t.buffer);
    gpu.pool.release(t.buffer);
  }
}

/** Returns every weight buffer to the pool (the tied lm_head once). */
export function releaseQwen2VLWeights(gpu: GpuContext, w: Qwen2VLWeights): void {
  const items: (Tensor | LinearWeight)[] = [w.text.embed, w.text.norm, w.text.lmHead];
  for (const l of w.text.layers) items.push(l.inputNorm, l.qkv, l.qkvBias, l.o, l.postNorm, l.gateUp, l.down);
  const v = w.vision;
  items.push(v.patchEmbed, v.lnQ.weight, v.lnQ.bias, v.mlp0, v.mlp0Bias, v.mlp2, v.mlp2Bias);
  for (const b of v.blocks) {
    items.push(b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias, b.qkv, b.qkvBias, b.proj, b.projBias, b.fc1, b.fc1Bias, b.fc2, b.fc2Bias);
  }
  releaseTensors(gpu, items);
}
