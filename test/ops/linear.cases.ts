import { isWebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { allocTensor, readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { gemvConfig, linear, linearKernel, type LinearKernel } from "../../src/ops/linear.ts";
import type { ShardedWeight, Weight, WeightFormat } from "../../src/quant/formats.ts";
import { roundTripValues, shardWeight, uploadWeight, weightTensors } from "../../src/quant/pack.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, expectEqual, nmse, randomArray } from "../util/compare.ts";

// f32 accumulation over K <= 1176 against an f64 reference on the same (round-tripped) weight values.
const TOL = 1e-10;
const FORMATS: WeightFormat[] = ["f32", "f16", "q8", "q4"];

/** y[m, n] = sum_k x[m, k] * w[n, k] + bias[n], in f64. */
export function linearReference(x: Float32Array, w: Float32Array, M: number, N: number, K: number, bias?: Float32Array): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
  }
  return y;
}

export function releaseWeight(gpu: GpuContext, w: Weight | ShardedWeight): void {
  const parts = "shards" in w ? w.shards.map((s) => s.weight) : [w];
  for (const p of parts) for (const t of weightTensors(p)) gpu.pool.release(t.buffer);
}

export function release(gpu: GpuContext, ...ts: (Tensor | undefined)[]): void {
  for (const t of ts) if (t) gpu.pool.release(t.buffer);
}

interface Shape {
  M: number;
  K: number;
  N: number;
}

const SHAPES: Shape[] = [
  { M: 1, K: 1, N: 1 },
  { M: 1, K: 1176, N: 77 },
  { M: 1, K: 333, N: 200 },
  { M: 4, K: 1000, N: 24 },
  { M: 5, K: 200, N: 40 },
  { M: 17, K: 96, N: 130 },
  { M: 300, K: 160, N: 72 },
  // Lane-team GEMV with several rows per team (R = 4, 2) and a partial last x-row chunk.
  { M: 1, K: 264, N: 4100 },
  { M: 3, K: 264, N: 4099 },
  { M: 2, K: 1536, N: 1030 },
  // Long rows: the q GEMV stages x in several chunks (M = 3 stages 4 rows, so smaller chunks).
  { M: 1, K: 8960, N: 40 },
  { M: 3, K: 8200, N: 21 },
  // One-thread-per-output GEMV (K <= 256): up to the boundary, several x rows, a padded q tail.
  { M: 1, K: 64, N: 4100 },
  { M: 8, K: 256, N: 33 },
  { M: 3, K: 72, N: 99 },
];

/** Qwen2RMSNorm in f64: x * 1/sqrt(mean(x^2) + eps) * g, per row. */
export function rmsNormReference(x: Float32Array, g: Float32Array, M: number, K: number, eps: number): Float32Array {
  const out = new Float64Array(M * K);
  for (let m = 0; m < M; m++) {
    let ss = 0;
    for (let k = 0; k < K; k++) ss += x[m * K + k] ** 2;
    const r = 1 / Math.sqrt(ss / K + eps);
    for (let k = 0; k < K; k++) out[m * K + k] = x[m * K + k] * r * g[k];
  }
  return Float32Array.from(out);
}

/**
 * Runs one shape and format with and without bias, accumulating into y, and with the RMSNorm
 * fused in (GEMV paths; GEMM normalizes first); checks each against the reference.
 */
function shapeCase(format: WeightFormat, { M, K, N }: Shape, seed: number): KernelCase {
  return {
    name: `linear ${format} M=${M} K=${K} N=${N}`,
    async run(gpu) {
      const x = randomArray(M * K, seed);
      const wv = randomArray(N * K, seed + 1);
      const b = randomArray(N, seed + 2);
      const w = uploadWeight(gpu, wv, N, K, format);
      const kernel = linearKernel(M, w as Weight);
      const want: LinearKernel = M <= 8 && K % (format === "f16" ? 8 : 4) === 0 ? (K <= 256 ? "gemv_rows" : "gemv") : "gemm";
      if (kernel !== want) throw new Error(`expected the ${want} path, linearKernel chose ${kernel}`);
      const tx = uploadTensor(gpu, x, [M, K], "f32");
      const tb = uploadTensor(gpu, b, [N], "f32");
      const r = randomArray(M * N, seed + 3);
      const y2 = uploadTensor(gpu, r, [M, N], "f32");
      const g = randomArray(K, seed + 4, 0.5, 1.5);
      const tg = uploadTensor(gpu, g, [K], "f32");
      const rec = new Recorder(gpu);
      const y0 = linear(rec, tx, w);
      const y1 = linear(rec, tx, w, tb);
      linear(rec, tx, w, tb, y2, { accumulate: true });
      const y3 = linear(rec, tx, w, tb, undefined, { rmsNorm: { weight: tg, eps: 1e-6 } });
      rec.submit();
      const got0 = await readF32(gpu, y0);
      const got1 = await readF32(gpu, y1);
      const got2 = await readF32(gpu, y2);
      const got3 = await readF32(gpu, y3);
      release(gpu, tx, tb, y0, y1, y2, tg, y3);
      releaseWeight(gpu, w);

      const wr = roundTripValues(wv, N, K, format);
      const e0 = expectClose(`${format} no bias`, got0, linearReference(x, wr, M, N, K), TOL);
      const e1 = expectClose(`${format} bias`, got1, linearReference(x, wr, M, N, K, b), TOL);
      const want2 = linearReference(x, wr, M, N, K, b).map((v, i) => v + r[i]);
      const e2 = expectClose(`${format} accumulate`, got2, want2, TOL);
      const e3 = expectClose(`${format} rmsNorm fused`, got3, linearReference(rmsNormReference(x, g, M, K, 1e-6), wr, M, N, K, b), TOL);
      const cfg = gemvConfig(M, N, format[0] === "q" ? Math.ceil(K / 32) : K / (format === "f16" ? 8 : 4));
      const how = kernel === "gemv" ? `gemv L${cfg.LANES}xT${cfg.TEAMS} R${cfg.R} MROWS${cfg.MROWS}` : kernel;
      let info = `${how} nmse=${e0.toExponential(2)} (bias ${e1.toExponential(2)}, accumulate ${e2.toExponential(2)}, norm ${e3.toExponential(2)})`;
      if (format !== "f32") info += `; vs unquantized f32 weights nmse=${nmse(got0, linearReference(x, wv, M, N, K)).toExponential(2)}`;
      return info;
    },
  };
}

/** A weight sharded by a tiny byte limit must give bit-identical results to the unsharded one. */
function shardCase(format: WeightFormat, M: number): KernelCase {
  const K = 96;
  const N = 130;
  return {
    name: `linear sharded ${format} M=${M} K=${K} N=${N}`,
    async run(gpu) {
      const x = randomArray(M * K, 50 + M);
      const wv = randomArray(N * K, 51);
      const b = randomArray(N, 52);
      const rowBytes = { f32: K * 4, f16: K * 2, q8: K, q4: K / 2 }[format];
      const sharded = shardWeight(gpu, wv, N, K, format, rowBytes * 20 + 3);
      if (sharded.shards.length !== 7) throw new Error(`expected 7 shards of <= 20 rows, got ${sharded.shards.length}`);
      const whole = uploadWeight(gpu, wv, N, K, format);
      const tx = uploadTensor(gpu, x, [M, K], "f32");
      const tb = uploadTensor(gpu, b, [N], "f32");
      const rec = new Recorder(gpu);
      const ys = linear(rec, tx, sharded, tb);
      const yw = linear(rec, tx, whole, tb);
      const r = randomArray(M * N, 53);
      const ya = uploadTensor(gpu, r, [M, N], "f32");
      linear(rec, tx, sharded, tb, ya, { accumulate: true });
      rec.submit();
      const gotS = await readF32(gpu, ys);
      const gotW = await readF32(gpu, yw);
      const gotA = await readF32(gpu, ya);
      release(gpu, tx, tb, ys, yw, ya);
      releaseWeight(gpu, sharded);
      releaseWeight(gpu, whole);
      expectEqual("sharded vs whole", gotS, gotW);
      expectEqual("sharded accumulate vs sharded + r", gotA, gotS.map((v, i) => v + r[i]));
      const e = expectClose("sharded", gotS, linearReference(x, roundTripValues(wv, N, K, format), M, N, K, b), TOL);
      return `${sharded.shards.length} shards, ${linearKernel(M, whole)}: identical to unsharded; nmse=${e.toExponential(2)}`;
    },
  };
}

function expectCode(label: string, fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    if (isWebvlmError(e) && e.code === code) return;
    throw new Error(`${label}: expected WebvlmError ${code}, got ${String(e)}`);
  }
  throw new Error(`${label}: expected WebvlmError ${code}, nothing thrown`);
}

const mismatchCase: KernelCase = {
  name: "linear shape mismatch",
  async run(gpu) {
    const w = uploadWeight(gpu, randomArray(12 * 96, 60), 12, 96, "q4");
    const good = allocTensor(gpu, [2, 96], "f32");
    const badX = allocTensor(gpu, [2, 95], "f32");
    const badBias = allocTensor(gpu, [13], "f32");
    const badOut = allocTensor(gpu, [2, 11], "f32");
    const rec = new Recorder(gpu);
    expectCode("x cols", () => linear(rec, badX, w), "shape_mismatch");
    expectCode("bias length", () => linear(rec, good, w, badBias), "shape_mismatch");
    expectCode("out shape", () => linear(rec, good, w, undefined, badOut), "shape_mismatch");
    const badShards: ShardedWeight = { format: "q4", rows: 24, cols: 96, shards: [{ rowStart: 0, weight: w }, { rowStart: 6, weight: w }] };
    expectCode("shard gap", () => linear(rec, good, badShards), "shape_mismatch");
    rec.submit();
    release(gpu, good, badX, badBias, badOut);
    releaseWeight(gpu, w);
    if (rec.dispatchCount !== 0) throw new Error("a rejected call dispatched work");
    return "shape_mismatch thrown for x, bias, out and shard layout";
  },
};

export const cases: KernelCase[] = [
  ...FORMATS.flatMap((f, i) => SHAPES.map((s, j) => shapeCase(f, s, 100 * i + 10 * j))),
  ...FORMATS.flatMap((f) => [shardCase(f, 1), shardCase(f, 17)]),
  mismatchCase,
];
