import { attentionDecodeViews, attentionPrefill, type AttentionMask } from "../../src/ops/attention.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";

// Tolerance: f32 kernels vs an f64 reference; measured NMSE is ~1e-14, 1e-10 catches any real
// defect (a wrong mask entry or a mis-scaled chunk moves NMSE far above 1e-6).
const TOL = 1e-10;

/** Strided row-major host view: element (row, c) at row * stride + off + c. */
export interface HostView {
  data: Float32Array;
  stride: number;
  off: number;
}

/**
 * Plain attention in f64: for each query i and head h (kv head h / group):
 * softmax_j(q_i . k_j * scale, only j with visible(i, j)) . v, written as [Sq, Hq * D].
 */
export function attentionReference(
  q: HostView, k: HostView, v: HostView,
  sq: number, skv: number, hq: number, hkv: number, D: number, scale: number,
  visible: (i: number, j: number) => boolean,
): Float64Array {
  const group = hq / hkv;
  const out = new Float64Array(sq * hq * D);
  const w = new Float64Array(skv);
  for (let i = 0; i < sq; i++) {
    for (let h = 0; h < hq; h++) {
      const kvh = Math.floor(h / group);
      const qb = i * q.stride + q.off + h * D;
      let mx = -Infinity;
      for (let j = 0; j < skv; j++) {
        if (!visible(i, j)) {
          w[j] = -Infinity;
          continue;
        }
        const kb = j * k.stride + k.off + kvh * D;
        let s = 0;
        for (let d = 0; d < D; d++) s += q.data[qb + d] * k.data[kb + d];
        w[j] = s * scale;
        mx = Math.max(mx, w[j]);
      }
      let sum = 0;
      for (let j = 0; j < skv; j++) {
        w[j] = w[j] === -Infinity ? 0 : Math.exp(w[j] - mx);
        sum += w[j];
      }
      const ob = i * hq * D + h * D;
      for (let j = 0; j < skv; j++) {
        if (w[j] === 0) continue;
        const p = w[j] / sum;
        const vb = j * v.stride + v.off + kvh * D;
        for (let d = 0; d < D; d++) out[ob + d] += p * v.data[vb + d];
      }
    }
  }
  return out;
}

interface PrefillCase {
  name: string;
  D: number;
  hq: number;
  hkv: number;
  sq: number;
  /** causal past length, or segment boundaries (cu_seqlens) */
  mask: { past: number } | { cu: number[] };
  /** q, k, v as column ranges of one fused row [S, (hq + 2 hkv) D] (else separate tensors) */
  fused: boolean;
  amp: number;
}

function prefillCase(c: PrefillCase): KernelCase {
  return {
    name: c.name,
    async run(gpu) {
      const { D, hq, hkv, sq } = c;
      const past = "past" in c.mask ? c.mask.past : 0;
      const skv = past + sq;
      const qw = hq * D;
      const kw = hkv * D;
      const seed = sq * 131 + D + hq;
      let qh: HostView, kh: HostView, vh: HostView;
      const uploads: Tensor[] = [];
      let tq: Tensor, tk: Tensor, tv: Tensor;
      if (c.fused) {
        // Vision layout: one row holds q | k | v; keys are the same rows as queries (past = 0).
        const stride = qw + 2 * kw;
        const data = randomArray(sq * stride, seed, -c.amp, c.amp);
        qh = { data, stride, off: 0 };
        kh = { data, stride, off: qw };
        vh = { data, stride, off: qw + kw };
        tq = tk = tv = uploadTensor(gpu, data, [sq, stride], "f32");
        uploads.push(tq);
      } else {
        // K/V in a cache-like tensor with spare rows beyond past + sq.
        const rows = skv + 5;
        qh = { data: randomArray(sq * qw, seed, -c.amp, c.amp), stride: qw, off: 0 };
        kh = { data: randomArray(rows * kw, seed + 1, -c.amp, c.amp), stride: kw, off: 0 };
        vh = { data: randomArray(rows * kw, seed + 2, -1, 1), stride: kw, off: 0 };
        tq = uploadTensor(gpu, qh.data, [sq, qw], "f32");
        tk = uploadTensor(gpu, kh.data, [rows, kw], "f32");
        tv = uploadTensor(gpu, vh.data, [rows, kw], "f32");
        uploads.push(tq, tk, tv);
      }
      let mask: AttentionMask;
      let visible: (i: number, j: number) => boolean;
      if ("cu" in c.mask) {
        const cu = c.mask.cu;
        const seg = (i: number) => cu.findIndex((_, s) => s + 1 < cu.length && cu[s] <= i && i < cu[s + 1]);
        visible = (i, j) => seg(i) === seg(j);
        const tcu = uploadTensor(gpu, Uint32Array.from(cu), [cu.length], "u32");
        uploads.push(tcu);
        mask = { kind: "segments", cuSeqlens: tcu };
      } else {
        visible = (i, j) => j <= past + i;
        mask = { kind: "causal", past };
      }

      const rec = new Recorder(gpu);
      const t0 = performance.now();
      const out = attentionPrefill(
        rec,
        { tensor: tq, rowStride: qh.stride, colOffset: qh.off },
        { tensor: tk, rowStride: kh.stride, colOffset: kh.off },
        { tensor: tv, rowStride: vh.stride, colOffset: vh.off },
        { numHeads: hq, numKvHeads: hkv, headDim: D, mask },
      );
      rec.submit();
      const got = await readF32(gpu, out);
      const ms = performance.now() - t0;
      for (const t of [...uploads, out]) gpu.pool.release(t.buffer);
      const ref = attentionReference(qh, kh, vh, sq, skv, hq, hkv, D, D ** -0.5, visible);
      return `nmse=${expectClose(c.name, got, ref, TOL).toExponential(2)} gpu=${ms.toFixed(0)}ms`;
    },
  };
}

interface DecodeCase {
  name: string;
  D: number;
  hq: number;
  hkv: number;
  length: number;
  amp: number;
}

function decodeCase(c: DecodeCase): KernelCase {
  return {
    name: c.name,
    async run(gpu) {
      const { D, hq, hkv, length } = c;
      const kw = hkv * D;
      // q is a column range of a fused row [q | k | v]; k/v live in [maxSeq, kw] tensors with spare rows.
      const maxSeq = length + 7;
      const qrow = randomArray(hq * D + 2 * kw, length + 11, -c.amp, c.amp);
      const qh: HostView = { data: qrow, stride: qrow.length, off: 0 };
      const kh: HostView = { data: randomArray(maxSeq * kw, length + 12, -c.amp, c.amp), stride: kw, off: 0 };
      const vh: HostView = { data: randomArray(maxSeq * kw, length + 13, -1, 1), stride: kw, off: 0 };
      const tq = uploadTensor(gpu, qrow, [1, qrow.length], "f32");
      const tk = uploadTensor(gpu, kh.data, [maxSeq, kw], "f32");
      const tv = uploadTensor(gpu, vh.data, [maxSeq, kw], "f32");
      const rec = new Recorder(gpu);
      const t0 = performance.now();
      const out = attentionDecodeViews(rec, { tensor: tq, colOffset: 0 }, { tensor: tk }, { tensor: tv }, length, {
        numHeads: hq,
        numKvHeads: hkv,
        headDim: D,
      });
      rec.submit();
      const got = await readF32(gpu, out);
      const ms = performance.now() - t0;
      for (const t of [tq, tk, tv, out]) gpu.pool.release(t.buffer);
      const ref = attentionReference(qh, kh, vh, 1, length, hq, hkv, D, D ** -0.5, () => true);
      return `nmse=${expectClose(c.name, got, ref, TOL).toExponential(2)} gpu=${ms.toFixed(0)}ms`;
    },
  };
}

export const cases: KernelCase[] = [
  prefillCase({ name: "prefill causal D=128 GQA 1 (2/2) Sq=17", D: 128, hq: 2, hkv: 2, sq: 17, mask: { past: 0 }, fused: false, amp: 1 }),
  prefillCase({ name: "prefill causal D=128 GQA 6 (12/2) Sq=17 past=23", D: 128, hq: 12, hkv: 2, sq: 17, mask: { past: 23 }, fused: false, amp: 2 }),
  prefillCase({ name: "prefill causal D=80 GQA 2 (4/2) Sq=1 past=40", D: 80, hq: 4, hkv: 2, sq: 1, mask: { past: 40 }, fused: false, amp: 2 }),
  prefillCase({ name: "prefill causal D=128 GQA 2 (2/1) Sq=300 past=9", D: 128, hq: 2, hkv: 1, sq: 300, mask: { past: 9 }, fused: false, amp: 3 }),
  prefillCase({ name: "prefill causal D=80 GQA 1 (2/2) Sq=300 fused qkv", D: 80, hq: 2, hkv: 2, sq: 300, mask: { past: 0 }, fused: true, amp: 2 }),
  prefillCase({ name: "segments [0,37,201,300] D=80 2 heads fused qkv (vision)", D: 80, hq: 2, hkv: 2, sq: 300, mask: { cu: [0, 37, 201, 300] }, fused: true, amp: 3 }),
  prefillCase({ name: "segments [0,5,6,17] D=128 3 heads fused qkv", D: 128, hq: 3, hkv: 3, sq: 17, mask: { cu: [0, 5, 6, 17] }, fused: true, amp: 2 }),
  decodeCase({ name: "decode L=1 D=128 GQA 6 (12/2)", D: 128, hq: 12, hkv: 2, length: 1, amp: 2 }),
  decodeCase({ name: "decode L=17 D=80 GQA 2 (4/2)", D: 80, hq: 4, hkv: 2, length: 17, amp: 2 }),
  decodeCase({ name: "decode L=300 D=128 GQA 6 (12/2)", D: 128, hq: 12, hkv: 2, length: 300, amp: 3 }),
  decodeCase({ name: "decode L=2000 D=128 GQA 2 (4/2), 32 chunks", D: 128, hq: 4, hkv: 2, length: 2000, amp: 3 }),
  decodeCase({ name: "decode L=17000 D=80 GQA 1 (1/1), 133 chunks of 128", D: 80, hq: 1, hkv: 1, length: 17000, amp: 3 }),
];
