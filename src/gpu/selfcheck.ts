import { Recorder } from "./recorder.ts";
import { readF32, releaseTensor, uploadTensor } from "./transfer.ts";
import type { GpuContext } from "./device.ts";
import type { Tensor } from "./tensor.ts";
import { add } from "../ops/add.ts";
import { rmsNorm } from "../ops/rms_norm.ts";
import { linear } from "../ops/linear.ts";
import { dequantize, quantize, uploadQuantized } from "../quant/pack.ts";

export interface SelfCheckResult {
  name: string;
  ok: boolean;
  /** max |gpu - cpu| relative to max |cpu| */
  relError: number;
  ms: number;
}

/** Deterministic test values (no Math.random, so a failure reproduces). */
function values(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.731 + seed) * 0.5);
}

function relError(got: Float32Array, want: ArrayLike<number>): number {
  let err = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  return scale === 0 ? err : err / scale;
}

/**
 * A quick on-device check that the main kernels compute what the CPU computes
 * (for the demo page and `webvlm info`); the test suite is the thorough check.
 */
export async function selfCheck(gpu: GpuContext): Promise<SelfCheckResult[]> {
  const results: SelfCheckResult[] = [];
  const run = async (name: string, tol: number, body: (rec: Recorder, keep: Tensor[]) => Tensor, want: ArrayLike<number>) => {
    const start = performance.now();
    const rec = new Recorder(gpu);
    const temps: Tensor[] = [];
    const out = body(rec, temps);
    rec.submit();
    const e = relError(await readF32(gpu, out), want);
    for (const t of [...temps, out]) releaseTensor(gpu, t);
    results.push({ name, ok: e <= tol, relError: e, ms: performance.now() - start });
  };

  const n = 1 << 16;
  const a = values(n, 1);
  const b = values(n, 2);
  await run("add (65536 values)", 0, (rec, keep) => {
    const ta = uploadTensor(gpu, a, [n], "f32");
    const tb = uploadTensor(gpu, b, [n], "f32");
    keep.push(ta, tb);
    return add(rec, ta, tb);
  }, a.map((v, i) => Math.fround(v + b[i])));

  const rows = 8;
  const h = 1536;
  const x = values(rows * h, 3);
  const w = values(h, 4).map((v) => 1 + v);
  const norm = new Float32Array(rows * h);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < h; i++) ss += x[r * h + i] ** 2;
    const inv = 1 / Math.sqrt(ss / h + 1e-6);
    for (let i = 0; i < h; i++) norm[r * h + i] = x[r * h + i] * inv * w[i];
  }
  await run("RMSNorm (8 x 1536)", 1e-5, (rec, keep) => {
    const tx = uploadTensor(gpu, x, [rows, h], "f32");
    const tw = uploadTensor(gpu, w, [h], "f32");
    keep.push(tx, tw);
    return rmsNorm(rec, tx, tw, 1e-6);
  }, norm);

  // q4 GEMV at a 2B-like width: the decode path's main kernel.
  const outF = 512;
  const wq = quantize(values(outF * h, 5), outF, h, "q4");
  const wd = dequantize(wq);
  const xv = values(h, 6);
  const y = new Float32Array(outF);
  for (let o = 0; o < outF; o++) {
    let s = 0;
    for (let i = 0; i < h; i++) s += wd[o * h + i] * xv[i];
    y[o] = s;
  }
  const weight = uploadQuantized(gpu, wq, "selfcheck.q4");
  await run("q4 GEMV (1 x 1536 -> 512)", 1e-5, (rec, keep) => {
    const tx = uploadTensor(gpu, xv, [1, h], "f32");
    keep.push(tx, weight.data, weight.scales);
    return linear(rec, tx, weight);
  }, y);
  return results;
}
