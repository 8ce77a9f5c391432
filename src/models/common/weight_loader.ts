// Checkpoint tensors -> GPU weights, for every family: a WeightMaker makes f32 vectors and
// (row-stacked, fused) matrices by canonical name in the requested format; WeightLoader reads them
// from a TensorSource one tensor at a time (streaming row shards of tables too large for one
// binding, quantizing on the way, reusing quantized bytes from the packed cache); benchmarks make
// random ones on the GPU. A family's tensor table and structure builder drive one of these.
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { byteSize, type Tensor } from "../../gpu/tensor.ts";
import { uploadTensor } from "../../gpu/transfer.ts";
import { rowsPerShard, type ShardedWeight, type Weight, type WeightFormat } from "../../quant/formats.ts";
import { maxWeightBytes, packedRows, quantize, shardWeight, stackPackedRows, uploadQuantized, uploadWeight, weightTensors, type PackedQuant } from "../../quant/pack.ts";
import { DEFAULT_FORMATS, type LinearWeight, type TensorSource, type WeightFormats, type WeightLoadOptions } from "./source.ts";

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
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

/** Reads a checkpoint tensor by tensor into GPU weights (quantizing, sharding, packed cache). */
export class WeightLoader implements WeightMaker {
  readonly maxBytes: number;
  gpuBytes = 0;
  done = 0;

  constructor(
    readonly gpu: GpuContext,
    readonly source: TensorSource,
    readonly total: number,
    readonly opts: WeightLoadOptions,
    /** The stored names a canonical name may have (a family's alternative prefixes); default itself. */
    private readonly candidates: (canonical: string) => string[] = (n) => [n],
  ) {
    this.maxBytes = opts.maxBindingBytes ?? maxWeightBytes(gpu);
  }

  /** The checkpoint's name for a canonical one; missing_tensor naming it otherwise. */
  resolve(canonical: string): string {
    const candidates = this.candidates(canonical);
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
    const pre = await this.prequantized(names);
    if (pre) return this.countWeight(pre.fits ? uploadQuantized(this.gpu, pre.packed, label) : this.shardPacked(pre.packed, label));
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

  /**
   * The parts as one packed matrix when the checkpoint holds them quantized (all of them: a
   * fused matrix cannot mix), else undefined. Ticks progress for each part.
   */
  private async prequantized(names: string[]): Promise<{ packed: PackedQuant; fits: boolean } | undefined> {
    if (!this.source.readQuantized) return undefined;
    const packed: PackedQuant[] = [];
    for (const n of names) {
      const p = await this.source.readQuantized(n);
      if (!p) {
        if (packed.length > 0) throw new WebvlmError("bad_request", `"${n}" is not quantized but ${names[0]} is: fused matrices must be both or neither`);
        return undefined;
      }
      packed.push(p);
    }
    for (const n of names) this.tick(n);
    const all = packed.length === 1 ? packed[0] : stackPackedRows(packed);
    this.opts.onQuantize?.(names.join("+"), true, all.data.byteLength + all.scales.byteLength + (all.zeros?.byteLength ?? 0));
    return { packed: all, fits: all.rows <= rowsPerShard(this.maxBytes, all.cols, all.format, names[0]) };
  }

  private shardPacked(p: PackedQuant, label: string): ShardedWeight {
    const perShard = rowsPerShard(this.maxBytes, p.cols, p.format, label);
    const shards: { rowStart: number; weight: Weight }[] = [];
    for (let r = 0; r < p.rows; r += perShard) {
      shards.push({ rowStart: r, weight: uploadQuantized(this.gpu, packedRows(p, r, Math.min(perShard, p.rows - r)), `${label}[${shards.length}]`) });
    }
    return { format: p.format, rows: p.rows, cols: p.cols, shards };
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

export function resolveFormats(opts: WeightLoadOptions): WeightFormats {
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

export function releaseTensors(gpu: GpuContext, items: readonly (Tensor | LinearWeight)[]): void {
  const seen = new Set<GPUBuffer>();
  for (const t of tensorsOf(items)) {
    if (seen.has(t.buffer)) continue;
    seen.add(t.buffer);
    gpu.pool.release(t.buffer);
  }
}

