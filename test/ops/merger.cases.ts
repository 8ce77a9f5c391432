// Qwen2-VL patch merger front end: LayerNorm per patch row ([4N, W]), then the 2x2 merge is a
// free row-major view ([N, 4W]: 4 consecutive rows side by side). No kernel is needed for the
// merge: the check is that layerNorm + reshape equals a CPU reference that concatenates rows
// explicitly, and that a row-wise kernel (rmsNorm over 4W) consumes the view as 4W-wide rows.
// Tolerance NMSE <= 1e-12 (f32).
import { layerNorm } from "../../src/ops/layer_norm.ts";
import { rmsNorm } from "../../src/ops/rms_norm.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { reshape } from "../../src/gpu/tensor.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";
import { layerNormReference, rmsNormReference } from "./norms.cases.ts";

/** merged[n, j*W + c] = rows[4n + j, c]: the explicit concatenation. */
function mergeReference(rows: Float64Array, n: number, w: number): Float32Array {
  const out = new Float32Array(n * 4 * w);
  for (let m = 0; m < n; m++) {
    for (let j = 0; j < 4; j++) {
      for (let c = 0; c < w; c++) out[m * 4 * w + j * w + c] = rows[(4 * m + j) * w + c];
    }
  }
  return out;
}

const EPS = 1e-6;
const shapes: [number, number][] = [
  [1, 40],
  [7, 40],
  [75, 40],
  [3, 1280],
];

export const cases: KernelCase[] = shapes.map(([n, w]) => ({
  name: `merger LN [${4 * n}, ${w}] -> view [${n}, ${4 * w}]`,
  async run(gpu) {
    const x = randomArray(4 * n * w, 121 + n, -2, 2);
    const g = randomArray(w, 122, 0.5, 1.5);
    const b = randomArray(w, 123, -0.3, 0.3);
    const g4 = randomArray(4 * w, 124, 0.5, 1.5);
    const tx = uploadTensor(gpu, x, [4 * n, w], "f32");
    const tg = uploadTensor(gpu, g, [w], "f32");
    const tb = uploadTensor(gpu, b, [w], "f32");
    const tg4 = uploadTensor(gpu, g4, [4 * w], "f32");
    const rec = new Recorder(gpu);
    const ln = layerNorm(rec, tx, tg, tb, EPS);
    const merged = reshape(ln, [n, 4 * w]);
    const normed = rmsNorm(rec, merged, tg4, EPS);
    rec.submit();
    if (merged.shape.join() !== `${n},${4 * w}`) throw new Error(`view shape [${merged.shape}]`);
    const got = await readF32(gpu, merged);
    const gotNormed = await readF32(gpu, normed);
    for (const t of [tx, tg, tb, tg4, ln, normed]) gpu.pool.release(t.buffer);
    const want = mergeReference(layerNormReference(x, g, b, 4 * n, w, EPS), n, w);
    const e = expectClose("merged", got, want, 1e-12);
    const e2 = expectClose("rmsNorm(merged)", gotNormed, rmsNormReference(want, g4, n, 4 * w, EPS), 1e-12);
    return `nmse merged=${e.toExponential(2)} rmsNorm over 4W=${e2.toExponential(2)}`;
  },
}));
