// Softmax along the last dim vs a float64 CPU reference (max-subtracted, as torch).
// Tolerance: NMSE <= 1e-12 per row (f32; measured ~1e-14); each row must sum to 1 within 1e-5.
import { softmax } from "../../src/ops/softmax.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";

export function softmaxReference(x: Float32Array, rows: number, n: number): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let i = 0; i < n; i++) m = Math.max(m, x[r * n + i]);
    let s = 0;
    for (let i = 0; i < n; i++) s += Math.exp(x[r * n + i] - m);
    for (let i = 0; i < n; i++) out[r * n + i] = Math.exp(x[r * n + i] - m) / s;
  }
  return out;
}

interface SoftmaxShape {
  rows: number;
  n: number;
  lo: number;
  hi: number;
  note?: string;
  /** edits the input after generation */
  edit?: (x: Float32Array, rows: number, n: number) => void;
}

const shapes: SoftmaxShape[] = [
  { rows: 1, n: 1, lo: -5, hi: 5 },
  { rows: 17, n: 17, lo: -5, hi: 5 },
  { rows: 300, n: 80, lo: -10, hi: 10 },
  { rows: 5, n: 1000, lo: 80, hi: 120, note: "large logits: exp would overflow unshifted" },
  {
    rows: 17,
    n: 300,
    lo: -8,
    hi: 8,
    note: "masked with -1e30, one row fully masked but one",
    edit(x, rows, n) {
      for (let r = 0; r < rows; r++) for (let i = r % 3; i < n; i += 3) x[r * n + i] = -1e30;
      for (let i = 1; i < n; i++) x[3 * n + i] = -1e30;
    },
  },
  {
    rows: 4,
    n: 4099,
    lo: -3,
    hi: 3,
    note: "running max rises at the end and at the start",
    edit(x, rows, n) {
      x[n - 1] = 40; // row 0: the max is the very last element
      x[n] = 40; // row 1: the max is the first element
      for (let i = 0; i < n; i++) x[2 * n + i] = i / 100; // row 2: increasing (rescale every step)
    },
  },
  { rows: 1, n: 151936, lo: -20, hi: 20, note: "decode logits" },
  { rows: 3, n: 151936, lo: -15, hi: 25 },
];

export const cases: KernelCase[] = shapes.map(({ rows, n, lo, hi, note, edit }) => ({
  name: `softmax rows=${rows} n=${n}${note ? ` (${note})` : ""}`,
  async run(gpu) {
    const x = randomArray(rows * n, 81 + n + rows, lo, hi);
    edit?.(x, rows, n);
    const tx = uploadTensor(gpu, x, [rows, n], "f32");
    const rec = new Recorder(gpu);
    const out = softmax(rec, tx);
    rec.submit();
    const got = await readF32(gpu, out);
    for (const t of [tx, out]) gpu.pool.release(t.buffer);
    const want = softmaxReference(x, rows, n);
    let worst = 0;
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += got[r * n + i];
      if (!(Math.abs(s - 1) <= 1e-5)) throw new Error(`softmax row ${r} sums to ${s}`);
      const [b, e] = [r * n, (r + 1) * n];
      worst = Math.max(worst, expectClose(`softmax row ${r}`, got.subarray(b, e), want.subarray(b, e), 1e-12));
    }
    return `max row nmse=${worst.toExponential(2)}`;
  },
}));
