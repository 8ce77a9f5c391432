// Vision encoder and projector of the Llama 3.2 Vision CPU reference (MLLAMA.md §4; transformers
// MllamaVisionModel.forward, MllamaPrecomputedAspectRatioEmbedding, MllamaPrecomputedPositionEmbedding,
// _prepare_aspect_ratio_attention_mask, MllamaVisionEncoderLayer). f32 storage, f64 accumulation
// (ref_math.ts). Masked keys (float32.min) are left out of softmax: their weight is exactly 0 in f32,
// and no query has every key masked (tile 0's real tokens are never padding).

import { activation, attendOne, f32, layerNorm, linear } from "./ref_math.ts";
import type { RefMllamaConfig, RefMllamaVisionLayer, RefMllamaWeights } from "./ref_mllama_model.ts";

const F32_MIN = -3.4028234663852886e38;

/** tanh of a stored f32 gate, as torch's gate.tanh() (f32 result). */
export const gateTanh = (g: number): number => f32(Math.tanh(g));

/**
 * §4.7: token j of the [T*L] sequence is padding if it is a pad position (j mod L >= P) or its tile
 * has aspect_ratio_mask 0. Returns 1 for padding, 0 for real tokens.
 */
export function visionPaddingFlags(aspectRatioMask: ArrayLike<number>, numPatches: number, paddedPatches: number): Uint8Array {
  const T = aspectRatioMask.length;
  const out = new Uint8Array(T * paddedPatches);
  for (let j = 0; j < out.length; j++) {
    const tile = Math.floor(j / paddedPatches);
    out[j] = j % paddedPatches >= numPatches || aspectRatioMask[tile] === 0 ? 1 : 0;
  }
  return out;
}

/**
 * §4.7 additive mask [T*L, T*L] as transformers builds it (m @ m^T * finfo.min with m = padding
 * flags): float32.min iff both query and key are padding, else 0.
 */
export function visionAttentionMask(aspectRatioMask: ArrayLike<number>, numPatches: number, paddedPatches: number): Float32Array {
  const pad = visionPaddingFlags(aspectRatioMask, numPatches, paddedPatches);
  const n = pad.length;
  const out = new Float32Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (pad[i] && pad[j]) out[i * n + j] = F32_MIN;
  return out;
}

/** Multi-head self-attention over all S tokens with an additive mask of 0 / float32.min entries. */
function visionAttention(c: RefMllamaConfig, layer: RefMllamaVisionLayer, h: Float32Array, S: number, mask: Float32Array): Float32Array {
  const { hiddenSize: D, numHeads, headDim } = c.vision;
  const q = linear(h, S, layer.q);
  const k = linear(h, S, layer.k);
  const v = linear(h, S, layer.v);
  const attn = new Float32Array(S * D);
  for (let a = 0; a < numHeads; a++) {
    const keys = Array.from({ length: S }, (_, j) => k.subarray(j * D + a * headDim, j * D + (a + 1) * headDim));
    const values = Array.from({ length: S }, (_, j) => v.subarray(j * D + a * headDim, j * D + (a + 1) * headDim));
    for (let i = 0; i < S; i++) {
      const ks: Float32Array[] = [];
      const vs: Float32Array[] = [];
      for (let j = 0; j < S; j++) {
        if (mask[i * S + j] !== 0) continue;
        ks.push(keys[j]);
        vs.push(values[j]);
      }
      attendOne(q.subarray(i * D + a * headDim, i * D + (a + 1) * headDim), ks, vs, headDim ** -0.5, attn, i * D + a * headDim);
    }
  }
  return linear(attn, S, layer.o);
}

/** MllamaVisionEncoderLayer: pre-norm block, gated (tanh) in the global transformer. */
function visionLayerForward(c: RefMllamaConfig, layer: RefMllamaVisionLayer, x: Float32Array, S: number, mask: Float32Array): Float32Array {
  const D = c.vision.hiddenSize;
  const eps = c.vision.normEps;
  const act = activation(c.vision.hiddenAct);
  const h = layerNorm(x, S, D, layer.inputLayernorm.weight, layer.inputLayernorm.bias, eps);
  let attn = visionAttention(c, layer, h, S, mask);
  if (layer.gateAttn !== null) {
    const g = gateTanh(layer.gateAttn);
    attn = attn.map((a) => g * a);
  }
  const mid = x.map((val, i) => val + attn[i]);
  const h2 = layerNorm(mid, S, D, layer.postAttentionLayernorm.weight, layer.postAttentionLayernorm.bias, eps);
  const up = linear(h2, S, layer.fc1).map((u) => act(u));
  let mlp = linear(up, S, layer.fc2);
  if (layer.gateFfn !== null) {
    const g = gateTanh(layer.gateFfn);
    mlp = mlp.map((m) => g * m);
  }
  return mid.map((val, i) => val + mlp[i]);
}

export interface MllamaVisionImageOutput {
  /** [T, P, D*(K+1)]: global output (D) then the taps interleaved (index d*K + k), pads dropped. */
  features: Float32Array;
  /** Local-layer inputs [numLayers + 1][T*L*D] (hidden[0] = padded layernorm_pre output). */
  hidden: Float32Array[];
}

/**
 * §4 for one image: pixels [T, C, S, S], its aspect-ratio id and mask row [T] -> [T, P, D*(K+1)].
 */
export function visionImageForward(c: RefMllamaConfig, w: RefMllamaWeights, pixels: Float32Array, aspectRatioId: number, aspectRatioMask: ArrayLike<number>): MllamaVisionImageOutput {
  const v = c.vision;
  const vw = w.vision;
  const D = v.hiddenSize;
  const T = v.maxNumTiles;
  const C = v.numChannels;
  const S = v.tileSize;
  const p = v.patchSize;
  const side = S / p;
  const n = side * side;
  const P = v.numPatches;
  const L = v.paddedPatches;
  if (pixels.length !== T * C * S * S) throw new Error(`reference: image has ${pixels.length} values, expected ${T}x${C}x${S}x${S}`);
  if (aspectRatioMask.length !== T) throw new Error(`reference: aspect_ratio_mask row has ${aspectRatioMask.length} entries, expected ${T}`);
  if (!(aspectRatioId >= 0 && aspectRatioId <= v.supportedAspectRatios.length)) throw new Error(`reference: aspect_ratio_id ${aspectRatioId} out of range`);

  // 1. Patch conv as a linear over (c, ky, kx) vectors: [T, n, D], patches row-major.
  const patches = new Float32Array(T * n * C * p * p);
  for (let t = 0; t < T; t++) {
    for (let pr = 0; pr < side; pr++) {
      for (let pc = 0; pc < side; pc++) {
        const o = ((t * n) + pr * side + pc) * C * p * p;
        for (let ch = 0; ch < C; ch++) {
          for (let ky = 0; ky < p; ky++) {
            for (let kx = 0; kx < p; kx++) {
              patches[o + (ch * p + ky) * p + kx] = pixels[((t * C + ch) * S + pr * p + ky) * S + pc * p + kx];
            }
          }
        }
      }
    }
  }
  const embedded = linear(patches, T * n, vw.patchEmbedding);

  // 2-4. Pre-tile embedding (patch tokens only), class token first, gated position + tile embedding.
  const preGate = gateTanh(vw.preTileGate);
  const posGate = gateTanh(vw.positionGate);
  const oneMinus = f32(1 - posGate);
  const x = new Float32Array(T * P * D);
  for (let t = 0; t < T; t++) {
    for (let d = 0; d < D; d++) x[t * P * D + d] = vw.classEmbedding[d];
    for (let q = 0; q < n; q++) {
      for (let d = 0; d < D; d++) {
        const pre = f32(vw.preTileEmbedding[aspectRatioId * T * D + t * D + d] * preGate);
        x[(t * P + 1 + q) * D + d] = embedded[(t * n + q) * D + d] + pre;
      }
    }
    for (let q = 0; q < P; q++) {
      for (let d = 0; d < D; d++) {
        const i = (t * P + q) * D + d;
        x[i] = x[i] + f32(oneMinus * vw.positionEmbedding[q * D + d]);
        x[i] = x[i] + f32(posGate * vw.tileEmbedding[aspectRatioId * T * P * D + i]);
      }
    }
  }

  // 5-6. layernorm_pre, then pad each tile to L tokens with zeros: one sequence of T*L tokens.
  const normed = layerNorm(x, T * P, D, vw.layernormPre.weight, vw.layernormPre.bias, 1e-5);
  let seq: Float32Array = new Float32Array(T * L * D);
  for (let t = 0; t < T; t++) seq.set(normed.subarray(t * P * D, (t + 1) * P * D), t * L * D);
  const SL = T * L;
  const mask = visionAttentionMask(aspectRatioMask, P, L);

  // 8. Local transformer, recording each layer's input.
  const hidden: Float32Array[] = [];
  for (const layer of vw.layers) {
    hidden.push(seq);
    seq = visionLayerForward(c, layer, seq, SL, mask);
  }
  hidden.push(seq);

  // 9. layernorm_post, post-tile embedding on every position (class and pads included).
  seq = layerNorm(seq, SL, D, vw.layernormPost.weight, vw.layernormPost.bias, 1e-5);
  const postGate = gateTanh(vw.postTileGate);
  for (let t = 0; t < T; t++) {
    for (let d = 0; d < D; d++) {
      const e = f32(vw.postTileEmbedding[aspectRatioId * T * D + t * D + d] * postGate);
      for (let l = 0; l < L; l++) seq[(t * L + l) * D + d] += e;
    }
  }

  // 10. Global transformer (gated layers, same mask).
  for (const layer of vw.globalLayers) seq = visionLayerForward(c, layer, seq, SL, mask);

  // 11-13. Drop pads; concat global output with the interleaved taps.
  const taps = v.intermediateLayersIndices.map((i) => {
    if (!(i >= 0 && i < hidden.length)) throw new Error(`reference: intermediate layer index ${i} out of range`);
    return hidden[i];
  });
  const K = taps.length;
  const outDim = D * (K + 1);
  const features = new Float32Array(T * P * outDim);
  for (let t = 0; t < T; t++) {
    for (let q = 0; q < P; q++) {
      const src = (t * L + q) * D;
      const dst = (t * P + q) * outDim;
      for (let d = 0; d < D; d++) features[dst + d] = seq[src + d];
      for (let d = 0; d < D; d++) for (let k = 0; k < K; k++) features[dst + D + d * K + k] = taps[k][src + d];
    }
  }
  return { features, hidden };
}

/** §4.14 projector: [rows, D*(K+1)] -> [rows, text hidden]. */
export function projectVisionFeatures(w: RefMllamaWeights, features: Float32Array, rows: number): Float32Array {
  return linear(features, rows, w.projector);
}
