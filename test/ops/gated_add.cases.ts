// gatedAdd (out = residual + tanh(g) x, g read from a GPU buffer) vs a float64 reference:
// same-shape, in place, broadcast rows (repeat / interleave, mllama's position and tile
// embeddings), the 1 - tanh form, a row mask, and the shader's tanh across gate values.
// Tolerance: NMSE <= 1e-12 (f32 math, measured ~1e-15); the tanh sweep: relative error <= 1e-6.
import { gatedAdd, type GatedAddOptions } from "../../src/ops/gated_add.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, expectEqual, randomArray } from "../util/compare.ts";

interface Spec {
  name: string;
  rows: number;
  cols: number;
  /** x rows (default rows) and how they broadcast. */
  xRows?: number;
  broadcast?: "repeat" | "interleave";
  gates: number[];
  gateIndex?: number;
  form?: "tanh" | "oneMinusTanh";
  rowMask?: number[];
  inPlace?: boolean;
}

function gatedCase(c: Spec): KernelCase {
  return {
    name: c.name,
    async run(gpu) {
      const { rows, cols } = c;
      const xRows = c.xRows ?? rows;
      const res = randomArray(rows * cols, rows * 7 + cols, -2, 2);
      const x = randomArray(xRows * cols, rows * 7 + cols + 1, -3, 3);
      const g = Math.fround(c.gates[c.gateIndex ?? 0]); // the GPU reads the f32 gate
      const f = c.form === "oneMinusTanh" ? 1 - Math.tanh(g) : Math.tanh(g);
      const want = new Float64Array(rows * cols);
      const per = rows / xRows;
      for (let r = 0; r < rows; r++) {
        const xr = c.broadcast === "interleave" ? Math.floor(r / per) : r % xRows;
        const on = !c.rowMask || c.rowMask[r] !== 0;
        for (let k = 0; k < cols; k++) want[r * cols + k] = res[r * cols + k] + (on ? f * x[xr * cols + k] : 0);
      }
      const tres = uploadTensor(gpu, res, [rows, cols], "f32");
      const tx = uploadTensor(gpu, x, [xRows, cols], "f32");
      const tg = uploadTensor(gpu, Float32Array.from(c.gates), [c.gates.length], "f32");
      const tm = c.rowMask ? uploadTensor(gpu, Uint32Array.from(c.rowMask), [rows], "u32") : undefined;
      const opts: GatedAddOptions = { gateIndex: c.gateIndex, form: c.form, broadcast: c.broadcast, rowMask: tm, out: c.inPlace ? tres : undefined };
      const rec = new Recorder(gpu);
      const out = gatedAdd(rec, tres, tx, tg, opts);
      rec.submit();
      const got = await readF32(gpu, out);
      const resAfter = await readF32(gpu, tres);
      for (const t of new Set<Tensor>([tres, tx, tg, out, ...(tm ? [tm] : [])])) gpu.pool.release(t.buffer);
      if ((c.inPlace ?? false) !== (out === tres)) throw new Error("in-place result is not the residual tensor");
      if (!c.inPlace) expectEqual("residual untouched", resAfter, res);
      // Masked rows keep the residual bit for bit.
      for (let r = 0; r < rows; r++) {
        if (c.rowMask?.[r] === 0) expectEqual(`masked row ${r}`, got.subarray(r * cols, (r + 1) * cols), res.subarray(r * cols, (r + 1) * cols));
      }
      return `nmse=${expectClose(c.name, got, want, 1e-12).toExponential(2)} factor=${f.toPrecision(6)}`;
    },
  };
}

/** One dispatch per gate value on a 1x1 tensor (residual 0, x 1) reads back tanh(g) itself. */
const tanhSweep: KernelCase = {
  name: "tanh(gate) sweep: |g| from 1e-30 to 30, both signs",
  async run(gpu) {
    const gates: number[] = [0];
    for (let i = 0; i <= 120; i++) gates.push(10 ** (-30 + (31.5 * i) / 120)); // up to ~31.6
    for (let i = 0; i <= 200; i++) gates.push(0.001 + (3 * i) / 200); // dense around the 0.125 switch
    const all = Float32Array.from([...gates, ...gates.map((g) => -g)]);
    const tg = uploadTensor(gpu, all, [all.length], "f32");
    const zero = uploadTensor(gpu, new Float32Array(1), [1, 1], "f32");
    const one = uploadTensor(gpu, Float32Array.of(1), [1, 1], "f32");
    const rec = new Recorder(gpu);
    const outs = Array.from(all, (_, i) => gatedAdd(rec, zero, one, tg, { gateIndex: i }));
    rec.submit();
    let maxRel = 0;
    let worst = 0;
    for (let i = 0; i < all.length; i++) {
      const got = (await readF32(gpu, outs[i]))[0];
      const want = Math.tanh(all[i]);
      const rel = want === 0 ? Math.abs(got) : Math.abs(got - want) / Math.abs(want);
      if (rel > maxRel) [maxRel, worst] = [rel, all[i]];
      gpu.pool.release(outs[i].buffer);
    }
    for (const t of [tg, zero, one]) gpu.pool.release(t.buffer);
    if (!(maxRel <= 1e-6)) throw new Error(`tanh: max rel error ${maxRel.toExponential(3)} at g=${worst}`);
    return `maxRel=${maxRel.toExponential(2)} (g=${worst.toPrecision(4)}) over ${all.length} gates`;
  },
};

export const cases: KernelCase[] = [
  gatedCase({ name: "1x1, g=0.3", rows: 1, cols: 1, gates: [0.3] }),
  gatedCase({ name: "[17, 80], gate element 2 of 4 (g=-1.7)", rows: 17, cols: 80, gates: [5, 0.1, -1.7, 2], gateIndex: 2 }),
  gatedCase({ name: "in place [300, 64], g=1e-3 (series branch)", rows: 300, cols: 64, gates: [1e-3], inPlace: true }),
  gatedCase({ name: "g=0 adds nothing, [5, 33]", rows: 5, cols: 33, gates: [0] }),
  gatedCase({ name: "g=30 (tanh = 1), in place [3, 1000]", rows: 3, cols: 1000, gates: [30], inPlace: true }),
  gatedCase({ name: "1 - tanh, x [5, 16] repeated over 3 tiles (position embedding)", rows: 15, cols: 16, xRows: 5, broadcast: "repeat", gates: [0.8], form: "oneMinusTanh" }),
  gatedCase({ name: "x [3, 16] interleaved over 3 tiles x 5 patches (tile embedding)", rows: 15, cols: 16, xRows: 3, broadcast: "interleave", gates: [-0.4] }),
  gatedCase({ name: "row mask: rows before the image keep the residual, [13, 40]", rows: 13, cols: 40, gates: [0.9], rowMask: [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1] }),
  gatedCase({ name: "row mask in place, [7, 24]", rows: 7, cols: 24, gates: [-2.2], rowMask: [1, 0, 1, 0, 0, 1, 1], inPlace: true }),
  tanhSweep,
];
