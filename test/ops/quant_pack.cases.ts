import { f16BitsToF32 } from "../../src/quant/f16.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { linear, linearKernel } from "../../src/ops/linear.ts";
import { GROUP_SIZE, type Weight } from "../../src/quant/formats.ts";
import { dequantize, quantize, uploadWeight, weightTensors, type PackedQuant } from "../../src/quant/pack.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectEqual, randomArray } from "../util/compare.ts";

/** Code of element (r, c) read straight from the packed words, as formats.ts documents the layout. */
function rawCode(p: PackedQuant, r: number, c: number): number {
  const groups = p.paddedCols / GROUP_SIZE;
  const g = Math.floor(c / GROUP_SIZE);
  const i = c % GROUP_SIZE;
  if (p.format === "q4") {
    const word = p.data[(r * groups + g) * 4 + Math.floor(i / 8)];
    return ((word >>> (4 * (i % 8))) & 15) - 8; // value = (q - 8) * scale
  }
  const byte = (p.data[(r * groups + g) * 8 + Math.floor(i / 4)] >>> (8 * (i % 4))) & 255;
  return byte >= 128 ? byte - 256 : byte;
}

function scaleOf(p: PackedQuant, r: number, c: number): number {
  return f16BitsToF32(p.scales[r * (p.paddedCols / GROUP_SIZE) + Math.floor(c / GROUP_SIZE)]);
}

/**
 * A matrix with awkward content: random rows at several magnitudes (1e-3 gives q8 f16-subnormal
 * scales), an all-zero row and an all-zero group inside a random row. (Groups with max |w| below
 * ~1e-5 get f16 scales too coarse or zero, so the bounds below would not hold there.)
 */
function testMatrix(rows: number, cols: number, seed: number): Float32Array {
  const v = randomArray(rows * cols, seed);
  const mags = [1, 1e-3, 100, 0.02, 0];
  for (let r = 0; r < rows; r++) {
    const mag = mags[r % mags.length];
    for (let c = 0; c < cols; c++) v[r * cols + c] *= mag;
  }
  for (let c = 32; c < 64 && c < cols; c++) v[cols + c] = 0; // row 1, group 1
  return v;
}

function checkFormat(format: "q4" | "q8"): string {
  const rows = 10;
  const cols = 77; // 3 groups, the last 13 wide; paddedCols 96
  const v = testMatrix(rows, cols, format === "q4" ? 7 : 8);
  const p = quantize(v, rows, cols, format);
  if (p.paddedCols !== 96) throw new Error(`paddedCols ${p.paddedCols} != 96`);
  const deq = dequantize(p);
  const [lo, hi] = format === "q4" ? [-8, 7] : [-127, 127];
  let worstInRange = 0;
  let clamped = 0;
  let zeroGroups = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < p.paddedCols; c++) {
      const q = rawCode(p, r, c);
      const s = scaleOf(p, r, c);
      if (c >= cols) {
        if (q !== 0) throw new Error(`${format}: padding (${r}, ${c}) has code ${q}, not zero`);
        continue;
      }
      const want = v[r * cols + c];
      const got = deq[r * cols + c];
      if (got !== q * s) throw new Error(`${format}: dequantize (${r}, ${c}) = ${got}, layout says ${q * s}`);
      const g0 = Math.floor(c / GROUP_SIZE) * GROUP_SIZE;
      const groupIsZero = v.subarray(r * cols + g0, r * cols + Math.min(g0 + GROUP_SIZE, cols)).every((x) => x === 0);
      if (groupIsZero) {
        if (got !== 0 || s !== 0) throw new Error(`${format}: zero group (${r}, ${c}) gives ${got}, scale ${s}`);
        if (c === g0) zeroGroups++;
        continue;
      }
      const t = want / s;
      const err = Math.abs(got - want);
      if (t >= lo && t <= hi) {
        if (err > (Math.abs(s) / 2) * (1 + 1e-9)) throw new Error(`${format}: (${r}, ${c}) error ${err} > scale/2 = ${Math.abs(s) / 2}`);
        worstInRange = Math.max(worstInRange, err / Math.abs(s));
      } else {
        // Clamped (q4: the side opposite the group's extreme; scales rounded down to f16).
        clamped++;
        if (err > Math.abs(s) * 1.01) throw new Error(`${format}: clamped (${r}, ${c}) error ${err} > scale ${Math.abs(s)}`);
      }
    }
  }
  if (zeroGroups !== 7) throw new Error(`${format}: expected 7 zero groups, saw ${zeroGroups}`);
  return `${format}: max in-range error ${worstInRange.toFixed(3)} * scale, ${clamped} clamped, ${zeroGroups} zero groups, padding zero`;
}

/** A quantized weight times identity rows must give back its dequantized columns exactly. */
function gpuIdentityCase(format: "q4" | "q8"): KernelCase {
  return {
    name: `quant_pack ${format} upload x identity`,
    async run(gpu) {
      const N = 40;
      const K = 72; // not a multiple of 32; a multiple of 4 so unit rows take the GEMV
      const v = testMatrix(N, K, 9);
      const deq = dequantize(quantize(v, N, K, format));
      const w = uploadWeight(gpu, v, N, K, format) as Weight;
      const eye = new Float32Array(K * K);
      for (let k = 0; k < K; k++) eye[k * K + k] = 1;
      const picks = [0, 37, 71]; // a few unit rows through the small-M path
      const units = new Float32Array(picks.length * K);
      picks.forEach((k, i) => (units[i * K + k] = 1));
      const tEye = uploadTensor(gpu, eye, [K, K], "f32");
      const tUnits = uploadTensor(gpu, units, [picks.length, K], "f32");
      const rec = new Recorder(gpu);
      const yEye = linear(rec, tEye, w);
      const yUnits = linear(rec, tUnits, w);
      rec.submit();
      const gotEye = await readF32(gpu, yEye);
      const gotUnits = await readF32(gpu, yUnits);
      for (const t of [tEye, tUnits, yEye, yUnits, ...weightTensors(w)]) gpu.pool.release(t.buffer);
      // y[k, n] = W[n, k]
      const wt = new Float32Array(K * N);
      for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) wt[k * N + n] = deq[n * K + k];
      expectEqual(`${format} identity (${linearKernel(K, w)})`, gotEye, wt);
      expectEqual(`${format} unit rows (${linearKernel(picks.length, w)})`, gotUnits, Float32Array.from(picks.flatMap((k) => Array.from(wt.subarray(k * N, (k + 1) * N)))));
      return `exact: ${linearKernel(K, w)} identity and ${linearKernel(picks.length, w)} unit rows reproduce dequantized W^T`;
    },
  };
}

export const cases: KernelCase[] = [
  { name: "quant_pack q4 cpu bounds", run: async () => checkFormat("q4") },
  { name: "quant_pack q8 cpu bounds", run: async () => checkFormat("q8") },
  gpuIdentityCase("q4"),
  gpuIdentityCase("q8"),
];
