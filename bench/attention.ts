// Decode attention over a filled KV cache at the 2B shape (12 query heads, 2 KV heads, d = 128).
import type { GpuContext } from "../src/gpu/device.ts";
import { allocTensor, uploadTensor, writeBytes } from "../src/gpu/transfer.ts";
import { attentionDecode } from "../src/ops/attention.ts";
import { createKvCache, releaseKvCache } from "../src/ops/kv_cache.ts";
import { randomArray } from "../test/util/compare.ts";
import { timeGpu } from "./timing.ts";

export async function benchAttentionDecode(gpu: GpuContext, context: number, reduced: boolean): Promise<{ ms: number; gbs: number }> {
  const numHeads = 12;
  const numKvHeads = 2;
  const headDim = 128;
  const width = numKvHeads * headDim;
  const cache = createKvCache(gpu, { maxSeq: context, numKvHeads, headDim });
  writeBytes(gpu, cache.k.buffer, cache.k.offset, randomArray(context * width, 11));
  writeBytes(gpu, cache.v.buffer, cache.v.offset, randomArray(context * width, 12));
  cache.length = context;
  const q = uploadTensor(gpu, randomArray(numHeads * headDim, 13), [1, numHeads * headDim], "f32");
  const out = allocTensor(gpu, [1, numHeads * headDim], "f32");
  const t = await timeGpu(gpu, (rec) => attentionDecode(rec, { tensor: q }, cache, context, { numHeads, out }), reduced ? 4 : 100);
  const kvBytes = 2 * context * width * 4;
  releaseKvCache(gpu, cache);
  gpu.pool.release(q.buffer);
  gpu.pool.release(out.buffer);
  return { ms: t.ms, gbs: kvBytes / (t.ms * 1e6) };
}
