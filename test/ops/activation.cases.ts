// SwiGLU (silu(gate) * up), QuickGELU, erf-GELU, tanh-GELU and GeGLU-tanh (plain and fused
// gate|up) vs float64 CPU references, plus the shader's f32 erf against a float64 erf written
// here (series / continued fraction).
// Tolerances: NMSE <= 1e-12 (f32 math; measured ~1e-15). erf: max abs error <= 2.5e-7 and
// NMSE <= 1e-13 over a dense sweep (the approximation is ~1.15 ulp, 6.8e-8 abs, in f32
// simulation; the rest is the device's exp).
import { erf, gelu, geluTanh, geluTanhMul, geluTanhMulFused, quickGelu, siluMul, siluMulFused } from "../../src/ops/activation.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";

const TWO_OVER_SQRT_PI = 2 / Math.sqrt(Math.PI);

/**
 * erf in float64 (Math has none). |x| < 3: erf = 2/sqrt(pi) e^{-x^2} sum_n 2^n x^{2n+1} / (1*3*...*(2n+1))
 * (all terms positive: no cancellation). |x| >= 3: erfc from its continued fraction
 * erfc(x) = e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...))))), evaluated bottom-up.
 */
export function erfReference(x: number): number {
  const a = Math.abs(x);
  if (a < 3) {
    let term = a;
    let sum = a;
    for (let n = 1; n < 200 && term > 1e-17 * sum; n++) {
      term *= (2 * a * a) / (2 * n + 1);
      sum += term;
    }
    return Math.sign(x) * TWO_OVER_SQRT_PI * Math.exp(-a * a) * sum;
  }
  return Math.sign(x) * (1 - erfcReference(a));
}

/** erfc in float64 with relative accuracy: the continued fraction for x >= 3, 1 - erf below. */
export function erfcReference(x: number): number {
  if (x < 3) return 1 - erfReference(x);
  let f = x;
  for (let k = 120; k >= 1; k--) f = x + k / 2 / f;
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

// Known values (mpmath, 30 digits) keep the reference itself honest.
const ERF_KNOWN: [number, number][] = [
  [0.5, 0.520499877813046537682746653892],
  [1, 0.842700792949714869341220635083],
  [2, 0.995322265018952734162069256367],
  [2.9, 0.999958902121900541142004123158],
  [3.5, 0.999999256901627658587254476316],
];
function checkErfReference(): void {
  for (const [x, want] of ERF_KNOWN) {
    const got = erfReference(x);
    if (Math.abs(got - want) > 2e-15 || erfReference(-x) !== -got) throw new Error(`erfReference(${x}) = ${got}, want ${want}`);
  }
  // erfc tail: erfc(5) = 1.53745979442803485e-12, erfc(9) = 4.13703174651381e-37
  for (const [x, want] of [[5, 1.53745979442803485e-12], [9, 4.13703174651381e-37]]) {
    const got = erfcReference(x);
    if (Math.abs(got / want - 1) > 1e-14) throw new Error(`erfcReference(${x}) = ${got}, want ${want}`);
  }
}

const silu = (v: number) => v / (1 + Math.exp(-v));
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
// 0.5 v (1 + tanh(u)) = v sigmoid(2u): the sigmoid form, so the negative tail has no cancellation.
const geluTanhRef = (v: number) => v / (1 + Math.exp(-2 * SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)));

// mpmath (30 digits) of 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the defining tanh form.
const GELU_TANH_KNOWN: [number, number][] = [
  [1, 0.8411919906082767047819958],
  [-1, -0.1588080093917232952180042],
  [2.5, 2.484915733910001417920508],
  [-3, -0.003637392081773018837816466],
  [-6, -8.439646700762297083708551e-11],
  [0.1, 0.05398275104543516437121984],
];
function checkGeluTanhReference(): void {
  for (const [x, want] of GELU_TANH_KNOWN) {
    const got = geluTanhRef(x);
    if (!(Math.abs(got / want - 1) < 1e-14)) throw new Error(`geluTanhRef(${x}) = ${got}, want ${want}`);
  }
}
const quickGeluRef = (v: number) => v / (1 + Math.exp(-1.702 * v));
// 1 + erf(u) = erfc(-u), taken directly so the negative tail stays exact in float64 too.
const geluRef = (v: number) => 0.5 * v * (v < 0 ? erfcReference(-v / Math.SQRT2) : 1 + erfReference(v / Math.SQRT2));

function release(gpu: GpuContext, ts: Tensor[]): void {
  for (const t of ts) gpu.pool.release(t.buffer);
}

async function unaryCase(
  gpu: GpuContext,
  op: (rec: Recorder, x: Tensor) => Tensor,
  ref: (v: number) => number,
  x: Float32Array,
  shape: number[],
): Promise<{ got: Float32Array; want: Float64Array }> {
  const tx = uploadTensor(gpu, x, shape, "f32");
  const rec = new Recorder(gpu);
  const out = op(rec, tx);
  rec.submit();
  const got = await readF32(gpu, out);
  release(gpu, [tx, out]);
  return { got, want: Float64Array.from(x, ref) };
}

const swigluShapes: [number, number][] = [
  [1, 1],
  [17, 80],
  [300, 1000],
  [2, 8960],
];

const swigluCases: KernelCase[] = swigluShapes.map(([rows, cols]) => ({
  name: `siluMul rows=${rows} I=${cols}`,
  async run(gpu) {
    const g = randomArray(rows * cols, 41 + cols, -12, 12);
    const u = randomArray(rows * cols, 42 + cols);
    const tg = uploadTensor(gpu, g, [rows, cols], "f32");
    const tu = uploadTensor(gpu, u, [rows, cols], "f32");
    const rec = new Recorder(gpu);
    const out = siluMul(rec, tg, tu);
    rec.submit();
    const got = await readF32(gpu, out);
    release(gpu, [tg, tu, out]);
    const want = Float64Array.from(g, (v, i) => silu(v) * u[i]);
    return `nmse=${expectClose("siluMul", got, want, 1e-12).toExponential(2)}`;
  },
}));

const fusedShapes: [number, number][] = [
  [1, 1],
  [17, 80],
  [3, 8960],
];

const fusedCases: KernelCase[] = fusedShapes.map(([rows, cols]) => ({
  name: `siluMulFused gateUp=[${rows}, 2*${cols}]`,
  async run(gpu) {
    const gu = randomArray(rows * 2 * cols, 51 + cols, -12, 12);
    const want = new Float64Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) want[r * cols + c] = silu(gu[r * 2 * cols + c]) * gu[r * 2 * cols + cols + c];
    }
    const t = uploadTensor(gpu, gu, [rows, 2 * cols], "f32");
    const rec = new Recorder(gpu);
    const out = siluMulFused(rec, t);
    rec.submit();
    if (out.shape[0] !== rows || out.shape[1] !== cols) throw new Error(`out shape [${out.shape}]`);
    const got = await readF32(gpu, out);
    release(gpu, [t, out]);
    return `nmse=${expectClose("siluMulFused", got, want, 1e-12).toExponential(2)}`;
  },
}));

const unaryShapes: [number, number, number][] = [
  // [rows, cols, gelu tolerance]: one element alone may sit in GELU's negative tail, where
  // f32 rounding of x/sqrt2 alone makes ~1e-5 relative error (erfc's condition number 2u^2).
  [1, 1, 1e-9],
  [17, 5120, 1e-12],
  [300, 1000, 1e-12],
];

const quickGeluCases: KernelCase[] = unaryShapes.map(([rows, cols]) => ({
  name: `quickGelu [${rows}, ${cols}]`,
  async run(gpu) {
    const x = randomArray(rows * cols, 61 + cols, -10, 10);
    const { got, want } = await unaryCase(gpu, quickGelu, quickGeluRef, x, [rows, cols]);
    return `nmse=${expectClose("quickGelu", got, want, 1e-12).toExponential(2)}`;
  },
}));

const geluCases: KernelCase[] = unaryShapes.map(([rows, cols, tol]) => ({
  name: `gelu (erf) [${rows}, ${cols}]`,
  async run(gpu) {
    const x = randomArray(rows * cols, 71 + cols, -8, 8);
    const { got, want } = await unaryCase(gpu, gelu, geluRef, x, [rows, cols]);
    return `nmse=${expectClose("gelu", got, want, tol).toExponential(2)}`;
  },
}));

/** Dense sweep of erf: x in [-6, 6] step 5e-5, plus tiny magnitudes down to 1e-30. */
const erfSweep: KernelCase = {
  name: "erf sweep [-6, 6] + tiny |x| (f32 approximation accuracy)",
  async run(gpu) {
    checkErfReference();
    const dense = 240001;
    const tiny = 2000;
    const x = new Float32Array(dense + 2 * tiny);
    for (let i = 0; i < dense; i++) x[i] = -6 + (12 * i) / (dense - 1);
    for (let i = 0; i < tiny; i++) {
      x[dense + 2 * i] = 10 ** (-30 + (30 * i) / tiny);
      x[dense + 2 * i + 1] = -x[dense + 2 * i];
    }
    const { got, want } = await unaryCase(gpu, erf, erfReference, x, [x.length]);
    let maxAbs = 0;
    let maxRel = 0;
    let worstX = 0;
    for (let i = 0; i < x.length; i++) {
      const e = Math.abs(got[i] - want[i]);
      if (e > maxAbs) [maxAbs, worstX] = [e, x[i]];
      if (want[i] !== 0) maxRel = Math.max(maxRel, e / Math.abs(want[i]));
    }
    if (!(maxAbs <= 2.5e-7)) throw new Error(`erf: max abs error ${maxAbs.toExponential(3)} at x=${worstX}`);
    if (!(maxRel <= 5e-7)) throw new Error(`erf: max rel error ${maxRel.toExponential(3)}`);
    const e = expectClose("erf", got, want, 1e-13);
    return `nmse=${e.toExponential(2)} maxAbs=${maxAbs.toExponential(2)} (x=${worstX.toPrecision(5)}) maxRel=${maxRel.toExponential(2)}`;
  },
};

/**
 * GELU across [-13, 10], tails included: absolute error <= 1e-6 everywhere, relative error
 * <= 4e-5 wherever |gelu| > 1e-30 (negative tail; ~1e-5 is f32's conditioning there) and
 * <= 1e-6 for x > -1.42 (x/sqrt2 > -1).
 */
const geluSweep: KernelCase = {
  name: "gelu sweep [-13, 10]",
  async run(gpu) {
    const n = 115001;
    const x = Float32Array.from({ length: n }, (_, i) => -13 + (23 * i) / (n - 1));
    const { got, want } = await unaryCase(gpu, gelu, geluRef, x, [n]);
    let maxAbs = 0;
    let maxRelTail = 0;
    let maxRelCore = 0;
    for (let i = 0; i < n; i++) {
      const e = Math.abs(got[i] - want[i]);
      maxAbs = Math.max(maxAbs, e);
      if (Math.abs(want[i]) > 1e-30) {
        const rel = e / Math.abs(want[i]);
        if (x[i] > -1.42) maxRelCore = Math.max(maxRelCore, rel);
        else maxRelTail = Math.max(maxRelTail, rel);
      }
    }
    if (!(maxAbs <= 1e-6)) throw new Error(`gelu: max abs error ${maxAbs.toExponential(3)}`);
    if (!(maxRelTail <= 4e-5)) throw new Error(`gelu: max rel error in the tail ${maxRelTail.toExponential(3)}`);
    if (!(maxRelCore <= 1e-6)) throw new Error(`gelu: max rel error ${maxRelCore.toExponential(3)}`);
    const e = expectClose("gelu", got, want, 1e-12);
    return `nmse=${e.toExponential(2)} maxAbs=${maxAbs.toExponential(2)} maxRel x>-1.42: ${maxRelCore.toExponential(2)}, tail: ${maxRelTail.toExponential(2)}`;
  },
};

const geluTanhCases: KernelCase[] = unaryShapes.map(([rows, cols]) => ({
  name: `geluTanh [${rows}, ${cols}]`,
  async run(gpu) {
    checkGeluTanhReference();
    const x = randomArray(rows * cols, 81 + cols, -8, 8);
    const { got, want } = await unaryCase(gpu, geluTanh, geluTanhRef, x, [rows, cols]);
    return `nmse=${expectClose("geluTanh", got, want, 1e-12).toExponential(2)}`;
  },
}));

/**
 * tanh-GELU across [-13, 25], tails and the +-20 clamp included: absolute error <= 1e-6
 * everywhere; relative error, wherever |y| > 1e-30, <= 2e-6 for x >= -3 and <= 4e-5 below:
 * in the negative tail y ~ x e^(2u) and f32 rounding of u (a few ulps) is amplified by |2u|
 * (65 at x = -9), as in erf-GELU's tail; torch's own f32 result has that error and more.
 */
const geluTanhSweep: KernelCase = {
  name: "geluTanh sweep [-13, 25]",
  async run(gpu) {
    const n = 115001;
    const x = Float32Array.from({ length: n }, (_, i) => -13 + (38 * i) / (n - 1));
    const { got, want } = await unaryCase(gpu, geluTanh, geluTanhRef, x, [n]);
    let maxAbs = 0;
    let maxRelCore = 0;
    let maxRelTail = 0;
    for (let i = 0; i < n; i++) {
      const e = Math.abs(got[i] - want[i]);
      maxAbs = Math.max(maxAbs, e);
      if (Math.abs(want[i]) > 1e-30) {
        const rel = e / Math.abs(want[i]);
        if (x[i] >= -3) maxRelCore = Math.max(maxRelCore, rel);
        else maxRelTail = Math.max(maxRelTail, rel);
      }
    }
    if (!(maxAbs <= 1e-6)) throw new Error(`geluTanh: max abs error ${maxAbs.toExponential(3)}`);
    if (!(maxRelCore <= 2e-6)) throw new Error(`geluTanh: max rel error ${maxRelCore.toExponential(3)} (x >= -3)`);
    if (!(maxRelTail <= 4e-5)) throw new Error(`geluTanh: max rel error in the tail ${maxRelTail.toExponential(3)}`);
    const e = expectClose("geluTanh", got, want, 1e-12);
    return `nmse=${e.toExponential(2)} maxAbs=${maxAbs.toExponential(2)} maxRel x>=-3: ${maxRelCore.toExponential(2)}, tail: ${maxRelTail.toExponential(2)}`;
  },
};

const geluTanhMulCases: KernelCase[] = fusedShapes.flatMap(([rows, cols]): KernelCase[] => [
  {
    name: `geluTanhMul rows=${rows} I=${cols}`,
    async run(gpu) {
      const g = randomArray(rows * cols, 91 + cols, -8, 8);
      const u = randomArray(rows * cols, 92 + cols);
      const tg = uploadTensor(gpu, g, [rows, cols], "f32");
      const tu = uploadTensor(gpu, u, [rows, cols], "f32");
      const rec = new Recorder(gpu);
      const out = geluTanhMul(rec, tg, tu);
      rec.submit();
      const got = await readF32(gpu, out);
      release(gpu, [tg, tu, out]);
      const want = Float64Array.from(g, (v, i) => geluTanhRef(v) * u[i]);
      return `nmse=${expectClose("geluTanhMul", got, want, 1e-12).toExponential(2)}`;
    },
  },
  {
    name: `geluTanhMulFused gateUp=[${rows}, 2*${cols}]`,
    async run(gpu) {
      const gu = randomArray(rows * 2 * cols, 93 + cols, -8, 8);
      const want = new Float64Array(rows * cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) want[r * cols + c] = geluTanhRef(gu[r * 2 * cols + c]) * gu[r * 2 * cols + cols + c];
      }
      const t = uploadTensor(gpu, gu, [rows, 2 * cols], "f32");
      const rec = new Recorder(gpu);
      const out = geluTanhMulFused(rec, t);
      rec.submit();
      if (out.shape[0] !== rows || out.shape[1] !== cols) throw new Error(`out shape [${out.shape}]`);
      const got = await readF32(gpu, out);
      release(gpu, [t, out]);
      return `nmse=${expectClose("geluTanhMulFused", got, want, 1e-12).toExponential(2)}`;
    },
  },
]);

export const cases: KernelCase[] = [
  ...swigluCases, ...fusedCases, ...quickGeluCases, ...geluCases, erfSweep, geluSweep,
  ...geluTanhCases, geluTanhSweep, ...geluTanhMulCases,
];
