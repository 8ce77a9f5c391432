// Shared by the attention case files: the f64 reference and generic prefill / decode cases that
// build inputs, run the kernel (optionally under a smaller workgroup-storage limit) and compare.
import {
  attentionDecodeViews, attentionPrefill, decodeHeadsPerWorkgroup, prefillTiles,
  type AttentionMask, type EmptyRows, type PrefillTiles,
} from "../../src/ops/attention.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";
import { fromF16Bits, toF16Bits } from "../../src/quant/f16.ts";

/** Values rounded to f16 (round to nearest even) and back: what an f16 tensor of them holds. */
export function roundF16(data: Float32Array): Float32Array {
  return fromF16Bits(toF16Bits(data));
}

// Tolerance: f32 kernels vs an f64 reference; measured NMSE is ~1e-14, 1e-10 catches any real
// defect (a wrong mask entry or a mis-scaled chunk moves NMSE far above 1e-6).
export const TOL = 1e-10;

/** Strided row-major host view: element (row, c) at row * stride + off + c. */
export interface HostView {
  data: Float32Array;
  stride: number;
  off: number;
}

/**
 * Plain attention in f64: for each query i and head h (kv head h / group):
 * softmax_j(q_i . k_j * scale, only j with visible(i, j)) . v, written as [Sq, Hq * D];
 * a row with no visible key is zero.
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

/** The same context with a smaller maxComputeWorkgroupStorageSize (16 KiB is WebGPU's minimum). */
function withStorageLimit(gpu: GpuContext, limit: number | undefined): GpuContext {
  if (limit === undefined) return gpu;
  return { ...gpu, limits: { ...gpu.limits, maxComputeWorkgroupStorageSize: limit } };
}

/** Rows whose reference is all zeros (no visible key) must be exactly zero, not merely close. */
function expectZeroRows(label: string, got: Float32Array, rowsWithNoKeys: number[], width: number): void {
  for (const i of rowsWithNoKeys) {
    for (let c = 0; c < width; c++) {
      if (got[i * width + c] !== 0) throw new Error(`${label}: row ${i} sees no key but out[${c}] = ${got[i * width + c]}`);
    }
  }
}

/** Host-side mask kinds; the case builds the tensors. */
export type HostMask =
  | { kind: "causal"; past: number }
  | { kind: "segments"; cu: number[] }
  | { kind: "full" }
  | { kind: "ranges"; ranges: [number, number][] };

export interface PrefillSpec {
  name: string;
  D: number;
  hq: number;
  hkv: number;
  sq: number;
  /** Key rows; causal: past + sq, segments: sq. */
  skv: number;
  mask: HostMask;
  /** Per-key 0/1 mask (length skv) and whom it applies to. */
  keep?: number[];
  keepRows?: "all" | "maskedRows";
  emptyRows?: EmptyRows;
  /** q, k, v as column ranges of one fused row [S, (hq + 2 hkv) D] (needs sq == skv), else separate tensors. */
  fused: boolean;
  amp: number;
  /** Run under this maxComputeWorkgroupStorageSize, and check the tile it leads to. */
  limit?: number;
  tiles?: PrefillTiles;
  /**
   * K and V in f16 tensors (packed pairs, as an f16 KV cache holds them); the reference sees the
   * same f16-rounded values, so the result stays exact to f32 rounding. Fused: q from an f32
   * copy of the rows, k/v column ranges of an f16 copy (odd element offsets included).
   */
  kvF16?: boolean;
}

export function prefillCase(c: PrefillSpec): KernelCase {
  return {
    name: c.name,
    async run(gpu0) {
      const gpu = withStorageLimit(gpu0, c.limit);
      const { D, hq, hkv, sq, skv } = c;
      if (c.tiles) {
        const got = prefillTiles(D, gpu.limits.maxComputeWorkgroupStorageSize);
        if (JSON.stringify(got) !== JSON.stringify(c.tiles)) throw new Error(`tiles ${JSON.stringify(got)}, want ${JSON.stringify(c.tiles)}`);
      }
      const qw = hq * D;
      const kw = hkv * D;
      const seed = sq * 131 + skv * 7 + D + hq;
      const uploads: Tensor[] = [];
      const up = (data: Float32Array | Uint32Array, shape: number[], dtype: "f32" | "u32"): Tensor => {
        const t = uploadTensor(gpu, data, shape, dtype);
        uploads.push(t);
        return t;
      };
      let qh: HostView, kh: HostView, vh: HostView;
      let tq: Tensor, tk: Tensor, tv: Tensor;
      if (c.fused) {
        if (sq !== skv) throw new Error("fused layout needs sq == skv");
        const stride = qw + 2 * kw;
        const data = randomArray(sq * stride, seed, -c.amp, c.amp);
        qh = { data, stride, off: 0 };
        kh = { data, stride, off: qw };
        vh = { data, stride, off: qw + kw };
        tq = tk = tv = up(data, [sq, stride], "f32");
        if (c.kvF16) {
          const half = uploadTensor(gpu, data, [sq, stride], "f16");
          uploads.push(half);
          tk = tv = half;
          const rounded = roundF16(data);
          kh = { data: rounded, stride, off: qw };
          vh = { data: rounded, stride, off: qw + kw };
        }
      } else {
        // K/V in cache-like tensors with spare rows beyond skv (never read).
        const rows = skv + 5;
        qh = { data: randomArray(sq * qw, seed, -c.amp, c.amp), stride: qw, off: 0 };
        kh = { data: randomArray(rows * kw, seed + 1, -c.amp, c.amp), stride: kw, off: 0 };
        vh = { data: randomArray(rows * kw, seed + 2, -1, 1), stride: kw, off: 0 };
        tq = up(qh.data, [sq, qw], "f32");
        if (c.kvF16) {
          tk = uploadTensor(gpu, kh.data, [rows, kw], "f16");
          tv = uploadTensor(gpu, vh.data, [rows, kw], "f16");
          uploads.push(tk, tv);
          kh = { ...kh, data: roundF16(kh.data) };
          vh = { ...vh, data: roundF16(vh.data) };
        } else {
          tk = up(kh.data, [rows, kw], "f32");
          tv = up(vh.data, [rows, kw], "f32");
        }
      }

      // The visibility rule, written independently of the kernel's mode logic.
      let range: (i: number) => [number, number];
      let mask: AttentionMask;
      const m = c.mask;
      if (m.kind === "causal") {
        range = (i) => [0, Math.min(m.past + i + 1, skv)];
        mask = { kind: "causal", past: m.past };
      } else if (m.kind === "segments") {
        range = (i) => {
          for (let s = 0; s + 1 < m.cu.length; s++) if (m.cu[s] <= i && i < m.cu[s + 1]) return [m.cu[s], m.cu[s + 1]];
          return [0, 0];
        };
        mask = { kind: "segments", cuSeqlens: up(Uint32Array.from(m.cu), [m.cu.length], "u32") };
      } else if (m.kind === "full") {
        range = () => [0, skv];
        mask = { kind: "full", kvLength: skv };
      } else {
        range = (i) => [Math.min(m.ranges[i][0], skv), Math.min(m.ranges[i][1], skv)];
        mask = { kind: "ranges", ranges: up(Uint32Array.from(m.ranges.flat()), [sq, 2], "u32"), kvLength: skv };
      }
      const keep = c.keep;
      const visible = (i: number, j: number): boolean => {
        const [lo, hi] = range(i);
        if (lo >= hi) return c.emptyRows === "attendAll";
        const masked = keep !== undefined && (c.keepRows !== "maskedRows" || keep[i] === 0);
        return j >= lo && j < hi && (!masked || keep[j] !== 0);
      };

      const rec = new Recorder(gpu);
      const t0 = performance.now();
      const out = attentionPrefill(
        rec,
        { tensor: tq, rowStride: qh.stride, colOffset: qh.off },
        { tensor: tk, rowStride: kh.stride, colOffset: kh.off },
        { tensor: tv, rowStride: vh.stride, colOffset: vh.off },
        {
          numHeads: hq, numKvHeads: hkv, headDim: D, mask, emptyRows: c.emptyRows,
          keyMask: keep ? { keep: up(Uint32Array.from(keep), [keep.length], "u32"), rows: c.keepRows } : undefined,
        },
      );
      rec.submit();
      const got = await readF32(gpu, out);
      const ms = performance.now() - t0;
      for (const t of [...uploads, out]) gpu.pool.release(t.buffer);
      const ref = attentionReference(qh, kh, vh, sq, skv, hq, hkv, D, D ** -0.5, visible);
      const blind: number[] = [];
      for (let i = 0; i < sq; i++) {
        let any = false;
        for (let j = 0; j < skv && !any; j++) any = visible(i, j);
        if (!any) blind.push(i);
      }
      expectZeroRows(c.name, got, blind, qw);
      const nm = expectClose(c.name, got, ref, TOL);
      return `nmse=${nm.toExponential(2)} zero rows=${blind.length} gpu=${ms.toFixed(0)}ms`;
    },
  };
}

export interface DecodeSpec {
  name: string;
  D: number;
  hq: number;
  hkv: number;
  length: number;
  amp: number;
  keyRange?: [number, number];
  keep?: number[];
  emptyRows?: EmptyRows;
  /** Run under this maxComputeWorkgroupStorageSize, and check the heads per workgroup it leads to. */
  limit?: number;
  headsPerWorkgroup?: number;
  /** K/V as f16 tensors (an f16 KV cache); the reference sees the same f16-rounded values. */
  kvF16?: boolean;
}

export function decodeCase(c: DecodeSpec): KernelCase {
  return {
    name: c.name,
    async run(gpu0) {
      const gpu = withStorageLimit(gpu0, c.limit);
      const { D, hq, hkv, length } = c;
      if (c.headsPerWorkgroup !== undefined) {
        const g = decodeHeadsPerWorkgroup(D, hq / hkv, gpu.limits.maxComputeWorkgroupStorageSize);
        if (g !== c.headsPerWorkgroup) throw new Error(`heads per workgroup ${g}, want ${c.headsPerWorkgroup}`);
      }
      const kw = hkv * D;
      // q is a column range of a fused row [q | k | v]; k/v live in [maxSeq, kw] tensors with spare rows.
      const maxSeq = length + 7;
      const seed = length * 3 + D;
      const qrow = randomArray(hq * D + 2 * kw, seed + 11, -c.amp, c.amp);
      const qh: HostView = { data: qrow, stride: qrow.length, off: 0 };
      const kvDtype = c.kvF16 ? "f16" : "f32";
      const round = (a: Float32Array): Float32Array => (c.kvF16 ? roundF16(a) : a);
      const kraw = randomArray(maxSeq * kw, seed + 12, -c.amp, c.amp);
      const vraw = randomArray(maxSeq * kw, seed + 13, -1, 1);
      const kh: HostView = { data: round(kraw), stride: kw, off: 0 };
      const vh: HostView = { data: round(vraw), stride: kw, off: 0 };
      const tq = uploadTensor(gpu, qrow, [1, qrow.length], "f32");
      const tk = uploadTensor(gpu, kraw, [maxSeq, kw], kvDtype);
      const tv = uploadTensor(gpu, vraw, [maxSeq, kw], kvDtype);
      const tkeep = c.keep ? uploadTensor(gpu, Uint32Array.from(c.keep), [c.keep.length], "u32") : undefined;
      const rec = new Recorder(gpu);
      const t0 = performance.now();
      const out = attentionDecodeViews(rec, { tensor: tq, colOffset: 0 }, { tensor: tk }, { tensor: tv }, length, {
        numHeads: hq,
        numKvHeads: hkv,
        headDim: D,
        keyRange: c.keyRange,
        keyMask: tkeep,
        emptyRows: c.emptyRows,
      });
      rec.submit();
      const got = await readF32(gpu, out);
      const ms = performance.now() - t0;
      for (const t of [tq, tk, tv, out, ...(tkeep ? [tkeep] : [])]) gpu.pool.release(t.buffer);
      const [lo, hi] = c.keyRange ?? [0, length];
      const keep = c.keep;
      const visible = (_i: number, j: number): boolean =>
        lo >= hi ? c.emptyRows === "attendAll" : j >= lo && j < hi && (keep === undefined || keep[j] !== 0);
      const ref = attentionReference(qh, kh, vh, 1, length, hq, hkv, D, D ** -0.5, visible);
      let any = false;
      for (let j = 0; j < length && !any; j++) any = visible(0, j);
      if (!any) expectZeroRows(c.name, got, [0], hq * D);
      return `nmse=${expectClose(c.name, got, ref, TOL).toExponential(2)}${any ? "" : " (zero row)"} gpu=${ms.toFixed(0)}ms`;
    },
  };
}
