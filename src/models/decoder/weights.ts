// Decoder checkpoint -> GPU weights, driven by the tensor table (names.ts): every name and shape
// checked before anything is read, then tensors streamed one GPU weight at a time (q|k|v and
// gate|up row-stacked into one matrix whether the checkpoint splits or fuses them), each matrix
// in its requested format. Release walks the same structure.
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { byteSize, type Tensor } from "../../gpu/tensor.ts";
import { uploadTensor } from "../../gpu/transfer.ts";
import { rowsPerShard, type ShardedWeight, type Weight, type WeightFormat } from "../../quant/formats.ts";
import { maxWeightBytes, quantize, shardWeight, uploadQuantized, uploadWeight, weightTensors } from "../../quant/pack.ts";
import { DEFAULT_FORMATS, type TensorSource, type WeightLoadOptions } from "../common/source.ts";
import type { DecoderConfig } from "./config.ts";
import { decoderTensorTable, type Slot, type TensorSpec } from "./names.ts";

export type DecoderLinear = Weight | ShardedWeight;

export interface DecoderLayerWeights {
  inputNorm: Tensor;
  /** q | k | v rows: [(Hq + 2 Hkv) D, hidden]. */
  qkv: DecoderLinear;
  qkvBias: Tensor | null;
  o: DecoderLinear;
  oBias: Tensor | null;
  postNorm: Tensor;
  /** gate | up rows: [2 I, hidden]. */
  gateUp: DecoderLinear;
  gateUpBias: Tensor | null;
  down: DecoderLinear;
  downBias: Tensor | null;
}

export interface DecoderWeights {
  embed: DecoderLinear;
  layers: DecoderLayerWeights[];
  norm: Tensor;
  /** The same object as `embed` when tied. */
  lmHead: DecoderLinear;
  formats: { textLinear: WeightFormat; embedding: WeightFormat };
  gpuBytes: number;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Checks every table entry against the source: missing_tensor / shape_mismatch naming the tensor. */
export function checkDecoderTensors(table: readonly TensorSpec[], source: TensorSource): void {
  for (const s of table) {
    if (!source.has(s.name)) throw new WebvlmError("missing_tensor", `tensor "${s.name}" not found in the checkpoint`, { tensor: s.name });
    const got = source.shape(s.name);
    if (!sameShape(got, s.shape)) {
      throw new WebvlmError("shape_mismatch", `tensor "${s.name}" has shape [${got.join(", ")}], expected [${s.shape.join(", ")}]`, {
        tensor: s.name,
        shape: [...got],
        expected: [...s.shape],
      });
    }
  }
}

function checkFormat(what: string, f: unknown): WeightFormat {
  if (f !== "f32" && f !== "f16" && f !== "q8" && f !== "q4") throw new WebvlmError("bad_request", `weights: ${what} format ${JSON.stringify(f)} is not f32/f16/q8/q4`);
  return f;
}

class Loader {
  readonly maxBytes: number;
  gpuBytes = 0;
  done = 0;
  readonly made: (Tensor | DecoderLinear)[] = [];

  constructor(
    readonly gpu: GpuContext,
    readonly source: TensorSource,
    readonly total: number,
    readonly opts: WeightLoadOptions,
  ) {
    this.maxBytes = opts.maxBindingBytes ?? maxWeightBytes(gpu);
  }

  private tick(name: string): void {
    this.done++;
    this.opts.onProgress?.(this.done, this.total, name);
  }

  private keep<T extends Tensor | DecoderLinear>(x: T): T {
    this.made.push(x);
    for (const t of tensorsOf([x])) this.gpuBytes += byteSize(t);
    return x;
  }

  private async read(s: TensorSpec): Promise<Float32Array> {
    const v = await this.source.read(s.name);
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (v.length !== n) throw new WebvlmError("shape_mismatch", `tensor "${s.name}": read ${v.length} values, expected ${n}`, { tensor: s.name });
    return v;
  }

  /** f32 vector from one or several concatenated tensors (norm weights, biases). */
  async vector(parts: TensorSpec[], label: string): Promise<Tensor> {
    const total = parts.reduce((a, p) => a + p.shape[0], 0);
    const out = new Float32Array(total);
    let off = 0;
    for (const p of parts) {
      out.set(await this.read(p), off);
      off += p.shape[0];
      this.tick(p.name);
    }
    return this.keep(uploadTensor(this.gpu, out, [total], "f32", label));
  }

  /** A [sum rows, cols] matrix from row-stacked tensors, in `format`; row shards past maxBytes. */
  async matrix(parts: TensorSpec[], format: WeightFormat, label: string): Promise<DecoderLinear> {
    const cols = parts[0].shape[1];
    const rows = parts.reduce((a, p) => a + p.shape[0], 0);
    const fits = rows <= rowsPerShard(this.maxBytes, cols, format, parts[0].name);
    if (!fits && parts.length === 1 && this.source.readRows) return this.keep(await this.streamShards(parts[0], format, label));
    const quantized = format === "q4" || format === "q8";
    const cache = quantized && fits ? this.opts.packedCache : undefined;
    const key = `${parts.map((p) => p.name).join("+")}|${format}|${rows}x${cols}`;
    const hit = cache ? await cache.get(key) : undefined;
    if (hit && hit.format === format && hit.rows === rows && hit.cols === cols) {
      for (const p of parts) this.tick(p.name);
      this.opts.onQuantize?.(label, true, hit.data.byteLength + hit.scales.byteLength);
      return this.keep(uploadQuantized(this.gpu, hit, label));
    }
    const values = new Float32Array(rows * cols);
    let off = 0;
    for (const p of parts) {
      values.set(await this.read(p), off);
      off += p.shape[0] * cols;
    }
    let w: DecoderLinear;
    if (quantized && fits) {
      const packed = quantize(values, rows, cols, format);
      w = uploadQuantized(this.gpu, packed, label);
      await cache?.put(key, packed);
      this.opts.onQuantize?.(label, false, packed.data.byteLength + packed.scales.byteLength);
    } else {
      w = fits ? uploadWeight(this.gpu, values, rows, cols, format, label) : shardWeight(this.gpu, values, rows, cols, format, this.maxBytes, label);
    }
    for (const p of parts) this.tick(p.name);
    return this.keep(w);
  }

  /** Row shards read and uploaded one at a time: the whole table never exists as f32 in JS. */
  private async streamShards(s: TensorSpec, format: WeightFormat, label: string): Promise<ShardedWeight> {
    const [rows, cols] = s.shape;
    const perShard = rowsPerShard(this.maxBytes, cols, format, s.name);
    const shards: { rowStart: number; weight: Weight }[] = [];
    for (let r = 0; r < rows; r += perShard) {
      const n = Math.min(perShard, rows - r);
      const part = await this.source.readRows!(s.name, r, n);
      if (part.length !== n * cols) throw new WebvlmError("shape_mismatch", `tensor "${s.name}": rows [${r}, ${r + n}) gave ${part.length} values`, { tensor: s.name });
      shards.push({ rowStart: r, weight: uploadWeight(this.gpu, part, n, cols, format, `${label}[${shards.length}]`) });
    }
    this.tick(s.name);
    return { format, rows, cols, shards };
  }
}

/**
 * Loads a decoder checkpoint onto the GPU. Formats: opts.textLinear for the layers' matrices,
 * opts.embedding for embed_tokens / lm_head (DEFAULT_FORMATS otherwise); norms and biases f32.
 * On failure every tensor already uploaded goes back to the pool.
 */
export async function loadDecoderWeights(gpu: GpuContext, c: DecoderConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<DecoderWeights> {
  const formats = {
    textLinear: checkFormat("textLinear", opts.textLinear ?? DEFAULT_FORMATS.textLinear),
    embedding: checkFormat("embedding", opts.embedding ?? DEFAULT_FORMATS.embedding),
  };
  const table = decoderTensorTable(c);
  checkDecoderTensors(table, source);
  const L = new Loader(gpu, source, table.length, opts);
  const of = (slot: Slot, layer: number | null): TensorSpec[] => table.filter((s) => s.slot === slot && s.layer === layer);
  try {
    const embed = await L.matrix(of("embed", null), formats.embedding, "embed_tokens");
    const layers: DecoderLayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const vec = async (slot: Slot, label: string): Promise<Tensor | null> => {
        const parts = of(slot, i);
        return parts.length ? L.vector(parts, `L${i}.${label}`) : null;
      };
      const mat = (slot: Slot, label: string): Promise<DecoderLinear> => L.matrix(of(slot, i), formats.textLinear, `L${i}.${label}`);
      layers.push({
        inputNorm: (await vec("inputNorm", "input_layernorm"))!,
        qkv: await mat("qkv", "qkv"),
        qkvBias: await vec("qkvBias", "qkv.bias"),
        o: await mat("o", "o_proj"),
        oBias: await vec("oBias", "o_proj.bias"),
        postNorm: (await vec("postNorm", "post_attention_layernorm"))!,
        gateUp: await mat("gateUp", "gate_up"),
        gateUpBias: await vec("gateUpBias", "gate_up.bias"),
        down: await mat("down", "down_proj"),
        downBias: await vec("downBias", "down_proj.bias"),
      });
    }
    const norm = await L.vector(of("norm", null), "norm");
    const lmHead = c.tieWordEmbeddings ? embed : await L.matrix(of("lmHead", null), formats.embedding, "lm_head");
    return { embed, layers, norm, lmHead, formats, gpuBytes: L.gpuBytes };
  } catch (e) {
    releaseAll(gpu, L.made);
    throw e;
  }
}

function isLinear(x: Tensor | DecoderLinear): x is DecoderLinear {
  return "format" in x;
}

/** Every GPU tensor behind a list of tensors / weights. */
export function tensorsOf(items: readonly (Tensor | DecoderLinear | null)[]): Tensor[] {
  const out: Tensor[] = [];
  for (const x of items) {
    if (!x) continue;
    if (!isLinear(x)) out.push(x);
    else if ("shards" in x) for (const s of x.shards) out.push(...weightTensors(s.weight));
    else out.push(...weightTensors(x));
  }
  return out;
}

function releaseAll(gpu: GpuContext, items: readonly (Tensor | DecoderLinear | null)[]): void {
  const seen = new Set<GPUBuffer>();
  for (const t of tensorsOf(items)) {
    if (seen.has(t.buffer)) continue;
    seen.add(t.buffer);
    gpu.pool.release(t.buffer);
  }
}

/** Returns every weight buffer to the pool (a tied lm_head once). */
export function releaseDecoderWeights(gpu: GpuContext, w: DecoderWeights): void {
  const items: (Tensor | DecoderLinear | null)[] = [w.embed, w.norm, w.lmHead];
  for (const l of w.layers) items.push(l.inputNorm, l.qkv, l.qkvBias, l.o, l.oBias, l.postNorm, l.gateUp, l.gateUpBias, l.down, l.downBias);
  releaseAll(gpu, items);
}
