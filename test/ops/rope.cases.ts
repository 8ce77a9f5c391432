import { applyRope, ropeAppendKv, type RopeOptions } from "../../src/ops/rope.ts";
import { appendKv, createKvCache, releaseKvCache } from "../../src/ops/kv_cache.ts";
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

/**
 * RoPE + KV append in one dispatch on fused q|k|v rows (M-RoPE): q and k rotated in place as the
 * reference says, cache rows [past, past + S) hold the rotated k and the unrotated v, rows before
 * `past` keep what an earlier append wrote, and v's columns of x are untouched.
 */
function runKv(name: string, S: number, Hq: number, Hkv: number, past: number): KernelCase {
  return {
    name,
    async run(gpu) {
      const W = (Hq + 2 * Hkv) * D;
      const width = Hkv * D;
      const pos = [0, 1, 2].map((r) => Int32Array.from({ length: S }, (_, s) => 3000 + past + s + 7 * r * (s % 3)));
      const flatPos = new Int32Array(3 * S);
      pos.forEach((row, r) => flatPos.set(row, r * S));
      const x = randomArray(S * W, 77 + S, -2, 2);
      const earlier = randomArray(past * width * 2, 78);
      const cache = createKvCache(gpu, { maxSeq: past + S + 3, numKvHeads: Hkv, headDim: D });
      const rec = new Recorder(gpu);
      // Rows before `past`: written by an ordinary append of (unrotated) rows.
      if (past > 0) {
        const tk = uploadTensor(gpu, earlier.subarray(0, past * width), [past, width], "f32");
        const tv = uploadTensor(gpu, earlier.subarray(past * width), [past, width], "f32");
        appendKv(rec, cache, { tensor: tk }, { tensor: tv }, 0);
        rec.submit();
        for (const t of [tk, tv]) gpu.pool.release(t.buffer);
      }
      const tx = uploadTensor(gpu, x, [S, W], "f32");
      const tp = uploadTensor(gpu, flatPos, [3, S], "i32");
      ropeAppendKv(rec, tx, tp, cache, past, { numQHeads: Hq, headDim: D, theta: 1e6, sections: [16, 24, 24], restartPerSection: false });
      rec.submit();
      const got = await readF32(gpu, tx);
      const gotK = await readF32(gpu, cache.k);
      const gotV = await readF32(gpu, cache.v);
      if (cache.length !== past + S) throw new Error(`cache length ${cache.length}, expected ${past + S}`);
      for (const t of [tx, tp]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);

      const [cos, sin] = cosSin("mrope", pos, S, D, 1e6);
      const ref = ropeReference(x, W, 0, Hq + Hkv, D, cos, sin, S);
      const e = expectClose(`${name} q|k`, got, ref, TOL);
      const refK = new Float32Array((past + S) * width);
      const refV = new Float32Array((past + S) * width);
      refK.set(earlier.subarray(0, past * width));
      refV.set(earlier.subarray(past * width));
      for (let s = 0; s < S; s++) {
        refK.set(ref.subarray(s * W + Hq * D, s * W + (Hq + Hkv) * D), (past + s) * width);
        refV.set(x.subarray(s * W + (Hq + Hkv) * D, (s + 1) * W), (past + s) * width);
      }
      // The cached k rows are bit for bit the k heads the kernel left rotated in x.
      for (let s = 0; s < S; s++) {
        expectEqual(`${name} k row ${past + s} = rotated k in x`, gotK.subarray((past + s) * width, (past + s + 1) * width), got.subarray(s * W + Hq * D, s * W + (Hq + Hkv) * D));
      }
      expectClose(`${name} k rows`, gotK.subarray(0, (past + S) * width), refK, TOL);
      expectEqual(`${name} v rows`, gotV.subarray(0, (past + S) * width), refV);
      return `q|k nmse=${e.toExponential(2)}; cache k/v rows ${past}..${past + S} exact`;
    },
  };
}

/**
 * A CPU-given inv_freq table (longrope-like: per-frequency factors, and llama3-like halving) with a
 * cos/sin scaling, as transformers applies attention_scaling: cos' = f32(cos * s), sin' = f32(sin * s).
 */
function runTable(name: string, S: number, headDim: number, numHeads: number, scaling: number, start: number): KernelCase {
  return {
    name,
    async run(gpu) {
      const half = headDim / 2;
      const inv = Float32Array.from(torchInvFreq(5e5, headDim), (w, j) => f(1 / f(f(1 + 0.37 * j) * f(1 / w))));
      const pos = Int32Array.from({ length: S }, (_, s) => start + s);
      const x = randomArray(S * numHeads * headDim, 500 + S, -2, 2);
      const rec = new Recorder(gpu);
      const tx = uploadTensor(gpu, x, [S, numHeads * headDim], "f32");
      const tp = uploadTensor(gpu, pos, [S], "i32");
      applyRope(rec, tx, tp, { numHeads, headDim, sections: [half], invFreq: inv, scaling });
      rec.submit();
      const got = await readF32(gpu, tx);
      for (const t of [tx, tp]) gpu.pool.release(t.buffer);
      const cos = new Float32Array(S * headDim);
      const sin = new Float32Array(S * headDim);
      const sc = f(scaling);
      for (let s = 0; s < S; s++) {
        for (let d = 0; d < headDim; d++) {
          const a = f(pos[s] * inv[d % half]);
          cos[s * headDim + d] = f(f(Math.cos(a)) * sc);
          sin[s * headDim + d] = f(f(Math.sin(a)) * sc);
        }
      }
      const ref = ropeReference(x, numHeads * headDim, 0, numHeads, headDim, cos, sin, S);
      return `nmse=${expectClose(name, got, ref, TOL).toExponential(2)}`;
    },
  };
}

const D = 128;
export const cases: KernelCase[] = [
  runTable("inv_freq table + scaling 1.1902 S=13 head_dim 24 (3 heads) pos 30..42", 13, 24, 3, Math.sqrt(1 + Math.log(4) / Math.log(32)), 30),
  runTable("inv_freq table, scaling 1, S=5 head_dim 16 pos 4000..4004", 5, 16, 2, 1, 4000),
  runKv("rope+kv_append decode: 12 q / 2 kv heads, past 5", 1, 12, 2, 5),
  runKv("rope+kv_append prefill: S=19, 3 q / 1 kv head, empty cache", 19, 3, 1, 0),
  runKv("rope+kv_append chunk: S=4, 6 q / 2 kv heads after 9 rows", 4, 6, 2, 9),
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
