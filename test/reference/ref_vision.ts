// Vision tower of the CPU reference: Qwen2VisionTransformerPretrainedModel
// (PatchEmbed, rot_pos_emb / VisionRotaryEmbedding, Qwen2VLVisionBlock with
// VisionAttention restricted by cu_seqlens, PatchMerger).

import { activation, applyRotaryInPlace, attendOne, f32, gelu, layerNorm, linear, ropeInvFreq } from "./ref_math.ts";
import type { RefModel, RefVisionConfig } from "./ref_model.ts";

export type Grid = [t: number, h: number, w: number];

function checkGrids(grids: Grid[], merge: number): void {
  for (const [t, h, w] of grids) {
    if (!(t >= 1 && h >= 1 && w >= 1) || h % merge !== 0 || w % merge !== 0) {
      throw new Error(`vision: grid (${t},${h},${w}) must be positive with h, w multiples of ${merge}`);
    }
  }
}

/**
 * rot_pos_emb's pos_ids: for every patch row, its (row, column) in the patch
 * grid, with rows ordered by merge window (windows row-major, then the
 * merge x merge patches inside a window row-major), repeated for each of the
 * t temporal slices, images concatenated.
 */
export function visionPatchPositions(grids: Grid[], merge: number): { hpos: number[]; wpos: number[] } {
  checkGrids(grids, merge);
  const hpos: number[] = [];
  const wpos: number[] = [];
  for (const [t, h, w] of grids) {
    for (let it = 0; it < t; it++) {
      for (let bh = 0; bh < h / merge; bh++) {
        for (let bw = 0; bw < w / merge; bw++) {
          for (let ih = 0; ih < merge; ih++) {
            for (let iw = 0; iw < merge; iw++) {
              hpos.push(bh * merge + ih);
              wpos.push(bw * merge + iw);
            }
          }
        }
      }
    }
  }
  return { hpos, wpos };
}

/** cu_seqlens = [0, cumsum(repeat_interleave(h*w, t))]: one segment per temporal slice of each image. */
export function visionCuSeqlens(grids: Grid[]): number[] {
  const cu = [0];
  for (const [t, h, w] of grids) {
    for (let i = 0; i < t; i++) cu.push(cu[cu.length - 1] + h * w);
  }
  return cu;
}

/**
 * cos / sin [numPatches, headDim] of the vision 2-D rotary embedding:
 * VisionRotaryEmbedding(dim = headDim/2, theta 1e4) gives inv_freq of length
 * headDim/4; a patch's angles are [hpos * inv_freq, wpos * inv_freq] (headDim/2),
 * duplicated to headDim (emb = cat(rotary, rotary)), all in f32.
 */
export function visionRotaryCosSin(vc: RefVisionConfig, grids: Grid[]): { cos: Float32Array; sin: Float32Array } {
  const { hpos, wpos } = visionPatchPositions(grids, vc.spatialMergeSize);
  const hd = vc.headDim;
  const invFreq = ropeInvFreq(hd / 2, 10000);
  const quarter = hd / 4;
  const n = hpos.length;
  const cos = new Float32Array(n * hd);
  const sin = new Float32Array(n * hd);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < quarter; j++) {
      const angles = [f32(hpos[i] * invFreq[j]), f32(wpos[i] * invFreq[j])];
      for (let part = 0; part < 2; part++) {
        const a = angles[part];
        const d = part * quarter + j; // position in the headDim/2 rotary vector
        for (const dd of [d, d + hd / 2]) {
          cos[i * hd + dd] = Math.cos(a);
          sin[i * hd + dd] = Math.sin(a);
        }
      }
    }
  }
  return { cos, sin };
}

/**
 * VisionAttention: qkv -> (seq, 3, heads, headDim); rotary on q and k;
 * bidirectional attention inside each cu_seqlens segment only; proj.
 */
function visionAttention(
  model: RefModel, blockIndex: number, x: Float32Array, n: number,
  cos: Float32Array, sin: Float32Array, cu: number[],
): Float32Array {
  const vc = model.config.vision;
  const block = model.vision.blocks[blockIndex];
  const e = vc.embedDim;
  const hd = vc.headDim;
  const qkv = linear(x, n, block.qkv); // [n, 3e]: q = cols [0,e), k = [e,2e), v = [2e,3e)
  const q = new Float32Array(n * e);
  const k = new Float32Array(n * e);
  const v = new Float32Array(n * e);
  for (let i = 0; i < n; i++) {
    q.set(qkv.subarray(i * 3 * e, i * 3 * e + e), i * e);
    k.set(qkv.subarray(i * 3 * e + e, i * 3 * e + 2 * e), i * e);
    v.set(qkv.subarray(i * 3 * e + 2 * e, i * 3 * e + 3 * e), i * e);
  }
  for (let i = 0; i < n; i++) {
    const c = cos.subarray(i * hd, (i + 1) * hd);
    const s = sin.subarray(i * hd, (i + 1) * hd);
    for (let h = 0; h < vc.numHeads; h++) {
      applyRotaryInPlace(q, i * e + h * hd, hd, c, s);
      applyRotaryInPlace(k, i * e + h * hd, hd, c, s);
    }
  }
  const scale = hd ** -0.5;
  const out = new Float32Array(n * e);
  for (let seg = 0; seg + 1 < cu.length; seg++) {
    const start = cu[seg];
    const end = cu[seg + 1];
    for (let h = 0; h < vc.numHeads; h++) {
      const keys: Float32Array[] = [];
      const values: Float32Array[] = [];
      for (let j = start; j < end; j++) {
        keys.push(k.subarray(j * e + h * hd, j * e + (h + 1) * hd));
        values.push(v.subarray(j * e + h * hd, j * e + (h + 1) * hd));
      }
      for (let i = start; i < end; i++) {
        attendOne(q.subarray(i * e + h * hd, i * e + (h + 1) * hd), keys, values, scale, out, i * e + h * hd);
      }
    }
  }
  return linear(out, n, block.proj);
}

/**
 * Qwen2VisionTransformerPretrainedModel.forward.
 * pixelValues: [N, patchDim] patch rows (N = sum t*h*w) in the processor's order;
 * returns image embeddings [N / merge^2, LLM hidden], images concatenated.
 */
export function visionForward(model: RefModel, pixelValues: Float32Array, grids: Grid[]): Float32Array {
  const vc = model.config.vision;
  const e = vc.embedDim;
  const n = grids.reduce((acc, [t, h, w]) => acc + t * h * w, 0);
  if (pixelValues.length !== n * vc.patchDim) {
    throw new Error(`vision: pixelValues has ${pixelValues.length} values, grids need ${n} x ${vc.patchDim}`);
  }
  // PatchEmbed: Conv3d with kernel = stride = (T, P, P) over a (C, T, P, P) block is a dot product per output channel.
  let x = linear(pixelValues, n, model.vision.patchEmbed);
  const { cos, sin } = visionRotaryCosSin(vc, grids);
  const cu = visionCuSeqlens(grids);
  const act = activation(vc.hiddenAct);
  for (let b = 0; b < vc.depth; b++) {
    const block = model.vision.blocks[b];
    const attn = visionAttention(model, b, layerNorm(x, n, e, block.norm1.weight, block.norm1.bias, 1e-6), n, cos, sin, cu);
    const afterAttn = new Float32Array(n * e);
    for (let i = 0; i < n * e; i++) afterAttn[i] = x[i] + attn[i];
    x = afterAttn;
    const hidden = linear(layerNorm(x, n, e, block.norm2.weight, block.norm2.bias, 1e-6), n, block.fc1);
    for (let i = 0; i < hidden.length; i++) hidden[i] = act(hidden[i]);
    const mlp = linear(hidden, n, block.fc2);
    const afterMlp = new Float32Array(n * e);
    for (let i = 0; i < n * e; i++) afterMlp[i] = x[i] + mlp[i];
    x = afterMlp;
  }
  // PatchMerger: ln_q per patch, view(-1, e * merge^2) (consecutive rows concatenated), Linear, GELU(erf), Linear.
  const m2 = vc.spatialMergeSize ** 2;
  const normed = layerNorm(x, n, e, model.vision.mergerLnQ.weight, model.vision.mergerLnQ.bias, 1e-6);
  const tokens = n / m2;
  const h1 = linear(normed, tokens, model.vision.mergerFc1); // the flat buffer already is [tokens, e*m2]
  for (let i = 0; i < h1.length; i++) h1[i] = gelu(h1[i]);
  return linear(h1, tokens, model.vision.mergerFc2);
}
