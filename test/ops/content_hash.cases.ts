// The GPU content key (ops/content_hash.ts): block hashes equal the CPU reference, equal
// contents give equal keys, and any one changed value changes the key.
import { uploadTensor } from "../../src/gpu/transfer.ts";
import { blockHashesCpu, gpuContentHash } from "../../src/ops/content_hash.ts";
import { contentHash } from "../../src/models/common/content_hash.ts";
import type { KernelCase } from "../util/cases.ts";

export const cases: KernelCase[] = [1, 4095, 4096, 70001].map((n) => ({
  name: `content hash n=${n}`,
  async run(gpu) {
    const values = Float32Array.from({ length: n }, (_, i) => Math.cos(i * 0.37));
    const words = new Uint32Array(values.buffer);
    const a = uploadTensor(gpu, values, [n], "f32");
    const b = uploadTensor(gpu, values.slice(), [n], "f32");
    const changed = values.slice();
    changed[n - 1] = Math.fround(changed[n - 1] + 1e-6) === changed[n - 1] ? changed[n - 1] + 1 : changed[n - 1] + 1e-6;
    const c = uploadTensor(gpu, changed, [n], "f32");
    const ka = await gpuContentHash(gpu, [a]);
    const want = contentHash([Uint32Array.of(n), blockHashesCpu(words)]);
    if (ka !== want) throw new Error(`gpu key ${ka} vs cpu reference ${want}`);
    if ((await gpuContentHash(gpu, [b])) !== ka) throw new Error("equal contents, different keys");
    if ((await gpuContentHash(gpu, [c])) === ka) throw new Error("a changed value kept the key");
    if ((await gpuContentHash(gpu, [a, a])) === ka) throw new Error("two tensors hashed like one");
    for (const t of [a, b, c]) gpu.pool.release(t.buffer);
    return `key ${ka}`;
  },
}));

/** Every case also runs in Chromium (they are fast, and preprocessing must match the CPU path there too). */
export const browserEvery = 1;
