import { attentionDecode, attentionPrefill } from "../../src/ops/attention.ts";
import { appendKv, createKvCache, releaseKvCache, type KvCache, type KvDtype } from "../../src/ops/kv_cache.ts";
import { LayerCaches } from "../../src/models/common/step.ts";
import { f16BitsToF32, f32ToF16Bits } from "../../src/quant/f16.ts";
import { isWebvlmError } from "../../src/api/errors.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readBytes, readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, expectEqual, randomArray } from "../util/compare.ts";
import { attentionReference, type HostView } from "./attention.cases.ts";
import { roundF16 } from "./attention_harness.ts";

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

/** The raw f16 bits of a cache tensor's first `rows` rows ([rows, rowStride] halves). */
async function readHalves(gpu: GpuContext, t: Tensor, rows: number, rowStride: number): Promise<Uint16Array> {
  const n = rows * rowStride;
  const bytes = await readBytes(gpu, t.buffer, t.offset, Math.ceil((2 * n) / 4) * 4);
  return new Uint16Array(bytes, 0, n);
}

/** Host rows [rows, width] -> [rows, stride] (zero padding), for comparing with a padded cache. */
function padRows(data: Float32Array, width: number, stride: number): Float32Array {
  if (stride === width) return data;
  const rows = data.length / width;
  const out = new Float32Array(rows * stride);
  for (let r = 0; r < rows; r++) out.set(data.subarray(r * width, (r + 1) * width), r * stride);
  return out;
}

/** What kv_append stores for x in an f16 cache: clamp to +-65504, round to nearest even. */
function f16Store(x: number): number {
  return f32ToF16Bits(Math.min(65504, Math.max(-65504, x)));
}

/** Values whose f16 rounding is decided by ties, subnormals, the clamp and signed zero. */
function awkwardValues(): Float32Array {
  const v: number[] = [
    1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), 2048 + 1, 2048 + 3, // exact ties: to even
    1 + 2 ** -11 + 2 ** -20, 1 + 2 ** -11 - 2 ** -20, // just above / below a tie
    2 ** -24, 2 ** -25, 2 ** -25 + 2 ** -35, 3 * 2 ** -25, 2 ** -14 - 2 ** -25, 2 ** -26, // subnormals, ties among them
    65504, 65519, 65520, 70000, -1e9, 1e30, // top of the range and beyond (clamped)
    -0, 0, 0.1, -0.3333333, Math.PI, 6.1e-5,
  ];
  return Float32Array.from(v);
}

/** An f16 cache must hold exactly what f16Store gives (SwiftShader rounds to nearest even). */
async function expectF16Rows(label: string, got: Uint16Array, want: Float32Array): Promise<number> {
  let bad = 0;
  let first = "";
  for (let i = 0; i < want.length; i++) {
    const w = f16Store(want[i]);
    if (got[i] !== w) {
      if (!first) first = `[${i}] ${want[i]}: got 0x${got[i].toString(16)} (${f16BitsToF32(got[i])}), want 0x${w.toString(16)} (${f16BitsToF32(w)})`;
      bad++;
    }
  }
  if (bad) throw new Error(`${label}: ${bad} of ${want.length} halves differ from round-to-nearest-even; first ${first}`);
  return want.length;
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
  {
    name: "f16 cache: append 17 + 1 fused rows and awkward values: bits equal clamp + round-to-nearest-even",
    async run(gpu) {
      const cache = createKvCache(gpu, { maxSeq: 40, numKvHeads: HKV, headDim: D, dtype: "f16" });
      const a = fusedRows(gpu, 17, 1);
      // One row whose k and v columns hold the awkward values (repeated), scaled copies in v.
      const odd = awkwardValues();
      const host = new Float32Array(ROW);
      for (let c = 0; c < KW; c++) {
        host[QW + c] = odd[c % odd.length];
        host[QW + KW + c] = -odd[(c + 3) % odd.length];
      }
      const b = { host, t: uploadTensor(gpu, host, [1, ROW], "f32") };
      const rec = new Recorder(gpu);
      append(rec, cache, a.t, 0);
      append(rec, cache, b.t, 17);
      rec.submit();
      const k = await readHalves(gpu, cache.k, 18, cache.rowStride);
      const v = await readHalves(gpu, cache.v, 18, cache.rowStride);
      const n = (await expectF16Rows("cache.k", k, gather([a.host, b.host], QW))) +
        (await expectF16Rows("cache.v", v, gather([a.host, b.host], QW + KW)));
      for (const t of [a.t, b.t]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return `${n} halves exact (pack2x16float on this adapter = clamp + round to nearest even)`;
    },
  },
  {
    name: "f16 cache, odd row width (1 kv head x 3): rows padded to 4 halves, appends of 1, 2, 3 rows",
    async run(gpu) {
      const width = 3;
      const cache = createKvCache(gpu, { maxSeq: 9, numKvHeads: 1, headDim: width, dtype: "f16" });
      if (cache.rowStride !== 4) throw new Error(`rowStride ${cache.rowStride}, want 4`);
      const srcs = [1, 2, 3].map((rows, i) => ({ rows, host: randomArray(rows * 2 * width, 40 + i, -3, 3) }));
      const rec = new Recorder(gpu);
      let pos = 0;
      const ts: Tensor[] = [];
      for (const s of srcs) {
        const t = uploadTensor(gpu, s.host, [s.rows, 2 * width], "f32");
        ts.push(t);
        appendKv(rec, cache, { tensor: t }, { tensor: t, colOffset: width }, pos);
        pos += s.rows;
      }
      rec.submit();
      const k = await readHalves(gpu, cache.k, pos, 4);
      const v = await readHalves(gpu, cache.v, pos, 4);
      const want = (off: number): Float32Array => {
        const out = new Float32Array(pos * 4);
        let r = 0;
        for (const s of srcs) for (let i = 0; i < s.rows; i++, r++) for (let c = 0; c < width; c++) out[r * 4 + c] = s.host[i * 2 * width + off + c];
        return out;
      };
      await expectF16Rows("k", k, want(0));
      await expectF16Rows("v", v, want(width));
      for (const t of ts) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return `${pos} rows exact, padding halves 0`;
    },
  },
  {
    name: "f16 cache: prefill 17, prefill 5 (past 17), decode 1 vs reference on the f16-rounded K/V (GQA 6, D=128)",
    async run(gpu) {
      const cache = createKvCache(gpu, { maxSeq: 48, numKvHeads: HKV, headDim: D, dtype: "f16" });
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
      let nmseF32 = 0;
      past = 0;
      for (const [n, c] of chunks.entries()) {
        const rows = c.t.shape[0];
        const seen = chunks.slice(0, n + 1).map((x) => x.host);
        const kh: HostView = { data: roundF16(gather(seen, QW)), stride: KW, off: 0 };
        const vh: HostView = { data: roundF16(gather(seen, QW + KW)), stride: KW, off: 0 };
        const qh: HostView = { data: c.host, stride: ROW, off: 0 };
        const p = past;
        const ref = attentionReference(qh, kh, vh, rows, p + rows, HQ, HKV, D, D ** -0.5, (i, j) => j <= p + i);
        const got = await readF32(gpu, outs[n]);
        results.push(expectClose(`chunk ${n}`, got, ref, TOL).toExponential(2));
        // For scale: the same output against the exact (f32 K/V) reference.
        const exact = attentionReference(qh, { data: gather(seen, QW), stride: KW, off: 0 }, { data: gather(seen, QW + KW), stride: KW, off: 0 },
          rows, p + rows, HQ, HKV, D, D ** -0.5, (i, j) => j <= p + i);
        nmseF32 = Math.max(nmseF32, expectClose(`chunk ${n} vs f32 K/V`, got, exact, 1e-4));
        past += rows;
      }
      for (const t of [...chunks.map((c) => c.t), ...outs]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return `nmse vs f16-rounded ref: prefill17=${results[0]} prefill5=${results[1]} decode=${results[2]}; vs f32 K/V <= ${nmseF32.toExponential(2)}`;
    },
  },
  ...(["f32", "f16"] as KvDtype[]).map((dtype): KernelCase => ({
    name: `${dtype} cache grows 4 -> 8 -> 16 -> 32 rows over appends of 3, 2, 6, 1, 9: contents equal, decode exact`,
    async run(gpu) {
      const cache = createKvCache(gpu, { maxSeq: 40, numKvHeads: HKV, headDim: D, dtype, initialRows: 4 });
      const sizes = [3, 2, 6, 1, 9];
      const chunks = sizes.map((n, i) => fusedRows(gpu, n, 60 + i));
      const rec = new Recorder(gpu);
      const capacities: number[] = [cache.capacity];
      let past = 0;
      for (const c of chunks) {
        append(rec, cache, c.t, past);
        past += c.t.shape[0];
        capacities.push(cache.capacity);
      }
      const q = { tensor: chunks[4].t, rowStride: ROW, colOffset: 0 };
      const out = attentionDecode(rec, q, cache, past, { numHeads: HQ });
      rec.submit();
      if (capacities.join(",") !== "4,4,8,16,16,32") throw new Error(`capacities ${capacities}, want 4,4,8,16,16,32`);
      const hosts = chunks.map((c) => c.host);
      const round = (a: Float32Array): Float32Array => (dtype === "f16" ? roundF16(a) : a);
      const wantK = round(gather(hosts, QW));
      const wantV = round(gather(hosts, QW + KW));
      const gotK = (await readF32(gpu, cache.k)).subarray(0, past * KW);
      const gotV = (await readF32(gpu, cache.v)).subarray(0, past * KW);
      expectEqual("cache.k", gotK, padRows(wantK, KW, cache.rowStride));
      expectEqual("cache.v", gotV, padRows(wantV, KW, cache.rowStride));
      const kh: HostView = { data: wantK, stride: KW, off: 0 };
      const vh: HostView = { data: wantV, stride: KW, off: 0 };
      const qh: HostView = { data: chunks[4].host, stride: ROW, off: 0 };
      const ref = attentionReference(qh, kh, vh, 1, past, HQ, HKV, D, D ** -0.5, () => true);
      const nm = expectClose("decode after growth", await readF32(gpu, out), ref, TOL);
      // LayerCaches.ensure grows in its own submit and keeps the rows; past maxSeq it is context_length_exceeded.
      const layers = new LayerCaches(gpu, [cache], 40);
      layers.ensure(40);
      if (cache.capacity !== 40) throw new Error(`ensure(40): capacity ${cache.capacity}`);
      expectEqual("cache.k after ensure", (await readF32(gpu, cache.k)).subarray(0, past * KW), padRows(wantK, KW, cache.rowStride));
      await expectCode("ensure(41)", "context_length_exceeded", () => layers.ensure(41));
      for (const t of [...chunks.map((c) => c.t), out]) gpu.pool.release(t.buffer);
      releaseKvCache(gpu, cache);
      return `capacities ${capacities.join(" -> ")} -> 40; contents exact; decode nmse=${nm.toExponential(2)}`;
    },
  })),
  {
    name: "a cache larger than maxStorageBufferBindingSize is context_length_exceeded naming the tokens that fit",
    async run(gpu) {
      const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize ?? Infinity);
      const rowBytes = KW * 2;
      const fit = Math.floor(limit / rowBytes);
      let msg = "";
      try {
        createKvCache(gpu, { maxSeq: fit + 1, numKvHeads: HKV, headDim: D, dtype: "f16" });
      } catch (e) {
        if (!isWebvlmError(e) || e.code !== "context_length_exceeded") throw e;
        msg = e.message;
      }
      if (!msg.includes(String(fit))) throw new Error(`expected context_length_exceeded naming ${fit}, got "${msg}"`);
      const c = createKvCache(gpu, { maxSeq: fit, numKvHeads: HKV, headDim: D, dtype: "f16" });
      if (c.capacity !== 1024) throw new Error(`initial capacity ${c.capacity}, want 1024`);
      releaseKvCache(gpu, c);
      return msg;
    },
  },
];
