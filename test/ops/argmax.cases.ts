// Argmax along the last dim vs a CPU reference with torch.argmax's rules: the first index of
// the maximum; a NaN counts as the maximum (its first occurrence wins); -0 == +0.
// Exact comparison; every shape runs on both kernels (one workgroup per row, and split rows).
import { argmax } from "../../src/ops/argmax.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readTensor, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectEqual, randomArray } from "../util/compare.ts";

export function argmaxReference(x: Float32Array, rows: number, n: number): Uint32Array {
  const out = new Uint32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let i = 0; i < n; i++) {
      const v = x[r * n + i];
      if (Number.isNaN(v)) {
        best = i;
        break;
      }
      if (v > x[r * n + best]) best = i;
    }
    out[r] = best;
  }
  return out;
}

interface ArgmaxShape {
  rows: number;
  n: number;
  note: string;
  fill: (x: Float32Array, rows: number, n: number) => void;
}

/** Values from few levels, so rows hold many ties for the maximum. */
const fewLevels = (seed: number) => (x: Float32Array) => {
  const r = randomArray(x.length, seed);
  for (let i = 0; i < x.length; i++) x[i] = Math.floor(r[i] * 4);
};

const shapes: ArgmaxShape[] = [
  { rows: 1, n: 1, note: "single", fill: (x) => (x[0] = -3) },
  { rows: 17, n: 17, note: "random with ties", fill: fewLevels(91) },
  { rows: 300, n: 1000, note: "random with ties", fill: fewLevels(92) },
  { rows: 40, n: 9000, note: "random", fill: (x) => x.set(randomArray(x.length, 93, -30, 30)) },
  {
    rows: 1,
    n: 151936,
    note: "max at the last index",
    fill(x) {
      x.set(randomArray(x.length, 94, -20, 20));
      x[x.length - 1] = 21;
    },
  },
  {
    rows: 1,
    n: 151936,
    note: "max at index 0, tied at the last index",
    fill(x) {
      x.set(randomArray(x.length, 95, -20, 20));
      x[0] = 30;
      x[x.length - 1] = 30;
    },
  },
  {
    rows: 5,
    n: 151936,
    note: "ties across parts; all equal; all negative; -0 vs +0; NaN",
    fill(x, rows, n) {
      x.set(randomArray(x.length, 96, -20, 20));
      for (const i of [77777, 5000, 150000, 5001]) x[i] = 25; // row 0: first of 4 tied maxima = 5000
      x.fill(1.5, n, 2 * n); // row 1: all equal -> 0
      for (let i = 2 * n; i < 3 * n; i++) x[i] = -1 - Math.abs(x[i]); // row 2: all negative
      x[2 * n + 123456] = -0.5;
      for (let i = 3 * n; i < 4 * n; i++) x[i] = -Math.abs(x[i]) - 1; // row 3: -0 then +0 tie -> -0's index
      x[3 * n + 999] = -0;
      x[3 * n + 998] = -Infinity;
      x[3 * n + 100000] = 0;
      x[4 * n + 7000] = NaN; // row 4: NaN wins over +inf and later values
      x[4 * n + 6000] = Infinity;
      x[4 * n + 9000] = NaN;
    },
  },
];

export const cases: KernelCase[] = shapes.flatMap(({ rows, n, note, fill }) =>
  [false, true]
    .filter((split) => !split || rows <= 32)
    .map((split) => ({
      name: `argmax rows=${rows} n=${n} ${split ? "split" : "single"} (${note})`,
      async run(gpu) {
        const x = new Float32Array(rows * n);
        fill(x, rows, n);
        const tx = uploadTensor(gpu, x, [rows, n], "f32");
        const rec = new Recorder(gpu);
        const out = argmax(rec, tx, undefined, { split });
        const auto = argmax(rec, tx); // the shape-chosen variant must agree
        rec.submit();
        const got = await readTensor(gpu, out);
        const gotAuto = await readTensor(gpu, auto);
        for (const t of [tx, out, auto]) gpu.pool.release(t.buffer);
        const want = argmaxReference(x, rows, n);
        expectEqual("argmax", got, want);
        expectEqual("argmax (auto)", gotAuto, want);
        return `exact; idx=[${Array.from(want.slice(0, 5)).join(", ")}${rows > 5 ? ", ..." : ""}]`;
      },
    })),
);
