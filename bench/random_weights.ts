// Random weights of a real model's shapes, made on the GPU: no files, no CPU quantization,
// so the 2B shape builds in seconds. Timing does not depend on the values, only on shapes
// and formats; the ranges still keep activations finite (uniform +-1/sqrt(cols) weights,
// norms near 1, small biases) so no kernel runs on NaNs.
import fillCode from "./random_fill.wgsl?raw";
import type { GpuContext } from "../src/gpu/device.ts";
import { grid2d, packUniforms, Recorder } from "../src/gpu/recorder.ts";
import { byteSize, type Tensor } from "../src/gpu/tensor.ts";
import { allocTensor } from "../src/gpu/transfer.ts";
import { paddedCols, rowsPerShard, GROUP_SIZE, type ShardedWeight, type Weight, type WeightFormat } from "../src/quant/formats.ts";
import { maxWeightBytes } from "../src/quant/pack.ts";
import type { Qwen2VLConfig } from "../src/models/qwen2_vl/config.ts";
import { buildQwen2VLWeights, type LinearWeight, type Qwen2VLWeights } from "../src/models/qwen2_vl/weights.ts";
import type { Idefics2Config } from "../src/models/idefics2/config.ts";
import { buildIdefics2Weights, type Idefics2Weights } from "../src/models/idefics2/weights.ts";
import type { MatrixPart, WeightMaker } from "../src/models/common/weight_loader.ts";
import { type WeightFormats } from "../src/models/common/source.ts";

const RAW = 0;
const F32 = 1;
const F16_PAIRS = 2;

export class RandomWeightMaker implements WeightMaker {
  gpuBytes = 0;
  private seed = 1;
  private readonly rec: Recorder;
  /** Largest tensor one binding may hold: larger matrices split along rows, as the checkpoint loader splits them. */
  readonly maxBytes: number;

  /** `maxBindingBytes`: the loader's WeightLoadOptions.maxBindingBytes (default the device's limit). */
  constructor(private readonly gpu: GpuContext, maxBindingBytes?: number) {
    this.rec = new Recorder(gpu);
    this.maxBytes = maxBindingBytes ?? maxWeightBytes(gpu);
  }

  /** Fills a tensor's words; submits every few hundred MB so recorded work stays bounded. */
  private fill(t: Tensor, mode: number, lo = 0, hi = 0): Tensor {
    const words = Math.ceil(byteSize(t) / 4);
    this.rec.dispatch({
      code: fillCode,
      uniforms: packUniforms("uuuuff", words, this.seed++, mode, 0, lo, hi),
      bindings: [t],
      workgroups: grid2d(Math.ceil(words / 256), this.gpu.limits.maxComputeWorkgroupsPerDimension),
      label: "random_fill",
    });
    this.gpuBytes += byteSize(t);
    if (this.rec.dispatchCount % 64 === 0) this.rec.submit();
    return t;
  }

  finish(): void {
    this.rec.submit();
  }

  async vector(canonicals: string[], lengths: number[], label: string): Promise<Tensor> {
    const n = lengths.reduce((a, b) => a + b, 0);
    const isNormWeight = canonicals.every((c) => /(norm|ln_q)[^.]*\.weight$/.test(c));
    const t = allocTensor(this.gpu, [n], "f32", label);
    return isNormWeight ? this.fill(t, F32, 0.9, 1.1) : this.fill(t, F32, -0.02, 0.02);
  }

  async matrix(parts: MatrixPart[], cols: number, format: WeightFormat, label: string): Promise<LinearWeight> {
    const rows = parts.reduce((a, p) => a + p.rows, 0);
    const perShard = rowsPerShard(this.maxBytes, cols, format, label);
    if (rows <= perShard) return this.weight(rows, cols, format, label);
    const shards: ShardedWeight["shards"][number][] = [];
    for (let r = 0; r < rows; r += perShard) {
      shards.push({ rowStart: r, weight: this.weight(Math.min(perShard, rows - r), cols, format, `${label}[${shards.length}]`) });
    }
    return { format, rows, cols, shards };
  }

  private weight(rows: number, cols: number, format: WeightFormat, label: string): Weight {
    const a = Math.sqrt(3 / cols); // uniform(-a, a) has std 1/sqrt(cols)
    if (format === "f32" || format === "f16") {
      const data = allocTensor(this.gpu, [rows, cols], format, label);
      return { format, rows, cols, data: format === "f32" ? this.fill(data, F32, -a, a) : this.fill(data, F16_PAIRS, -a, a) };
    }
    const pc = paddedCols(cols);
    const bits = format === "q4" ? 4 : 8;
    const data = this.fill(allocTensor(this.gpu, [rows, (pc * bits) / 32], "u32", `${label}.q`), RAW);
    // q4 codes span -8..7 and q8 codes -128..127 times the scale: both reach about +-a.
    const scale = format === "q4" ? a / 8 : a / 128;
    const scales = this.fill(allocTensor(this.gpu, [rows, pc / GROUP_SIZE], "f16", `${label}.scales`), F16_PAIRS, 0.5 * scale, scale);
    return { format, rows, cols, paddedCols: pc, data, scales };
  }
}

/** Every tensor of a Qwen2-VL model of `config`'s shapes, random, in `formats`, on the GPU. */
export async function randomQwen2VLWeights(gpu: GpuContext, config: Qwen2VLConfig, formats: WeightFormats): Promise<Qwen2VLWeights> {
  const maker = new RandomWeightMaker(gpu);
  const weights = await buildQwen2VLWeights(gpu, config, maker, formats);
  maker.finish();
  await gpu.device.queue.onSubmittedWorkDone();
  return weights;
}

/**
 * Every tensor of an Idefics2 model of `config`'s shapes, random, in `formats`, on the GPU;
 * matrices over `maxBindingBytes` (default the device's binding limit) split into row shards.
 */
export async function randomIdefics2Weights(gpu: GpuContext, config: Idefics2Config, formats: WeightFormats, maxBindingBytes?: number): Promise<Idefics2Weights> {
  const maker = new RandomWeightMaker(gpu, maxBindingBytes);
  const weights = await buildIdefics2Weights(gpu, config, maker, formats);
  maker.finish();
  await gpu.device.queue.onSubmittedWorkDone();
  return weights;
}
