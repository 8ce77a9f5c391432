// Qwen2-VL vision tower (Qwen2VisionTransformerPretrainedModel): patch embed,
// 2-D rotary, the shared pre-norm ViT blocks (models/vit) with attention limited to each image
// frame, and the 2x2 patch merger. Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { reshape, type Tensor } from "../../gpu/tensor.ts";
import { uploadTensor } from "../../gpu/transfer.ts";
import { gelu } from "../../ops/activation.ts";
import { layerNorm } from "../../ops/layer_norm.ts";
import { linear } from "../../ops/linear.ts";
import { applyRope } from "../../ops/rope.ts";
import type { Qwen2VLVisionConfig } from "./config.ts";
import type { Grid } from "./rope_index.ts";
import type { VisionWeights } from "./weights.ts";
import { parseVitActivation, runVitBlocks, type VitConfig } from "../vit/encoder.ts";

const LN_EPS = 1e-6;
const VISION_THETA = 10000;

function checkGrids(grids: readonly Grid[], merge: number): number {
  if (grids.length === 0) throw new WebvlmError("bad_request", "vision: no grids");
  let n = 0;
  for (const g of grids) {
    const [t, h, w] = g;
    if (![t, h, w].every((d) => Number.isSafeInteger(d) && d > 0) || h % merge !== 0 || w % merge !== 0) {
      throw new WebvlmError("bad_request", `vision: bad grid [${g.join(", ")}] (h and w must be multiples of ${merge})`);
    }
    n += t * h * w;
  }
  return n;
}

/**
 * rot_pos_emb's positions as rows [hpos (N), wpos (N)]: each patch's row and column in its
 * image's patch grid, in the processor's row order (merge windows row-major, then the patches of
 * a window row-major), repeated per temporal slice, images concatenated.
 */
export function visionRotaryPositions(grids: readonly Grid[], merge: number): Int32Array {
  const n = checkGrids(grids, merge);
  const pos = new Int32Array(2 * n);
  let i = 0;
  for (const [t, h, w] of grids) {
    for (let it = 0; it < t; it++) {
      for (let bh = 0; bh < h / merge; bh++) {
        for (let bw = 0; bw < w / merge; bw++) {
          for (let ih = 0; ih < merge; ih++) {
            for (let iw = 0; iw < merge; iw++) {
              pos[i] = bh * merge + ih;
              pos[n + i] = bw * merge + iw;
              i++;
            }
          }
        }
      }
    }
  }
  return pos;
}

/** cu_seqlens: one attention segment per temporal slice of each image (h * w patches each). */
export function visionCuSeqlens(grids: readonly Grid[]): Uint32Array {
  const cu = [0];
  for (const [t, h, w] of grids) for (let i = 0; i < t; i++) cu.push(cu[cu.length - 1] + h * w);
  return Uint32Array.from(cu);
}

/** Image tokens (merged rows) the grids produce: sum t*h*w / merge^2. */
export function visionTokenCount(grids: readonly Grid[], merge: number): number {
  return checkGrids(grids, merge) / (merge * merge);
}

/**
 * pixelValues f32 [N, C*T*P*P] (patch rows of all images, processor order) -> image embeddings
 * f32 [N / merge^2, hidden]. The caller owns (and releases) the result; pixelValues is not released.
 */
export function encodeVision(
  rec: Recorder,
  cfg: Qwen2VLVisionConfig,
  w: VisionWeights,
  pixelValues: Tensor,
  grids: readonly Grid[],
): Tensor {
  const ctx = rec.ctx;
  const merge = cfg.spatialMergeSize;
  const n = checkGrids(grids, merge);
  const patchDim = cfg.inChannels * cfg.temporalPatchSize * cfg.patchSize * cfg.patchSize;
  if (pixelValues.shape.length !== 2 || pixelValues.shape[0] !== n || pixelValues.shape[1] !== patchDim) {
    throw new WebvlmError("bad_request", `vision: pixel values [${pixelValues.shape}] do not match the grids' [${n}, ${patchDim}]`);
  }
  const e = cfg.embedDim;
  const hd = cfg.headDim;
  const heads = cfg.numHeads;
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));

  const positions = uploadTensor(ctx, visionRotaryPositions(grids, merge), [2, n], "i32", "vision.rope_pos");
  const cu = uploadTensor(ctx, visionCuSeqlens(grids), [grids.reduce((a, g) => a + g[0], 0) + 1], "u32", "vision.cu_seqlens");

  const x = linear(rec, pixelValues, w.patchEmbed);
  const vit: VitConfig = { hiddenSize: e, numHeads: heads, headDim: hd, norm: "layer_norm", normEps: LN_EPS, act: parseVitActivation(cfg.hiddenAct) };
  runVitBlocks(rec, vit, w.blocks, x, {
    mask: { kind: "segments", cuSeqlens: cu },
    // q's and k's heads are adjacent in the row: one dispatch rotates both.
    rotate: (r, qkv) =>
      applyRope(r, qkv, positions, {
        numHeads: 2 * heads,
        headDim: hd,
        rowStride: 3 * e,
        theta: VISION_THETA,
        sections: [hd / 4, hd / 4],
        restartPerSection: true,
      }),
  });
  free(positions, cu);
  // PatchMerger: LayerNorm per patch, then 4 consecutive rows side by side (a free view).
  const ln = layerNorm(rec, x, w.lnQ.weight, w.lnQ.bias, LN_EPS);
  free(x);
  const merged = reshape(ln, [n / (merge * merge), e * merge * merge]);
  const m0 = linear(rec, merged, w.mlp0, w.mlp0Bias);
  free(ln);
  const g = gelu(rec, m0);
  free(m0);
  const out = linear(rec, g, w.mlp2, w.mlp2Bias);
  free(g);
  return out;
}
