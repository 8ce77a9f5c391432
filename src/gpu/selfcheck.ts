import { Recorder } from "./recorder.ts";
import { readF32, uploadTensor } from "./transfer.ts";
import type { GpuContext } from "./device.ts";
import { add } from "../ops/add.ts";

export interface SelfCheckResult {
  name: string;
  ok: boolean;
  maxAbsError: number;
  ms: number;
}

/**
 * A quick on-device check that kernels compute what the CPU computes, for the
 * demo page and `webvlm info`. The test suite is the thorough check.
 */
export async function selfCheck(gpu: GpuContext): Promise<SelfCheckResult[]> {
  const results: SelfCheckResult[] = [];
  const n = 1 << 16;
  const a = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
  const b = Float32Array.from({ length: n }, (_, i) => Math.cos(i * 0.5));
  const start = performance.now();
  const rec = new Recorder(gpu);
  const ta = uploadTensor(gpu, a, [n], "f32");
  const tb = uploadTensor(gpu, b, [n], "f32");
  const out = add(rec, ta, tb);
  rec.submit();
  const got = await readF32(gpu, out);
  let maxAbsError = 0;
  for (let i = 0; i < n; i++) maxAbsError = Math.max(maxAbsError, Math.abs(got[i] - Math.fround(a[i] + b[i])));
  results.push({ name: `add (${n} values)`, ok: maxAbsError === 0, maxAbsError, ms: performance.now() - start });
  for (const t of [ta, tb, out]) gpu.pool.release(t.buffer);
  return results;
}
