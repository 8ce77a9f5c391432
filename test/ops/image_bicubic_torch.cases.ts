// bicubicTorch (GPU) vs resizeTorchBicubicChw (CPU), compared bit for bit. The check is sensitive
// to FMA contraction: the same resize with each product fused into the running sum (one rounding
// instead of two) differs from the reference in about 40% of the 3x672x1008 -> 336x336 outputs.
import { bicubicTorch } from "../../src/ops/image_bicubic_torch.ts";
import { WebvlmError } from "../../src/api/errors.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { allocTensor, readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { resizeTorchBicubicChw } from "../../src/vision/resize_torch_bicubic.ts";
import type { KernelCase } from "../util/cases.ts";
import { randomArray } from "../util/compare.ts";

/** f32 bits mapped to a line where adjacent floats differ by 1 (so ULP distance is a difference). */
function ordered(bits: number): number {
  return bits & 0x80000000 ? -(bits & 0x7fffffff) : bits;
}

/** Throws unless got and want are bit-identical (Uint32 views); returns what it measured. */
function expectBitExact(label: string, got: Float32Array, want: Float32Array): string {
  if (got.length !== want.length) throw new Error(`${label}: length ${got.length} != reference ${want.length}`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  let differing = 0;
  let maxUlp = 0;
  let first = -1;
  for (let i = 0; i < w.length; i++) {
    if (g[i] === w[i]) continue;
    if (first < 0) first = i;
    differing++;
    maxUlp = Math.max(maxUlp, Math.abs(ordered(g[i]) - ordered(w[i])));
  }
  if (differing > 0) {
    throw new Error(
      `${label}: ${differing} of ${w.length} values differ from the CPU reference, max ${maxUlp} ULP ` +
        `(first at ${first}: ${got[first]} != ${want[first]})`,
    );
  }
  return `bit-exact, ${w.length} values`;
}

interface Shape {
  c: number;
  h: number;
  w: number;
  outH: number;
  outW: number;
  /** Input value range; wide ranges with mixed magnitudes stress the f32 rounding of each step. */
  lo?: number;
  hi?: number;
  /** Spread magnitudes over 2^-spread .. 2^spread (random exponent per value). */
  spread?: number;
}

const shapes: Shape[] = [
  { c: 3, h: 7, w: 5, outH: 13, outW: 11 }, // odd up-scaling
  { c: 3, h: 50, w: 40, outH: 17, outW: 23 }, // odd down-scaling
  { c: 3, h: 1, w: 1, outH: 4, outW: 4 }, // a single pixel: every tap clamps to it
  { c: 3, h: 9, w: 9, outH: 9, outW: 9 }, // same size: weights [0, 1, 0, 0]
  { c: 3, h: 24, w: 31, outH: 48, outW: 15 }, // up one axis, down the other
  { c: 1, h: 2, w: 300, outH: 64, outW: 5 }, // extreme aspect ratios
  { c: 2, h: 400, w: 3, outH: 7, outW: 129 },
  { c: 3, h: 1, w: 777, outH: 3, outW: 1 },
  { c: 3, h: 19, w: 23, outH: 41, outW: 37, lo: -1e4, hi: 1e4, spread: 20 },
  { c: 3, h: 672, w: 1008, outH: 336, outW: 336, lo: -1.8, hi: 2.2 }, // Phi-3.5-vision's global view (2x3 crops)
  { c: 3, h: 1344, w: 336, outH: 336, outW: 336, lo: -1.8, hi: 2.2 }, // a tall 4x1 HD image
];

function input(s: Shape, seed: number): Float32Array {
  const n = s.c * s.h * s.w;
  const x = randomArray(n, seed, s.lo ?? -1, s.hi ?? 1);
  if (s.spread) {
    const e = randomArray(n, seed + 1, -s.spread, s.spread);
    for (let i = 0; i < n; i++) x[i] *= 2 ** Math.round(e[i]);
  }
  return x;
}

export const cases: KernelCase[] = shapes.map((s, i) => ({
  name: `bicubicTorch ${s.c}x${s.h}x${s.w} -> ${s.c}x${s.outH}x${s.outW}${s.spread ? " (wide range)" : ""}`,
  async run(gpu) {
    const x = input(s, 100 + i);
    const want = resizeTorchBicubicChw({ data: x, width: s.w, height: s.h, channels: s.c }, s.outW, s.outH);
    const rec = new Recorder(gpu);
    const tx = uploadTensor(gpu, x, [s.c, s.h, s.w], "f32");
    const out = bicubicTorch(rec, tx, s.outH, s.outW);
    rec.submit();
    const got = await readF32(gpu, out);
    for (const t of [tx, out]) gpu.pool.release(t.buffer);
    if (out.shape.join() !== [s.c, s.outH, s.outW].join()) throw new Error(`output shape [${out.shape}]`);
    return expectBitExact("bicubicTorch", got, want.data);
  },
}));

cases.push(
  {
    // Two resizes in one submit, the second into a given tensor: each call's tap uploads stay its own.
    name: "bicubicTorch two calls in one submit, preallocated out",
    async run(gpu) {
      const a = { c: 3, h: 11, w: 13, outH: 5, outW: 29 };
      const b = { c: 2, h: 40, w: 6, outH: 40, outW: 17 };
      const xa = input(a, 7);
      const xb = input(b, 8);
      const rec = new Recorder(gpu);
      const ta = uploadTensor(gpu, xa, [a.c, a.h, a.w], "f32");
      const tb = uploadTensor(gpu, xb, [b.c, b.h, b.w], "f32");
      const oa = bicubicTorch(rec, ta, a.outH, a.outW);
      const given = allocTensor(gpu, [b.c, b.outH, b.outW], "f32");
      const ob = bicubicTorch(rec, tb, b.outH, b.outW, given);
      rec.submit();
      if (ob !== given) throw new Error("out tensor not used");
      const ga = await readF32(gpu, oa);
      const gb = await readF32(gpu, ob);
      for (const t of [ta, tb, oa, ob]) gpu.pool.release(t.buffer);
      const ra = resizeTorchBicubicChw({ data: xa, width: a.w, height: a.h, channels: a.c }, a.outW, a.outH);
      const rb = resizeTorchBicubicChw({ data: xb, width: b.w, height: b.h, channels: b.c }, b.outW, b.outH);
      return `${expectBitExact("first", ga, ra.data)}; ${expectBitExact("second", gb, rb.data)}`;
    },
  },
  {
    name: "bicubicTorch rejects bad shapes and sizes before dispatching",
    async run(gpu) {
      const rec = new Recorder(gpu);
      const x = allocTensor(gpu, [3, 4, 5], "f32");
      const flat = allocTensor(gpu, [60], "f32");
      const wrongOut = allocTensor(gpu, [3, 6, 6], "f32");
      const attempts: [string, () => unknown, string][] = [
        ["2-D input", () => bicubicTorch(rec, flat, 4, 4), "shape_mismatch"],
        ["zero height", () => bicubicTorch(rec, x, 0, 4), "bad_request"],
        ["fractional width", () => bicubicTorch(rec, x, 4, 2.5), "bad_request"],
        ["wrong out shape", () => bicubicTorch(rec, x, 6, 7, wrongOut), "shape_mismatch"],
      ];
      for (const [what, call, code] of attempts) {
        let err: unknown = null;
        try {
          call();
        } catch (e) {
          err = e;
        }
        if (!(err instanceof WebvlmError) || err.code !== code) {
          throw new Error(`${what}: expected WebvlmError ${code}, got ${String(err)}`);
        }
      }
      if (rec.dispatchCount !== 0) throw new Error(`${rec.dispatchCount} dispatches recorded by rejected calls`);
      rec.submit();
      for (const t of [x, flat, wrongOut]) gpu.pool.release(t.buffer);
      return `${attempts.length} rejected`;
    },
  },
);

/** Every case also runs in Chromium (they are fast, and preprocessing must match the CPU path there too). */
export const browserEvery = 1;
