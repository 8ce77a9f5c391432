// RMSNorm and LayerNorm vs float64 CPU references (written from the torch definitions).
// Tolerance: NMSE <= 1e-12 for every case (f32 kernels; measured ~1e-15), including a
// LayerNorm row with mean 1000 and std 0.58 (a plain two-pass kernel gets ~7e-9 there) and
// rows with one huge channel (ViT-style outlier activations).
import { layerNorm } from "../../src/ops/layer_norm.ts";
import { rmsNorm } from "../../src/ops/rms_norm.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";

/** Qwen2RMSNorm: x * rsqrt(mean(x^2) + eps) * weight, per row, in float64. */
export function rmsNormReference(x: Float32Array, w: Float32Array, rows: number, h: number, eps: number): Float64Array {
  const out = new Float64Array(rows * h);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < h; i++) ss += x[r * h + i] * x[r * h + i];
    const scale = 1 / Math.sqrt(ss / h + eps);
    for (let i = 0; i < h; i++) out[r * h + i] = x[r * h + i] * scale * w[i];
  }
  return out;
}

/** torch.nn.LayerNorm: (x - mean) / sqrt(var + eps) * w + b, biased variance, in float64. */
export function layerNormReference(
  x: Float32Array,
  w: Float32Array,
  b: Float32Array,
  rows: number,
  h: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(rows * h);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let i = 0; i < h; i++) mean += x[r * h + i];
    mean /= h;
    let v = 0;
    for (let i = 0; i < h; i++) v += (x[r * h + i] - mean) ** 2;
    const rstd = 1 / Math.sqrt(v / h + eps);
    for (let i = 0; i < h; i++) out[r * h + i] = (x[r * h + i] - mean) * rstd * w[i] + b[i];
  }
  return out;
}

interface NormShape {
  rows: number;
  h: number;
  /** input values are lo..hi */
  lo: number;
  hi: number;
  tol: number;
  note?: string;
  /** sets channel 7 of every row to this value */
  outlier?: number;
}

const EPS = 1e-6;
const shapes: NormShape[] = [
  { rows: 1, h: 1, lo: -1, hi: 1, tol: 1e-12 },
  { rows: 17, h: 1, lo: -2e-3, hi: 2e-3, tol: 1e-12, note: "x^2 ~ eps" },
  { rows: 17, h: 80, lo: -1, hi: 1, tol: 1e-12 },
  { rows: 300, h: 1000, lo: -3, hi: 3, tol: 1e-12 },
  { rows: 4, h: 1536, lo: -50, hi: 50, tol: 1e-12 },
  { rows: 2, h: 8960, lo: -1, hi: 1, tol: 1e-12 },
  { rows: 1, h: 8960, lo: -1, hi: 1, tol: 1e-12 },
];

function release(gpu: { pool: { release(b: GPUBuffer): void } }, ts: Tensor[]): void {
  for (const t of ts) gpu.pool.release(t.buffer);
}

const rmsCases: KernelCase[] = shapes.map(({ rows, h, lo, hi, tol, note }) => ({
  name: `rmsNorm rows=${rows} H=${h}${note ? ` (${note})` : ""}`,
  async run(gpu) {
    const x = randomArray(rows * h, 11 + h, lo, hi);
    const w = randomArray(h, 12 + h, 0.5, 1.5);
    const tx = uploadTensor(gpu, x, [rows, h], "f32");
    const tw = uploadTensor(gpu, w, [h], "f32");
    const rec = new Recorder(gpu);
    const out = rmsNorm(rec, tx, tw, EPS);
    rec.submit();
    const got = await readF32(gpu, out);
    release(gpu, [tx, tw, out]);
    return `nmse=${expectClose("rmsNorm", got, rmsNormReference(x, w, rows, h, EPS), tol).toExponential(2)}`;
  },
}));

const lnShapes: NormShape[] = [
  ...shapes,
  { rows: 300, h: 40, lo: -1, hi: 1, tol: 1e-12 },
  { rows: 17, h: 1280, lo: 999, hi: 1001, tol: 1e-12, note: "mean 1000, std 0.58" },
  { rows: 5, h: 1280, lo: -1, hi: 1, tol: 1e-12, note: "channel 7 = 3000", outlier: 3000 },
];

const lnCases: KernelCase[] = lnShapes.map(({ rows, h, lo, hi, tol, note, outlier }) => ({
  name: `layerNorm rows=${rows} H=${h}${note ? ` (${note})` : ""}`,
  async run(gpu) {
    const x = randomArray(rows * h, 21 + h, lo, hi);
    if (outlier !== undefined) for (let r = 0; r < rows; r++) x[r * h + 7] = outlier;
    const w = randomArray(h, 22 + h, 0.5, 1.5);
    const b = randomArray(h, 23 + h, -0.5, 0.5);
    const tx = uploadTensor(gpu, x, [rows, h], "f32");
    const tw = uploadTensor(gpu, w, [h], "f32");
    const tb = uploadTensor(gpu, b, [h], "f32");
    const rec = new Recorder(gpu);
    const out = layerNorm(rec, tx, tw, tb, EPS);
    rec.submit();
    const got = await readF32(gpu, out);
    release(gpu, [tx, tw, tb, out]);
    return `nmse=${expectClose("layerNorm", got, layerNormReference(x, w, b, rows, h, EPS), tol).toExponential(2)}`;
  },
}));

/** A caller-provided out tensor and 3-D input (leading dims are rows). */
const outArgCase: KernelCase = {
  name: "rmsNorm + layerNorm into given out, x [2, 3, 80]",
  async run(gpu) {
    const [rows, h] = [6, 80];
    const x = randomArray(rows * h, 31);
    const w = randomArray(h, 32, 0.5, 1.5);
    const b = randomArray(h, 33);
    const tx = uploadTensor(gpu, x, [2, 3, h], "f32");
    const tw = uploadTensor(gpu, w, [h], "f32");
    const tb = uploadTensor(gpu, b, [h], "f32");
    const o1 = uploadTensor(gpu, new Float32Array(rows * h).fill(7), [2, 3, h], "f32");
    const o2 = uploadTensor(gpu, new Float32Array(rows * h).fill(7), [2, 3, h], "f32");
    const rec = new Recorder(gpu);
    const r1 = rmsNorm(rec, tx, tw, EPS, o1);
    const r2 = layerNorm(rec, tx, tw, tb, EPS, o2);
    if (r1 !== o1 || r2 !== o2) throw new Error("out tensor not returned");
    rec.submit();
    const e1 = expectClose("rmsNorm", await readF32(gpu, o1), rmsNormReference(x, w, rows, h, EPS), 1e-12);
    const e2 = expectClose("layerNorm", await readF32(gpu, o2), layerNormReference(x, w, b, rows, h, EPS), 1e-12);
    release(gpu, [tx, tw, tb, o1, o2]);
    return `nmse rms=${e1.toExponential(2)} ln=${e2.toExponential(2)}`;
  },
};

export const cases: KernelCase[] = [...rmsCases, ...lnCases, outArgCase];
