// Idefics2's vision tower (Idefics2VisionTransformer: SigLIP with NaViT-style patch masks) on the
// shared ViT (models/vit), run over the VALID patches of every crop only: padded patches are
// masked as keys in transformers and never influence a valid row, so dropping them gives the
// same valid rows. The crops' patches are concatenated and attention is kept within each crop
// (segments mask). Patch GEMM + bias, bucketed position ids from the processor, pre-LN blocks
// (LayerNorm, gelu_tanh), post_layernorm. Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { byteSize, isTensor, numel, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor, writeBytes } from "../../gpu/transfer.ts";
import { layerNorm } from "../../ops/layer_norm.ts";
import { parseVitActivation, runVitBlocks, type VitConfig } from "../vit/encoder.ts";
import { vitEmbed } from "../vit/embeddings.ts";
import type { Idefics2VisionConfig } from "./config.ts";
import type { Idefics2VisionWeights } from "./weights.ts";

/** One (sub-)image's valid patches, as the processor gives them (Idefics2ImagePayload's crops). */
export interface VisionCrop {
  /** Valid patch rows and columns: floor(h / p) x floor(w / p). */
  patchesH: number;
  patchesW: number;
  /**
   * f32 [patchesH * patchesW, 3*p*p], each patch flattened (c, y, x), row-major over the grid:
   * host values (CPU preprocessing) or GPU rows (a view into the processor's tensor).
   */
  patchRows: Float32Array | Tensor;
  /** [patchesH * patchesW] rows of the position table (IDEFICS2.md §6.4 buckets). */
  positionIds: Int32Array;
}

/** The tower's input tensors for a list of crops (gatherPatches puts the patch rows on the GPU). */
export interface VisionInputs {
  /** i32 [n]. */
  positionIds: Int32Array;
  /** u32 [crops + 1]: crop c owns rows [cu[c], cu[c+1]). */
  cuSeqlens: Uint32Array;
  /** Valid patches per crop. */
  counts: number[];
}

export function vitConfigOf(cfg: Idefics2VisionConfig): VitConfig {
  return {
    hiddenSize: cfg.hiddenSize,
    numHeads: cfg.numHeads,
    headDim: cfg.headDim,
    norm: "layer_norm",
    normEps: cfg.layerNormEps,
    act: parseVitActivation(cfg.hiddenAct),
  };
}

/** Checks every crop against the config and concatenates their patches (bad_request on mismatch). */
export function visionInputs(cfg: Idefics2VisionConfig, crops: readonly VisionCrop[]): VisionInputs {
  if (crops.length === 0) throw new WebvlmError("bad_request", "idefics2 vision: no crops");
  const patchDim = cfg.numChannels * cfg.patchSize * cfg.patchSize;
  const positions = cfg.positionsPerSide ** 2;
  const counts = crops.map((c, i) => {
    if (!Number.isSafeInteger(c.patchesH) || !Number.isSafeInteger(c.patchesW) || c.patchesH < 1 || c.patchesW < 1) {
      throw new WebvlmError("bad_request", `idefics2 vision: crop ${i} has a ${c.patchesH}x${c.patchesW} patch grid (at least one patch is needed)`);
    }
    const n = c.patchesH * c.patchesW;
    const rows = c.patchRows;
    const values = rows instanceof Float32Array ? rows.length : isTensor(rows) && rows.dtype === "f32" ? numel(rows.shape) : -1;
    if (values !== n * patchDim || c.positionIds.length !== n) {
      throw new WebvlmError(
        "bad_request",
        `idefics2 vision: crop ${i} (${c.patchesH}x${c.patchesW} patches) has ${values < 0 ? "no f32" : values} values and ${c.positionIds.length} position ids, expected ${n * patchDim} and ${n}`,
      );
    }
    return n;
  });
  const n = counts.reduce((a, b) => a + b, 0);
  const positionIds = new Int32Array(n);
  const cuSeqlens = new Uint32Array(crops.length + 1);
  crops.forEach((c, i) => {
    const at = cuSeqlens[i];
    for (const id of c.positionIds) {
      if (!Number.isInteger(id) || id < 0 || id >= positions) throw new WebvlmError("bad_request", `idefics2 vision: position id ${id} outside [0, ${positions})`);
    }
    positionIds.set(c.positionIds, at);
    cuSeqlens[i + 1] = at + counts[i];
  });
  return { positionIds, cuSeqlens, counts };
}

/**
 * The crops' patch rows (checked by visionInputs) as one f32 tensor [n, 3*p*p], crops in order:
 * host rows uploaded, GPU rows copied in `rec` (its submit must come before the tower reads them).
 * The caller releases the tensor.
 */
export function gatherPatches(rec: Recorder, crops: readonly VisionCrop[], patchDim: number): Tensor {
  const ctx = rec.ctx;
  const counts = crops.map((c) => c.patchesH * c.patchesW);
  const n = counts.reduce((a, b) => a + b, 0);
  const host = crops.map((c) => c.patchRows).filter((r): r is Float32Array => r instanceof Float32Array);
  if (host.length === crops.length) {
    if (host.length === 1) return uploadTensor(ctx, host[0], [n, patchDim], "f32", "idefics2.patches");
    const all = new Float32Array(n * patchDim);
    let o = 0;
    for (const r of host) {
      all.set(r, o);
      o += r.length;
    }
    return uploadTensor(ctx, all, [n, patchDim], "f32", "idefics2.patches");
  }
  const out = allocTensor(ctx, [n, patchDim], "f32", "idefics2.patches", true);
  let row = 0;
  crops.forEach((c, i) => {
    const bytes = counts[i] * patchDim * 4;
    const at = out.offset + row * patchDim * 4;
    const r = c.patchRows;
    if (r instanceof Float32Array) writeBytes(ctx, out.buffer, at, r);
    else rec.copy({ buffer: r.buffer, offset: r.offset, size: byteSize(r) }, { buffer: out.buffer, offset: at, size: bytes }, bytes);
    row += counts[i];
  });
  return out;
}

/**
 * patches f32 [n, 3*p*p] with positionIds i32 [n] and cuSeqlens u32 [crops + 1] (all uploaded by
 * the caller) -> post_layernorm'd hidden states f32 [n, D]; the caller releases the result.
 */
export function encodeVision(
  rec: Recorder,
  cfg: Idefics2VisionConfig,
  w: Idefics2VisionWeights,
  patches: Tensor,
  positionIds: Tensor,
  cuSeqlens: Tensor,
): Tensor {
  const vit = vitConfigOf(cfg);
  const x = vitEmbed(rec, vit, w.embed, patches, { images: 1, positionIds });
  runVitBlocks(rec, vit, w.blocks, x, { mask: { kind: "segments", cuSeqlens } });
  const out = layerNorm(rec, x, w.postLayernorm.weight, w.postLayernorm.bias, cfg.layerNormEps);
  rec.ctx.pool.release(x.buffer);
  return out;
}
