// The gated cross-attention layer (src/models/decoder/cross_attention.ts) against an f64 reference
// written here from transformers' MllamaCrossAttentionDecoderLayer / MllamaTextCrossAttention /
// _prepare_cross_attention_mask: q/k RMSNorm per head, GQA, rows with no visible image attending to
// every vision key (their additive mask is multiplied by 0) and their MLP branch zeroed, tanh gates.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { crossAttentionKv, crossAttentionLayer } from "../../src/models/decoder/cross_attention.ts";
import { uploadWeight } from "../../src/quant/pack.ts";
import { expectClose, randomArray } from "../util/compare.ts";

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => {
  assert.deepEqual(gpu.uncapturedErrors, []);
  gpu.destroy();
});

const rms = (x: Float64Array, rows: number, d: number, w: Float32Array, eps: number): Float64Array => {
  const y = new Float64Array(rows * d);
  for (let i = 0; i < rows; i++) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x[i * d + j] ** 2;
    const inv = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) y[i * d + j] = x[i * d + j] * inv * w[j];
  }
  return y;
};

const mm = (x: Float64Array, n: number, k: number, w: Float32Array, out: number): Float64Array => {
  const y = new Float64Array(n * out);
  for (let i = 0; i < n; i++) for (let o = 0; o < out; o++) {
    let s = 0;
    for (let j = 0; j < k; j++) s += x[i * k + j] * w[o * k + j];
    y[i * out + o] = s;
  }
  return y;
};

test("gated cross-attention layer matches the reference (GQA, head dim 6, empty rows attend to all keys, MLP zeroed on full text rows)", async () => {
  const d = 16, H = 4, Hkv = 2, D = 6, I = 20, L = 5, n = 7, eps = 1e-5;
  let seed = 40;
  const rnd = (len: number, lo = -0.4, hi = 0.4): Float32Array => randomArray(len, seed++, lo, hi);
  const W = {
    inputNorm: rnd(d, 0.8, 1.2), q: rnd(H * D * d), k: rnd(Hkv * D * d), v: rnd(Hkv * D * d), o: rnd(d * H * D),
    qNorm: rnd(D, 0.8, 1.2), kNorm: rnd(D, 0.8, 1.2), postNorm: rnd(d, 0.8, 1.2), gateUp: rnd(2 * I * d), down: rnd(d * I),
    attnGate: 0.6, mlpGate: -0.9,
  };
  const x0 = rnd(L * d, -1, 1);
  const states = rnd(n * d, -1, 1);
  // Row 0 sees no image (a full text row); rows 1-2 see the first 4 vision tokens; rows 3-4 all 7.
  const ranges = [0, 0, 0, 4, 0, 4, 0, 7, 0, 7];
  const rowMask = [0, 1, 1, 1, 1];

  // Reference.
  const x = Float64Array.from(x0);
  const h = rms(x, L, d, W.inputNorm, eps);
  const q = rms(mm(h, L, d, W.q, H * D), L * H, D, W.qNorm, eps);
  const sd = Float64Array.from(states);
  const k = rms(mm(sd, n, d, W.k, Hkv * D), n * Hkv, D, W.kNorm, eps);
  const v = mm(sd, n, d, W.v, Hkv * D);
  const attn = new Float64Array(L * H * D);
  for (let i = 0; i < L; i++) for (let hh = 0; hh < H; hh++) {
    const kvh = Math.floor(hh / (H / Hkv));
    let lo = ranges[2 * i], hi = ranges[2 * i + 1];
    if (hi <= lo) { lo = 0; hi = n; } // the fully masked row's mask becomes 0: every key
    const s: number[] = [];
    for (let j = lo; j < hi; j++) {
      let dot = 0;
      for (let c = 0; c < D; c++) dot += q[(i * H + hh) * D + c] * k[(j * Hkv + kvh) * D + c];
      s.push(dot / Math.sqrt(D));
    }
    const m = Math.max(...s);
    const p = s.map((z) => Math.exp(z - m));
    const z = p.reduce((a, b) => a + b, 0);
    for (let c = 0; c < D; c++) {
      let o = 0;
      for (let j = lo; j < hi; j++) o += (p[j - lo] / z) * v[(j * Hkv + kvh) * D + c];
      attn[(i * H + hh) * D + c] = o;
    }
  }
  const o = mm(attn, L, H * D, W.o, d);
  for (let i = 0; i < L * d; i++) x[i] += Math.tanh(W.attnGate) * o[i];
  const h2 = rms(x, L, d, W.postNorm, eps);
  const gu = mm(h2, L, d, W.gateUp, 2 * I);
  const act = new Float64Array(L * I);
  for (let i = 0; i < L; i++) for (let c = 0; c < I; c++) {
    const g = gu[i * 2 * I + c];
    act[i * I + c] = (g / (1 + Math.exp(-g))) * gu[i * 2 * I + I + c];
  }
  const mlp = mm(act, L, I, W.down, d);
  for (let i = 0; i < L; i++) for (let c = 0; c < d; c++) x[i * d + c] += Math.tanh(W.mlpGate) * rowMask[i] * mlp[i * d + c];

  // GPU.
  const held: Tensor[] = [];
  const vec = (a: Float32Array | Uint32Array, shape: number[], dtype: "f32" | "u32" = "f32"): Tensor => {
    const t = uploadTensor(gpu, a, shape, dtype);
    held.push(t);
    return t;
  };
  const w = {
    inputNorm: vec(W.inputNorm, [d]), q: uploadWeight(gpu, W.q, H * D, d, "f32"), k: uploadWeight(gpu, W.k, Hkv * D, d, "f32"),
    v: uploadWeight(gpu, W.v, Hkv * D, d, "f32"), o: uploadWeight(gpu, W.o, d, H * D, "f32"), qNorm: vec(W.qNorm, [D]), kNorm: vec(W.kNorm, [D]),
    attnGate: vec(Float32Array.of(W.attnGate), [1]), mlpGate: vec(Float32Array.of(W.mlpGate), [1]), postNorm: vec(W.postNorm, [d]),
    gateUp: uploadWeight(gpu, W.gateUp, 2 * I, d, "f32"), down: uploadWeight(gpu, W.down, d, I, "f32"),
  };
  const cfg = { hiddenSize: d, numHeads: H, numKvHeads: Hkv, headDim: D, rmsNormEps: eps };
  const xT = vec(x0, [L, d]);
  const rec = new Recorder(gpu);
  const kv = crossAttentionKv(rec, cfg, w, vec(states, [n, d]));
  crossAttentionLayer(rec, cfg, w, xT, kv, { ranges: vec(Uint32Array.from(ranges), [L, 2], "u32"), rowMask: vec(Uint32Array.from(rowMask), [L], "u32") });
  rec.submit();
  expectClose("cross-attention layer", await readF32(gpu, xT), x, 1e-9);
  // The cached K/V serve a later step unchanged: one more row (a decode step) against the same kv.
  const rec2 = new Recorder(gpu);
  const x1 = vec(x0.slice(3 * d, 4 * d), [1, d]);
  crossAttentionLayer(rec2, cfg, w, x1, kv, { ranges: vec(Uint32Array.of(0, 7), [1, 2], "u32"), rowMask: vec(Uint32Array.of(1), [1], "u32") });
  rec2.submit();
  expectClose("decode row with cached K/V", await readF32(gpu, x1), x.slice(3 * d, 4 * d), 1e-9);
  for (const t of [...held, kv.k, kv.v]) gpu.pool.release(t.buffer);
});
