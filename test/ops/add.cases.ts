import { add } from "../../src/ops/add.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";

function addReference(a: Float32Array, b: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] + b[i];
  return out;
}

export const cases: KernelCase[] = [1, 17, 300 * 1536, 70000 * 256 + 3].map((n) => ({
  name: `add n=${n}`,
  async run(gpu) {
    const a = randomArray(n, 1);
    const b = randomArray(n, 2);
    const rec = new Recorder(gpu);
    const ta = uploadTensor(gpu, a, [n], "f32");
    const tb = uploadTensor(gpu, b, [n], "f32");
    const out = add(rec, ta, tb);
    rec.submit();
    const got = await readF32(gpu, out);
    for (const t of [ta, tb, out]) gpu.pool.release(t.buffer);
    return `nmse=${expectClose("add", got, addReference(a, b), 0).toExponential(2)}`;
  },
}));
