import { attentionDecode, attentionPrefill } from "../../src/ops/attention.ts";
import { appendKv, createKvCache, releaseKvCache, type KvCache } from "../../src/ops/kv_cache.ts";
import { isWebvlmError } from "../../src/api/errors.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, expectEqual, randomArray } from "../util/compare.ts";
import { attentionReference, type HostView } from "./attention.cases.ts";

// Tolerance for attention over the cache: f32 kernels vs an f64 reference (see attention.cases.ts).
const TOL = 1e-10;

// Qwen2-VL-2B text attention shape: 12 query heads, 2 kv heads, head_dim 128 (fused row q | k | v).
const HQ = 12;
const HKV = 2;
const D = 128;
const QW = HQ * D;
const KW = HKV * D;
const ROW = QW + 2 * KW;

/** A fused qkv chunk of `rows` rows, on the GPU and on the host. */
function fusedRows(gpu: GpuContext, rows: number, seed: number): { host: Float32Array; t: Tensor } {
  const host = randomArray(rows * ROW, seed, -2, 2);
  return { host, t: uploadTensor(gpu, host, [rows, ROW], "f32") };
}

/** Appends the k and v columns of a fused chunk (the way the decoder layer will). */
function append(rec: Recorder, cache: KvCache, t: Tensor, position: number): void {
  appendKv(rec, cache, { tensor: t, colOffset: QW }, { tensor: t, colOffset: QW + KW }, position);
}

/** Host copy of the cache contents the reference should see: rows of k (or v) columns. */
function gather(chunks: Float32Array[], off: number): Float32Array {
  const rows = chunks.reduce((n, c) => n + c.length / ROW, 0);
  const out = new Float32Array(rows * KW);
  let r = 0;
  for (const c of chunks) {
    for (let i = 0; i < c.length / ROW; i++, r++) out.set(c.subarray(i * ROW + off, i * ROW + off + KW), r * KW);
  }
  return out;
}

async function expectCode(label: string, code: string, fn: () => void): Promise<void> {
  try {
    fn();
  } catch (e) {
    if (isWebvlmError(e) && e.code === code) return;
    throw new Error(`${label}: expected WebvlmError ${code}, got ${String(e)}`);
  }
  throw new Error(`${label}: expected WebvlmError ${code}, nothing thrown`);
}

export const cases: KernelCase[] = [
  {
    name: "append 17 + 1 fused rows: cache rows equal the k/v columns bit-exactly",
    async run(gpu) {
      const cache = createKvCache(gpu, { maxSeq: 40, numKvHeads: HKV, headDim: D });
      const a = fusedRows(gpu, 17, 1);
      const b = fusedRows(gpu, 1, 2);
      const rec = new Recorder(gpu);
      append(rec, cache, a.t, 0);
      append(rec, cache, b.t, 17);
      rec.submit();
      const k = (await readF32(gpu, cache.k)).subarray(0, 18 * KW);
      const v = (await readF32(gpu, cache.v)).subarray(0, 18 * KW);
      expectEqual("cache.k", k, gather([a.host, b.host], QW));
      expectEqual("cache.v", v, gather([a.host, b.host], QW + KW));
      if (cache.length !== 18) throw new Error(`cache.length ${cache.length} != 18`);
      for (const t of [a.t, b.t]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return "exact";
    },
  },
  {
    name: "prefill 17, prefill 5 (past 17), decode 1 over the cache vs reference (GQA 6, D=128)",
    async run(gpu) {
      const cache = createKvCache(gpu, { maxSeq: 48, numKvHeads: HKV, headDim: D });
      const chunks = [fusedRows(gpu, 17, 3), fusedRows(gpu, 5, 4), fusedRows(gpu, 1, 5)];
      const rec = new Recorder(gpu);
      const outs: Tensor[] = [];
      let past = 0;
      for (const [n, c] of chunks.entries()) {
        const rows = c.t.shape[0];
        append(rec, cache, c.t, past);
        const q = { tensor: c.t, rowStride: ROW, colOffset: 0 };
        if (n < 2) {
          outs.push(attentionPrefill(rec, q, { tensor: cache.k }, { tensor: cache.v }, {
            numHeads: HQ, numKvHeads: HKV, headDim: D, mask: { kind: "causal", past },
          }));
        } else {
          outs.push(attentionDecode(rec, q, cache, past + rows, { numHeads: HQ }));
        }
        past += rows;
      }
      rec.submit();
      const results: string[] = [];
      past = 0;
      for (const [n, c] of chunks.entries()) {
        const rows = c.t.shape[0];
        const seen = chunks.slice(0, n + 1).map((x) => x.host);
        const kh: HostView = { data: gather(seen, QW), stride: KW, off: 0 };
        const vh: HostView = { data: gather(seen, QW + KW), stride: KW, off: 0 };
        const qh: HostView = { data: c.host, stride: ROW, off: 0 };
        const p = past;
        const ref = attentionReference(qh, kh, vh, rows, p + rows, HQ, HKV, D, D ** -0.5, (i, j) => j <= p + i);
        const got = await readF32(gpu, outs[n]);
        results.push(expectClose(`chunk ${n}`, got, ref, TOL).toExponential(2));
        past += rows;
      }
      for (const t of [...chunks.map((c) => c.t), ...outs]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return `nmse prefill17=${results[0]} prefill5=${results[1]} decode=${results[2]}`;
    },
  },
  {
    name: "over-length append throws context_length_exceeded; gaps and long decode are refused",
    async run(gpu) {
      const cache = createKvCache(gpu, { maxSeq: 24, numKvHeads: HKV, headDim: D });
      const a = fusedRows(gpu, 20, 6);
      const b = fusedRows(gpu, 5, 7);
      const rec = new Recorder(gpu);
      append(rec, cache, a.t, 0);
      await expectCode("append 20 + 5 > 24", "context_length_exceeded", () => append(rec, cache, b.t, 20));
      if (cache.length !== 20) throw new Error(`cache.length ${cache.length} changed by a refused append`);
      await expectCode("append with a gap", "bad_request", () => append(rec, cache, b.t, 26));
      await expectCode("decode past maxSeq", "context_length_exceeded", () =>
        attentionDecode(rec, { tensor: b.t, rowStride: ROW }, cache, 25, { numHeads: HQ }),
      );
      append(rec, cache, b.t, 19); // rewrite from 19: 19 + 5 = 24 fits exactly
      rec.submit();
      const k = await readF32(gpu, cache.k);
      expectEqual("rows 19..23", k.subarray(19 * KW, 24 * KW), gather([b.host], QW));
      for (const t of [a.t, b.t]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return "errors ok, rewrite exact";
    },
  },
];
