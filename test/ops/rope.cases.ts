import { applyRope, type RopeOptions } from "../../src/ops/rope.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, expectEqual, randomArray } from "../util/compare.ts";

const f = Math.fround;

// Tolerance: everything is f32 with sin/cos of the f32-rounded angle to ~1 ulp; measured NMSE is
// ~1e-15, so 1e-12 still fails on any real defect (a naive sin() at positions ~20000 gives ~1e-7).
const TOL = 1e-12;

/** torch: 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), in f32. */
function torchInvFreq(theta: number, dim: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < dim; i += 2) out.push(f(1 / f(theta ** f(i / dim))));
  return out;
}

type Mode = "1d" | "mrope" | "vision";

/**
 * cos/sin tables [S][headDim] built the way transformers does:
 * - 1d / mrope (Qwen2VLRotaryEmbedding + apply_multimodal_rotary_pos_emb): freqs[r][s][j] =
 *   f32(pos[r][s]) * inv_freq[j]; emb = cat(freqs, freqs); then chunk by mrope_section * 2 and take
 *   chunk i from position row i % 3.
 * - vision (VisionRotaryEmbedding(head_dim / 2) + rot_pos_emb): rotary = cat(hpos * inv, wpos * inv),
 *   emb = cat(rotary, rotary).
 */
function cosSin(mode: Mode, pos: Int32Array[], S: number, headDim: number, theta: number): [Float32Array, Float32Array] {
  const half = headDim / 2;
  const angle = new Float32Array(S * headDim);
  if (mode === "vision") {
    const inv = torchInvFreq(theta, half); // dim = head_dim / 2 = 40 -> 20 frequencies
    for (let s = 0; s < S; s++) {
      const rot = [...inv.map((w) => f(pos[0][s] * w)), ...inv.map((w) => f(pos[1][s] * w))];
      for (let d = 0; d < headDim; d++) angle[s * headDim + d] = rot[d % half];
    }
  } else {
    const inv = torchInvFreq(theta, headDim);
    const section = mode === "mrope" ? [16, 24, 24] : [half];
    const chunks = [...section, ...section];
    for (let s = 0; s < S; s++) {
      let d = 0;
      chunks.forEach((n, i) => {
        const r = i % section.length;
        for (let e = 0; e < n; e++, d++) angle[s * headDim + d] = f(pos[r][s] * inv[d % half]);
      });
    }
  }
  const cos = angle.map((a) => f(Math.cos(a)));
  const sin = angle.map((a) => f(Math.sin(a)));
  return [cos, sin];
}

/** q * cos + rotate_half(q) * sin on heads [colOffset, colOffset + numHeads * headDim) of each row. */
function ropeReference(
  x: Float32Array, rowStride: number, colOffset: number, numHeads: number, headDim: number,
  cos: Float32Array, sin: Float32Array, S: number,
): Float32Array {
  const out = x.slice();
  const half = headDim / 2;
  for (let s = 0; s < S; s++) {
    for (let h = 0; h < numHeads; h++) {
      const b = s * rowStride + colOffset + h * headDim;
      for (let d = 0; d < headDim; d++) {
        const rot = d < half ? -x[b + d + half] : x[b + d - half];
        const c = cos[s * headDim + d];
        const sn = sin[s * headDim + d];
        out[b + d] = f(f(x[b + d] * c) + f(rot * sn));
      }
    }
  }
  return out;
}

interface RopeCase {
  name: string;
  mode: Mode;
  S: number;
  headDim: number;
  numHeads: number;
  rowStride: number;
  colOffset: number;
  positions: (s: number) => number[]; // one value per position row
}

function run(c: RopeCase): KernelCase {
  return {
    name: c.name,
    async run(gpu) {
      const theta = c.mode === "mrope" ? 1e6 : 10000;
      const nrows = c.mode === "mrope" ? 3 : c.mode === "vision" ? 2 : 1;
      const pos = Array.from({ length: nrows }, () => new Int32Array(c.S));
      for (let s = 0; s < c.S; s++) c.positions(s).forEach((p, r) => (pos[r][s] = p));
      const flatPos = new Int32Array(nrows * c.S);
      pos.forEach((row, r) => flatPos.set(row, r * c.S));
      const x = randomArray(c.S * c.rowStride, 1000 + c.S + c.headDim, -2, 2);

      const opts: RopeOptions = {
        numHeads: c.numHeads,
        headDim: c.headDim,
        colOffset: c.colOffset,
        theta,
        sections: c.mode === "mrope" ? [16, 24, 24] : c.mode === "vision" ? [c.headDim / 4, c.headDim / 4] : [c.headDim / 2],
        restartPerSection: c.mode === "vision",
      };
      const rec = new Recorder(gpu);
      const tx = uploadTensor(gpu, x, [c.S, c.rowStride], "f32");
      const tp = uploadTensor(gpu, flatPos, nrows === 1 ? [c.S] : [nrows, c.S], "i32");
      applyRope(rec, tx, tp, opts);
      rec.submit();
      const got = await readF32(gpu, tx);
      for (const t of [tx, tp]) gpu.pool.release(t.buffer);

      const [cos, sin] = cosSin(c.mode, pos, c.S, c.headDim, theta);
      const ref = ropeReference(x, c.rowStride, c.colOffset, c.numHeads, c.headDim, cos, sin, c.S);
      // Columns outside the rotated heads must be untouched (bit-exact).
      const outside = (a: Float32Array) =>
        a.filter((_, i) => {
          const col = i % c.rowStride;
          return col < c.colOffset || col >= c.colOffset + c.numHeads * c.headDim;
        });
      expectEqual(`${c.name} untouched`, outside(got), outside(x));
      return `nmse=${expectClose(c.name, got, ref, TOL).toExponential(2)}`;
    },
  };
}

const D = 128;
export const cases: KernelCase[] = [
  // Text M-RoPE, decode step: one row, large distinct t/h/w; q and k of a fused qkv row (2B: 12+2+2 heads scaled down).
  run({
    name: "mrope S=1 fused q+k (4+2 heads of 8) pos~20000",
    mode: "mrope", S: 1, headDim: D, numHeads: 6, rowStride: 8 * D, colOffset: 0,
    positions: () => [20011, 20003, 19997],
  }),
  run({
    name: "rope 1-D S=17 3 heads theta 1e4",
    mode: "1d", S: 17, headDim: D, numHeads: 3, rowStride: 3 * D, colOffset: 0,
    positions: (s) => [s],
  }),
  run({
    name: "mrope S=17 image-like grid positions, k only (colOffset 2*128)",
    mode: "mrope", S: 17, headDim: D, numHeads: 1, rowStride: 4 * D, colOffset: 2 * D,
    positions: (s) => [5, 5 + Math.floor(s / 4), 5 + (s % 4)],
  }),
  run({
    name: "mrope S=300 pos 20000..20300 distinct rows",
    mode: "mrope", S: 300, headDim: D, numHeads: 2, rowStride: 2 * D, colOffset: 0,
    positions: (s) => [20000 + s, 20000 + ((s * 7) % 300), 20300 - s],
  }),
  run({
    name: "rope 1-D S=69 pos 32700..32768 (largest angles)",
    mode: "1d", S: 69, headDim: D, numHeads: 2, rowStride: 2 * D, colOffset: 0,
    positions: (s) => [32700 + s],
  }),
  run({
    name: "vision 2-D S=300 head_dim 80, q+k of a fused qkv row (2 heads)",
    mode: "vision", S: 300, headDim: 80, numHeads: 4, rowStride: 6 * 80, colOffset: 0,
    positions: (s) => [Math.floor(s / 20) * 2 + ((s >> 1) & 1), (s % 20) + 40],
  }),
  run({
    name: "vision 2-D S=17 head_dim 80, k only (colOffset 2*80), large grid",
    mode: "vision", S: 17, headDim: 80, numHeads: 2, rowStride: 6 * 80, colOffset: 2 * 80,
    positions: (s) => [1000 + s, 2000 - 3 * s],
  }),
];
