// Vision tower of the CPU reference of Idefics2 (Idefics2Model.get_image_features up to the
// connector, Idefics2VisionEmbeddings, Idefics2VisionTransformer; IDEFICS2.md §6).
// f32 storage, f64 accumulation (as ref_math.ts). Shares no code with src/.

import { attendOne, f32, layerNorm, linear } from "./ref_math.ts";
import type { RefIdefics2Config, RefIdefics2Weights } from "./ref_idefics2_model.ts";

/** ACT2FN["gelu_pytorch_tanh"]: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

export function visionActivation(name: string): (x: number) => number {
  if (name === "gelu_pytorch_tanh") return geluTanh;
  throw new Error(`reference: unsupported vision activation ${name}`);
}

/** The request's images after dropping all-zero padding images (§6.1). */
export interface RealImages {
  pixelValues: Float32Array; // [N, C, hMax, wMax]
  pixelMask: Uint8Array; // [N, hMax, wMax]
  count: number;
  /** Index of each kept image in the input. */
  kept: number[];
}

/** §6.1: drop images whose every value is exactly 0.0, with their masks. */
export function dropPaddingImages(pixelValues: Float32Array, pixelAttentionMask: ArrayLike<number>, n: number, channels: number, hMax: number, wMax: number): RealImages {
  const per = channels * hMax * wMax;
  const plane = hMax * wMax;
  if (pixelValues.length !== n * per) throw new Error(`reference: pixel_values has ${pixelValues.length} values, expected ${n}x${channels}x${hMax}x${wMax}`);
  if (pixelAttentionMask.length !== n * plane) throw new Error(`reference: pixel_attention_mask has ${pixelAttentionMask.length} values, expected ${n}x${hMax}x${wMax}`);
  const kept: number[] = [];
  for (let i = 0; i < n; i++) {
    let allZero = true;
    for (let j = i * per; j < (i + 1) * per && allZero; j++) if (pixelValues[j] !== 0) allZero = false;
    if (!allZero) kept.push(i);
  }
  const pv = new Float32Array(kept.length * per);
  const pm = new Uint8Array(kept.length * plane);
  kept.forEach((src, dst) => {
    pv.set(pixelValues.subarray(src * per, (src + 1) * per), dst * per);
    for (let j = 0; j < plane; j++) pm[dst * plane + j] = pixelAttentionMask[src * plane + j] ? 1 : 0;
  });
  return { pixelValues: pv, pixelMask: pm, count: kept.length, kept };
}

/**
 * §6.2: patch_mask[n, r, c] = every pixel of patch (r, c) is unmasked, for r < hMax // p,
 * c < wMax // p (row-major, [N, rows*cols]).
 */
export function patchAttentionMask(pixelMask: Uint8Array, n: number, hMax: number, wMax: number, p: number): Uint8Array {
  const rows = Math.floor(hMax / p);
  const cols = Math.floor(wMax / p);
  const out = new Uint8Array(n * rows * cols);
  for (let i = 0; i < n; i++) {
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        let all = 1;
        for (let y = r * p; y < (r + 1) * p && all; y++) {
          for (let x = c * p; x < (c + 1) * p; x++) {
            if (!pixelMask[i * hMax * wMax + y * wMax + x]) { all = 0; break; }
          }
        }
        out[i * rows * cols + r * cols + c] = all;
      }
    }
  }
  return out;
}

/** torch.arange(1/nps, 1.0, 1/nps) in float32 (§6.4): f32(1/nps + k/nps), k < ceil((1 - 1/nps) / (1/nps)). */
export function bucketBoundaries(nps: number): Float32Array {
  const step = 1 / nps;
  const count = Math.ceil((1 - step) / step);
  const out = new Float32Array(count);
  for (let k = 0; k < count; k++) out[k] = f32(step + k * step);
  return out;
}

/**
 * §6.4 for one axis of n valid patches: fractional coordinates f32(f32(f32(i) / f32(n)) * f32(1 - 1e-6)),
 * then torch.bucketize(..., right=True) = the number of boundaries <= the coordinate.
 */
export function bucketCoords(n: number, nps: number): number[] {
  const boundaries = bucketBoundaries(nps);
  const shrink = f32(1 - 1e-6);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const frac = f32(f32(f32(i) / f32(n)) * shrink);
    let b = 0;
    while (b < boundaries.length && boundaries[b] <= frac) b++;
    out.push(b);
  }
  return out;
}

/**
 * Position ids of one image's rows*cols patch grid (§6.4): valid patches (the top-left nh x nw block
 * in the mask, counted as nh = valid patches of column 0, nw = of row 0) get
 * bucket_h * nps + bucket_w in row-major order; invalid patches get 0.
 */
export function visionPositionIds(patchMask: Uint8Array, rows: number, cols: number, nps: number): Int32Array {
  let nh = 0;
  for (let r = 0; r < rows; r++) nh += patchMask[r * cols];
  let nw = 0;
  for (let c = 0; c < cols; c++) nw += patchMask[c];
  const bh = bucketCoords(nh, nps);
  const bw = bucketCoords(nw, nps);
  const ids: number[] = [];
  for (const h of bh) for (const w of bw) ids.push(h * nps + w);
  const out = new Int32Array(rows * cols);
  let k = 0;
  for (let j = 0; j < rows * cols; j++) {
    if (!patchMask[j]) continue;
    if (k >= ids.length) throw new Error("reference: valid patches are not a top-left block");
    out[j] = ids[k++];
  }
  if (k !== ids.length) throw new Error("reference: valid patches are not a top-left block");
  return out;
}

export interface VisionOutput {
  /** post_layernorm output [N, S, D] (S = rows*cols, every patch, valid or not). */
  hidden: Float32Array;
  /** [N, S] 1 on valid patches. */
  patchMask: Uint8Array;
  count: number;
  rows: number;
  cols: number;
}

/**
 * §6.3-6.6 on the real (non-padding) images: patch embedding over the padded image, bucketed
 * position embeddings, the SigLIP encoder with invalid patches masked as keys, post_layernorm.
 */
export function visionForward(c: RefIdefics2Config, w: RefIdefics2Weights, images: RealImages, hMax: number, wMax: number): VisionOutput {
  const v = c.vision;
  const p = v.patchSize;
  const C = v.numChannels;
  const D = v.hiddenSize;
  const rows = Math.floor(hMax / p);
  const cols = Math.floor(wMax / p);
  const S = rows * cols;
  const N = images.count;
  const patchMask = patchAttentionMask(images.pixelMask, N, hMax, wMax, p);
  const hidden = new Float32Array(N * S * D);
  const act = visionActivation(v.hiddenAct);
  const hd = v.headDim;
  const scale = hd ** -0.5;

  for (let n = 0; n < N; n++) {
    const mask = patchMask.subarray(n * S, (n + 1) * S);
    if (!mask.some((m) => m === 1)) throw new Error(`reference: image ${images.kept[n]} has no complete ${p}x${p} patch`);
    // Patches flattened as (c, y, x), the Conv2d weight's [D, C, p, p] order.
    const patches = new Float32Array(S * C * p * p);
    const img = images.pixelValues.subarray(n * C * hMax * wMax, (n + 1) * C * hMax * wMax);
    for (let r = 0; r < rows; r++) {
      for (let cc = 0; cc < cols; cc++) {
        const base = (r * cols + cc) * C * p * p;
        for (let ch = 0; ch < C; ch++) {
          for (let y = 0; y < p; y++) {
            for (let x = 0; x < p; x++) patches[base + ch * p * p + y * p + x] = img[ch * hMax * wMax + (r * p + y) * wMax + cc * p + x];
          }
        }
      }
    }
    const embeds = linear(patches, S, w.patchEmbed);
    const pos = visionPositionIds(mask, rows, cols, v.patchesPerSide);
    let x = new Float32Array(S * D);
    for (let s = 0; s < S; s++) for (let d = 0; d < D; d++) x[s * D + d] = embeds[s * D + d] + w.positionEmbedding[pos[s] * D + d];

    // Keys of invalid patches get finfo.min: their softmax weight is exactly 0, so they are left out.
    const validKeys: number[] = [];
    for (let s = 0; s < S; s++) if (mask[s]) validKeys.push(s);
    for (const layer of w.visionLayers) {
      const h = layerNorm(x, S, D, layer.layerNorm1.weight, layer.layerNorm1.bias, v.layerNormEps);
      const q = linear(h, S, layer.q);
      const k = linear(h, S, layer.k);
      const vv = linear(h, S, layer.v);
      const attn = new Float32Array(S * D);
      for (let head = 0; head < v.numHeads; head++) {
        const off = head * hd;
        const keys = validKeys.map((j) => k.subarray(j * D + off, j * D + off + hd));
        const values = validKeys.map((j) => vv.subarray(j * D + off, j * D + off + hd));
        for (let i = 0; i < S; i++) attendOne(q.subarray(i * D + off, i * D + off + hd), keys, values, scale, attn, i * D + off);
      }
      const o = linear(attn, S, layer.out);
      x = x.map((val, i) => val + o[i]);
      const h2 = layerNorm(x, S, D, layer.layerNorm2.weight, layer.layerNorm2.bias, v.layerNormEps);
      const fc1 = linear(h2, S, layer.fc1);
      const a = fc1.map((val) => act(val));
      const fc2 = linear(a, S, layer.fc2);
      x = x.map((val, i) => val + fc2[i]);
    }
    hidden.set(layerNorm(x, S, D, w.postLayerNorm.weight, w.postLayerNorm.bias, v.layerNormEps), n * S * D);
  }
  return { hidden, patchMask, count: N, rows, cols };
}
