// linear() with asymmetric q4/q8 weights (zero points, formats.ts): every kernel path (GEMV
// incl. the fused RMSNorm, short-row GEMV, tiled GEMM, sharded weights) against an f64 reference
// on dequantize(packed); plus checks that the symmetric pipelines' layouts have no zeros binding.
import gemvQCode from "../../shaders/gemv_q.wgsl?raw";
import gemvRowsCode from "../../shaders/gemv_rows.wgsl?raw";
import matmulQCode from "../../shaders/matmul_q.wgsl?raw";
import { isWebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { PipelineConstants } from "../../src/gpu/pipelines.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { allocTensor, readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { gemvConfig, linear, linearKernel, type LinearKernel } from "../../src/ops/linear.ts";
import { f16BitsToF32, f32ToF16Bits } from "../../src/quant/f16.ts";
import { GROUP_SIZE, paddedCols, type QuantizedWeight, type ShardedWeight, type Weight } from "../../src/quant/formats.ts";
import { dequantize, packedRows, uploadQuantized, weightTensors, type PackedQuant } from "../../src/quant/pack.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, expectEqual, randomArray } from "../util/compare.ts";
import { linearReference, release, releaseWeight, rmsNormReference } from "./linear.cases.ts";

// As in linear.cases.ts: f32 accumulation against an f64 reference on the same weight values.
const TOL = 1e-10;

/** mulberry32 integers in [0, n). */
function randomInts(count: number, n: number, seed: number): Uint32Array {
  const r = randomArray(count, seed, 0, 1);
  return Uint32Array.from(r, (v) => Math.min(n - 1, Math.floor(v * n)));
}

/** Parameters of an asymmetric quantized matrix with groups of `groupSize` (a multiple of 32) along K. */
interface Asym {
  p: PackedQuant;
  /** The values computed straight from codes, per-big-group scales and zeros (independent of dequantize). */
  direct: Float32Array;
}

/**
 * Random codes (q4 0..15, q8 0..255, also in the padded tail), zero bytes and positive f16 scales,
 * one scale and zero per `groupSize` columns, written as runs of equal 32-wide groups.
 */
function randomAsym(format: "q4" | "q8", N: number, K: number, seed: number, groupSize = GROUP_SIZE): Asym {
  const pc = paddedCols(K);
  const groups = pc / GROUP_SIZE;
  const levels = format === "q4" ? 16 : 256;
  const codes = randomInts(N * pc, levels, seed);
  const bigGroups = Math.ceil(pc / groupSize);
  const bigZeros = randomInts(N * bigGroups, levels, seed + 1);
  const bigScales = Uint16Array.from(randomArray(N * bigGroups, seed + 2, 0.002, format === "q4" ? 0.1 : 0.008), f32ToF16Bits);
  const wordsPerGroup = format === "q4" ? 4 : 8;
  const data = new Uint32Array(N * groups * wordsPerGroup);
  const scales = new Uint16Array(N * groups);
  const zeros = new Uint8Array(N * groups);
  const direct = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < pc; c++) {
      const q = codes[n * pc + c];
      const g = c >> 5;
      const i = c & 31;
      const bg = Math.floor(c / groupSize);
      const base = (n * groups + g) * wordsPerGroup;
      if (format === "q4") data[base + (i >> 3)] |= q << ((i & 7) * 4);
      else data[base + (i >> 2)] |= q << ((i & 3) * 8);
      scales[n * groups + g] = bigScales[n * bigGroups + bg];
      zeros[n * groups + g] = bigZeros[n * bigGroups + bg];
      if (c < K) direct[n * K + c] = (q - bigZeros[n * bigGroups + bg]) * f16BitsToF32(bigScales[n * bigGroups + bg]);
    }
  }
  return { p: { format, rows: N, cols: K, paddedCols: pc, data, scales, zeros }, direct };
}

function maxAbsErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < b.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

interface Shape {
  M: number;
  K: number;
  N: number;
  /** Zero/scale group width (a multiple of 32, as runs of equal 32-groups); 32 unless given. */
  group?: number;
}

const SHAPES: Shape[] = [
  // Short-row GEMV (K <= 256) with a padded tail (200 = 6 * 32 + 8).
  { M: 3, K: 200, N: 45 },
  // Lane-team GEMV: a padded tail (1000), R = 2 (N >= 1024), several x-row chunks and MROWS.
  { M: 1, K: 1000, N: 300 },
  { M: 2, K: 264, N: 1030 },
  // Groups of 128 as 4 equal 32-groups (and one whole-row group over a padded row).
  { M: 1, K: 512, N: 96, group: 128 },
  { M: 17, K: 512, N: 70, group: 128 },
  { M: 2, K: 200, N: 33, group: 224 },
  // Tiled GEMM with K % 4 != 0 (padded, x read bounds-checked).
  { M: 70, K: 333, N: 90 },
];

/**
 * One shape and format with and without bias, accumulating into y, and with the RMSNorm fused in
 * (GEMV paths; the GEMM normalizes first); each against the f64 reference on dequantize(packed).
 */
function shapeCase(format: "q4" | "q8", { M, K, N, group = GROUP_SIZE }: Shape, seed: number): KernelCase {
  return {
    name: `linear zeros ${format} M=${M} K=${K} N=${N}${group !== GROUP_SIZE ? ` group=${group}` : ""}`,
    async run(gpu) {
      const { p, direct } = randomAsym(format, N, K, seed, group);
      const wr = dequantize(p);
      expectEqual("dequantize vs the per-group values", wr, direct);
      const x = randomArray(M * K, seed + 3);
      const b = randomArray(N, seed + 4);
      const r = randomArray(M * N, seed + 5);
      const g = randomArray(K, seed + 6, 0.5, 1.5);
      const w = uploadQuantized(gpu, p);
      const kernel = linearKernel(M, w);
      const want: LinearKernel = M <= 8 && K % 4 === 0 ? (K <= 256 ? "gemv_rows" : "gemv") : "gemm";
      if (kernel !== want) throw new Error(`expected the ${want} path, linearKernel chose ${kernel}`);
      const tx = uploadTensor(gpu, x, [M, K], "f32");
      const tb = uploadTensor(gpu, b, [N], "f32");
      const y2 = uploadTensor(gpu, r, [M, N], "f32");
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

      const ref0 = linearReference(x, wr, M, N, K);
      const ref1 = linearReference(x, wr, M, N, K, b);
      const ref2 = ref1.map((v, i) => v + r[i]);
      const ref3 = linearReference(rmsNormReference(x, g, M, K, 1e-6), wr, M, N, K, b);
      const e0 = expectClose(`${format} zeros no bias`, got0, ref0, TOL);
      const e1 = expectClose(`${format} zeros bias`, got1, ref1, TOL);
      const e2 = expectClose(`${format} zeros accumulate`, got2, ref2, TOL);
      const e3 = expectClose(`${format} zeros rmsNorm fused`, got3, ref3, TOL);
      const cfg = gemvConfig(M, N, paddedCols(K) / GROUP_SIZE);
      const how = kernel === "gemv" ? `gemv L${cfg.LANES}xT${cfg.TEAMS} R${cfg.R} MROWS${cfg.MROWS}` : kernel;
      const f = (e: number) => e.toExponential(2);
      return `${how} nmse=${f(e0)} max|err|=${f(maxAbsErr(got0, ref0))} (bias ${f(e1)}, accumulate ${f(e2)}, norm ${f(e3)} max|err| ${f(maxAbsErr(got3, ref3))})`;
    },
  };
}

/** Row shards of an asymmetric matrix (each with its own zeros) give results bit-identical to the whole one. */
function shardCase(format: "q4" | "q8", M: number, K: number): KernelCase {
  const N = 130;
  return {
    name: `linear zeros sharded ${format} M=${M} K=${K} N=${N}`,
    async run(gpu) {
      const { p } = randomAsym(format, N, K, 700 + M + K);
      const x = randomArray(M * K, 710 + M);
      const b = randomArray(N, 711);
      const perShard = 20;
      const shards: { rowStart: number; weight: Weight }[] = [];
      for (let r0 = 0; r0 < N; r0 += perShard) {
        shards.push({ rowStart: r0, weight: uploadQuantized(gpu, packedRows(p, r0, Math.min(perShard, N - r0)), `shard${shards.length}`) });
      }
      if (shards.length !== 7) throw new Error(`expected 7 shards, got ${shards.length}`);
      const sharded: ShardedWeight = { format, rows: N, cols: K, shards };
      const whole = uploadQuantized(gpu, p);
      const tx = uploadTensor(gpu, x, [M, K], "f32");
      const tb = uploadTensor(gpu, b, [N], "f32");
      const r = randomArray(M * N, 712);
      const ya = uploadTensor(gpu, r, [M, N], "f32");
      const rec = new Recorder(gpu);
      const ys = linear(rec, tx, sharded, tb);
      const yw = linear(rec, tx, whole, tb);
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
      const ref = linearReference(x, dequantize(p), M, N, K, b);
      const e = expectClose("sharded", gotS, ref, TOL);
      return `${shards.length} shards, ${linearKernel(M, whole)}: identical to unsharded; nmse=${e.toExponential(2)} max|err|=${maxAbsErr(gotS, ref).toExponential(2)}`;
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

const validationCase: KernelCase = {
  name: "linear zeros: bad zeros tensor rejected",
  async run(gpu) {
    const { p } = randomAsym("q4", 12, 96, 800);
    const w = uploadQuantized(gpu, p);
    const good = allocTensor(gpu, [2, 96], "f32");
    const shortZeros = allocTensor(gpu, [8], "u32"); // 12 rows x 3 groups = 36 bytes = 9 words
    const f32Zeros = allocTensor(gpu, [9], "f32");
    const rec = new Recorder(gpu);
    expectCode("zeros size", () => linear(rec, good, { ...w, zeros: shortZeros } as QuantizedWeight), "shape_mismatch");
    let dtypeErr = "";
    try {
      linear(rec, good, { ...w, zeros: f32Zeros } as QuantizedWeight);
    } catch (e) {
      dtypeErr = isWebvlmError(e) ? e.code : String(e);
    }
    if (!dtypeErr) throw new Error("zeros dtype f32: nothing thrown");
    rec.submit();
    release(gpu, good, shortZeros, f32Zeros);
    releaseWeight(gpu, w);
    if (rec.dispatchCount !== 0) throw new Error("a rejected call dispatched work");
    return `size mismatch -> shape_mismatch, f32 zeros -> ${dtypeErr}`;
  },
};

/**
 * The symmetric entry points' auto layouts must not hold the zeros binding (so their bind groups
 * are as before); the zeros entry points' must. A bind group with one entry more than the
 * layout has is a validation error.
 */
const layoutCase: KernelCase = {
  name: "linear zeros: symmetric pipelines have no zeros binding",
  async run(gpu) {
    const { device } = gpu;
    const uniform = device.createBuffer({ size: 256, usage: 0x40 });
    const storage = device.createBuffer({ size: 256, usage: 0x80 });
    const variants: { name: string; code: string; sym: string; z: string; n: number; c: PipelineConstants }[] = [
      { name: "gemv_q", code: gemvQCode, sym: "main", z: "main_zeros", n: 7, c: { BITS: 4, LANES: 8, TEAMS: 32, R: 1, MROWS: 1, XC: 8 } },
      { name: "gemv_rows", code: gemvRowsCode, sym: "quant", z: "quant_zeros", n: 7, c: { BITS: 8 } },
      { name: "matmul_q", code: matmulQCode, sym: "main", z: "main_zeros", n: 6, c: { BITS: 4 } },
    ];
    const tryGroup = async (layout: GPUBindGroupLayout, count: number): Promise<boolean> => {
      device.pushErrorScope("validation");
      const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: uniform, size: 32 } }];
      for (let i = 1; i < count; i++) entries.push({ binding: i, resource: { buffer: storage } });
      device.createBindGroup({ layout, entries });
      return (await device.popErrorScope()) === null;
    };
    const out: string[] = [];
    for (const v of variants) {
      const sym = gpu.pipelines.entry(v.code, v.c, v.sym).layout;
      const zer = gpu.pipelines.entry(v.code, { ...v.c, ZEROS: true }, v.z).layout;
      const symOk = await tryGroup(sym, v.n);
      const symExtra = await tryGroup(sym, v.n + 1);
      const zOk = await tryGroup(zer, v.n + 1);
      const zShort = await tryGroup(zer, v.n);
      if (!symOk || symExtra) throw new Error(`${v.name} ${v.sym}: layout is not bindings 0..${v.n - 1}`);
      if (!zOk || zShort) throw new Error(`${v.name} ${v.z}: layout is not bindings 0..${v.n}`);
      out.push(`${v.name}: ${v.sym} 0..${v.n - 1}, ${v.z} 0..${v.n}`);
    }
    uniform.destroy();
    storage.destroy();
    return out.join("; ");
  },
};

export const cases: KernelCase[] = [
  layoutCase,
  ...(["q4", "q8"] as const).flatMap((f, i) => SHAPES.map((s, j) => shapeCase(f, s, 1000 * (i + 1) + 20 * j))),
  ...(["q4", "q8"] as const).flatMap((f) => [shardCase(f, 1, 96), shardCase(f, 2, 520), shardCase(f, 17, 96)]),
  validationCase,
];
