// The shared ViT block stack (src/models/vit/encoder.ts) against a plain f64 reference written
// here from the transformers encoder layers (CLIPEncoderLayer / SiglipEncoderLayer /
// MllamaVisionEncoderLayer with gates): LayerNorm or RMSNorm, quick_gelu or gelu_tanh, tanh gates,
// bidirectional attention with a key-padding mask, hidden-state taps, head dims that are not
// multiples of 4. Shares no code with src/ beyond uploading the tensors.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { vitEmbed } from "../../src/models/vit/embeddings.ts";
import { runVitBlocks, type VitActivation, type VitBlockWeights, type VitConfig, type VitNorm } from "../../src/models/vit/encoder.ts";
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

interface RefBlock {
  n1w: Float32Array; n1b: Float32Array; n2w: Float32Array; n2b: Float32Array;
  qkv: Float32Array; qkvB: Float32Array; proj: Float32Array; projB: Float32Array;
  fc1: Float32Array; fc1B: Float32Array; fc2: Float32Array; fc2B: Float32Array;
  gA: number | null; gM: number | null;
}

function refNorm(kind: VitNorm, x: Float64Array, n: number, d: number, w: Float32Array, b: Float32Array, eps: number): Float64Array {
  const y = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    const row = x.subarray(i * d, (i + 1) * d);
    if (kind === "layer_norm") {
      const mean = row.reduce((a, v) => a + v, 0) / d;
      const v = row.reduce((a, u) => a + (u - mean) ** 2, 0) / d;
      for (let j = 0; j < d; j++) y[i * d + j] = ((row[j] - mean) / Math.sqrt(v + eps)) * w[j] + b[j];
    } else {
      const ms = row.reduce((a, u) => a + u * u, 0) / d;
      for (let j = 0; j < d; j++) y[i * d + j] = (row[j] / Math.sqrt(ms + eps)) * w[j];
    }
  }
  return y;
}

function refLinear(x: Float64Array, n: number, k: number, w: Float32Array, b: Float32Array, out: number): Float64Array {
  const y = new Float64Array(n * out);
  for (let i = 0; i < n; i++) for (let o = 0; o < out; o++) {
    let s = b[o];
    for (let j = 0; j < k; j++) s += x[i * k + j] * w[o * k + j];
    y[i * out + o] = s;
  }
  return y;
}

function refAct(act: VitActivation, v: number): number {
  if (act === "quick_gelu") return v / (1 + Math.exp(-1.702 * v));
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
}

function refBlocks(cfg: VitConfig, blocks: RefBlock[], x0: Float32Array, n: number, keep: number[], taps: number[], inter: number): { out: Float64Array; taps: Float64Array[] } {
  const d = cfg.hiddenSize;
  const H = cfg.numHeads;
  const hd = cfg.headDim;
  const e = H * hd;
  const x = Float64Array.from(x0);
  const tapped: Float64Array[] = [];
  blocks.forEach((b, bi) => {
    const h = refNorm(cfg.norm, x, n, d, b.n1w, b.n1b, cfg.normEps);
    const qkv = refLinear(h, n, d, b.qkv, b.qkvB, 3 * e);
    const attn = new Float64Array(n * e);
    for (let hh = 0; hh < H; hh++) for (let i = 0; i < n; i++) {
      const s: number[] = [];
      for (let j = 0; j < n; j++) {
        if (!keep[j]) { s.push(-Infinity); continue; }
        let dot = 0;
        for (let c = 0; c < hd; c++) dot += qkv[i * 3 * e + hh * hd + c] * qkv[j * 3 * e + e + hh * hd + c];
        s.push(dot / Math.sqrt(hd));
      }
      const m = Math.max(...s);
      const p = s.map((v) => Math.exp(v - m));
      const z = p.reduce((a, v) => a + v, 0);
      for (let c = 0; c < hd; c++) {
        let o = 0;
        for (let j = 0; j < n; j++) o += (p[j] / z) * qkv[j * 3 * e + 2 * e + hh * hd + c];
        attn[i * e + hh * hd + c] = o;
      }
    }
    const pr = refLinear(attn, n, e, b.proj, b.projB, d);
    const ga = b.gA === null ? 1 : Math.tanh(b.gA);
    for (let i = 0; i < n * d; i++) x[i] += ga * pr[i];
    const h2 = refNorm(cfg.norm, x, n, d, b.n2w, b.n2b, cfg.normEps);
    const f1 = refLinear(h2, n, d, b.fc1, b.fc1B, inter).map((v) => refAct(cfg.act, v));
    const f2 = refLinear(f1, n, inter, b.fc2, b.fc2B, d);
    const gm = b.gM === null ? 1 : Math.tanh(b.gM);
    for (let i = 0; i < n * d; i++) x[i] += gm * f2[i];
    if (taps.includes(bi)) tapped.push(Float64Array.from(x));
  });
  return { out: x, taps: tapped };
}

interface Variant { name: string; norm: VitNorm; act: VitActivation; gated: boolean; headDim: number; heads: number; padded: number }

const VARIANTS: Variant[] = [
  { name: "CLIP-like: LayerNorm, quick_gelu, head dim 12", norm: "layer_norm", act: "quick_gelu", gated: false, headDim: 12, heads: 2, padded: 0 },
  { name: "SigLIP-like: LayerNorm, gelu_tanh, head dim 18, 3 padded keys", norm: "layer_norm", act: "gelu_tanh", gated: false, headDim: 18, heads: 2, padded: 3 },
  { name: "gated (mllama global): RMSNorm, gelu_tanh, tanh gates, head dim 7", norm: "rms_norm", act: "gelu_tanh", gated: true, headDim: 7, heads: 3, padded: 2 },
];

for (const v of VARIANTS) {
  test(`ViT blocks match the reference: ${v.name}, taps 0 and -1`, async () => {
    const d = 24;
    const inter = 40;
    const n = 11;
    const layers = 2;
    const e = v.heads * v.headDim;
    const cfg: VitConfig = { hiddenSize: d, numHeads: v.heads, headDim: v.headDim, norm: v.norm, normEps: 1e-6, act: v.act };
    let seed = 100;
    const rnd = (len: number, lo = -0.3, hi = 0.3): Float32Array => randomArray(len, seed++, lo, hi);
    const ref: RefBlock[] = [];
    const gpuBlocks: VitBlockWeights[] = [];
    const held: Tensor[] = [];
    const vec = (a: Float32Array): Tensor => {
      const t = uploadTensor(gpu, a, [a.length], "f32");
      held.push(t);
      return t;
    };
    for (let l = 0; l < layers; l++) {
      const b: RefBlock = {
        n1w: rnd(d, 0.8, 1.2), n1b: rnd(d, -0.1, 0.1), n2w: rnd(d, 0.8, 1.2), n2b: rnd(d, -0.1, 0.1),
        qkv: rnd(3 * e * d), qkvB: rnd(3 * e, -0.1, 0.1), proj: rnd(d * e), projB: rnd(d, -0.1, 0.1),
        fc1: rnd(inter * d), fc1B: rnd(inter, -0.1, 0.1), fc2: rnd(d * inter), fc2B: rnd(d, -0.1, 0.1),
        gA: v.gated ? 0.7 - l : null, gM: v.gated ? -0.4 + l : null,
      };
      ref.push(b);
      gpuBlocks.push({
        norm1: { weight: vec(b.n1w), bias: v.norm === "layer_norm" ? vec(b.n1b) : undefined },
        norm2: { weight: vec(b.n2w), bias: v.norm === "layer_norm" ? vec(b.n2b) : undefined },
        qkv: uploadWeight(gpu, b.qkv, 3 * e, d, "f32"), qkvBias: vec(b.qkvB),
        proj: uploadWeight(gpu, b.proj, d, e, "f32"), projBias: vec(b.projB),
        fc1: uploadWeight(gpu, b.fc1, inter, d, "f32"), fc1Bias: vec(b.fc1B),
        fc2: uploadWeight(gpu, b.fc2, d, inter, "f32"), fc2Bias: vec(b.fc2B),
        gateAttn: b.gA === null ? undefined : vec(Float32Array.of(b.gA)),
        gateMlp: b.gM === null ? undefined : vec(Float32Array.of(b.gM)),
      });
      if (v.norm === "rms_norm") { b.n1b.fill(0); b.n2b.fill(0); }
    }
    const x0 = rnd(n * d, -1, 1);
    const keep = Array.from({ length: n }, (_, j) => (j < n - v.padded ? 1 : 0));
    const x = uploadTensor(gpu, x0, [n, d], "f32");
    const keepT = uploadTensor(gpu, Uint32Array.from(keep), [n], "u32");
    const rec = new Recorder(gpu);
    const taps = runVitBlocks(rec, cfg, gpuBlocks, x, {
      mask: { kind: "full", kvLength: n },
      keyMask: v.padded ? { keep: keepT } : undefined,
      taps: [-1, 0],
    });
    rec.submit();
    const got = await readF32(gpu, x);
    const gotTaps = await Promise.all(taps.map((t) => readF32(gpu, t)));
    const want = refBlocks(cfg, ref, x0, n, keep, [0], inter);
    expectClose("output", got, want.out, 1e-9);
    expectClose("tap -1 (input)", gotTaps[0], x0, 1e-12);
    expectClose("tap 0", gotTaps[1], want.taps[0], 1e-9);
    for (const t of [x, keepT, ...taps, ...held]) gpu.pool.release(t.buffer);
  });
}

test("ViT embeddings match the reference: patch GEMM with bias, class token per image, sequential and bucketed position ids, pre-norm", async () => {
  const d = 16;
  const patchDim = 12;
  const images = 2;
  const P = 5;
  const numPos = 9;
  const cfg: VitConfig = { hiddenSize: d, numHeads: 2, headDim: 8, norm: "layer_norm", normEps: 1e-5, act: "quick_gelu" };
  const pw = randomArray(d * patchDim, 1, -0.5, 0.5);
  const pb = randomArray(d, 2, -0.1, 0.1);
  const cls = randomArray(d, 3);
  const pos = randomArray(numPos * d, 4);
  const nw = randomArray(d, 5, 0.8, 1.2);
  const nb = randomArray(d, 6, -0.1, 0.1);
  const rows = randomArray(images * P * patchDim, 7);
  const tokens = P + 1;
  const bucketed = Array.from({ length: images * tokens }, (_, r) => (r * 5 + 3) % numPos);
  const reference = (ids: number[]): Float64Array => {
    const x = new Float64Array(images * tokens * d);
    for (let i = 0; i < images; i++) for (let t = 0; t < tokens; t++) for (let c = 0; c < d; c++) {
      let v = cls[c];
      if (t > 0) {
        v = pb[c];
        for (let k = 0; k < patchDim; k++) v += rows[(i * P + t - 1) * patchDim + k] * pw[c * patchDim + k];
      }
      x[(i * tokens + t) * d + c] = v + pos[ids[i * tokens + t] * d + c];
    }
    return refNorm("layer_norm", x, images * tokens, d, nw, nb, 1e-5);
  };
  const held: Tensor[] = [];
  const up = (a: Float32Array | Uint32Array, shape: number[], dtype: "f32" | "u32"): Tensor => {
    const t = uploadTensor(gpu, a, shape, dtype);
    held.push(t);
    return t;
  };
  const weights = {
    patch: uploadWeight(gpu, pw, d, patchDim, "f32"),
    patchBias: up(pb, [d], "f32"),
    classEmbedding: up(cls, [d], "f32"),
    positionEmbedding: uploadWeight(gpu, pos, numPos, d, "f32"),
    preNorm: { weight: up(nw, [d], "f32"), bias: up(nb, [d], "f32") },
  };
  const patches = up(rows, [images * P, patchDim], "f32");
  for (const ids of [null, bucketed]) {
    const rec = new Recorder(gpu);
    const out = vitEmbed(rec, cfg, weights, patches, { images, positionIds: ids ? up(Uint32Array.from(ids), [ids.length], "u32") : undefined });
    rec.submit();
    const got = await readF32(gpu, out);
    const seq = Array.from({ length: images * tokens }, (_, r) => r % tokens);
    expectClose(ids ? "bucketed ids" : "sequential ids", got, reference(ids ?? seq), 1e-10);
    gpu.pool.release(out.buffer);
  }
  for (const t of held) gpu.pool.release(t.buffer);
});
