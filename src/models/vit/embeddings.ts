// A ViT's input stage, shared by the families' towers: patch embedding as a GEMM over flattened
// patch rows (a Conv2d with stride = kernel is exactly that), an optional class token per image,
// learned position embeddings gathered by id (sequential by default; bucketed or interpolated
// position ids — Idefics 2's NaViT buckets, mllama's tiles — come from the family), and an
// optional pre-norm (CLIP's pre_layrnorm). Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { expectDtype, expectShape, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../../gpu/transfer.ts";
import { add } from "../../ops/add.ts";
import { embedding } from "../../ops/embedding.ts";
import { linear } from "../../ops/linear.ts";
import type { LinearWeight } from "../common/source.ts";
import { vitNorm, type VitConfig, type VitNormWeights } from "./encoder.ts";

export interface VitEmbedWeights {
  /** [hidden, C * P * P] (the conv kernel flattened in the processor's patch order). */
  patch: LinearWeight;
  patchBias?: Tensor;
  /** f32 [hidden]: prepended to each image's patches. */
  classEmbedding?: Tensor;
  /** [numPositions, hidden] table, gathered by position id. */
  positionEmbedding?: LinearWeight;
  preNorm?: VitNormWeights;
}

export interface VitEmbedOptions {
  /** Images in the batch; patch rows are `images * patchesPerImage`, image-major. */
  images: number;
  /**
   * u32/i32 [rows out] position ids (rows out = images * (patches + 1 with a class token));
   * default 0, 1, 2, ... restarting for each image.
   */
  positionIds?: Tensor;
}

/** patch rows f32 [images * P, C*p*p] -> embeddings f32 [images * (P + cls), hidden] (caller releases). */
export function vitEmbed(rec: Recorder, cfg: VitConfig, w: VitEmbedWeights, patches: Tensor, opts: VitEmbedOptions): Tensor {
  const ctx = rec.ctx;
  const d = cfg.hiddenSize;
  expectDtype("vit.patches", patches, ["f32"]);
  const rows = patches.shape[0];
  if (!Number.isInteger(opts.images) || opts.images < 1 || rows % opts.images !== 0) {
    throw new WebvlmError("shape_mismatch", `vit: ${rows} patch rows do not split into ${opts.images} images`);
  }
  const perImage = rows / opts.images;
  const cls = w.classEmbedding ? 1 : 0;
  const tokens = perImage + cls;
  const outRows = opts.images * tokens;
  let x = linear(rec, patches, w.patch, w.patchBias);
  if (w.classEmbedding) {
    expectShape("vit.class_embedding", w.classEmbedding, [d]);
    const withCls = allocTensor(ctx, [outRows, d], "f32", "vit.embeddings");
    const rowBytes = d * 4;
    for (let i = 0; i < opts.images; i++) {
      const dst = withCls.offset + i * tokens * rowBytes;
      rec.copy(w.classEmbedding, { buffer: withCls.buffer, offset: dst, size: rowBytes });
      rec.copy(
        { buffer: x.buffer, offset: x.offset + i * perImage * rowBytes, size: perImage * rowBytes },
        { buffer: withCls.buffer, offset: dst + rowBytes, size: perImage * rowBytes },
      );
    }
    ctx.pool.release(x.buffer);
    x = withCls;
  }
  if (w.positionEmbedding) {
    let ids = opts.positionIds;
    let own: Tensor | null = null;
    if (!ids) {
      const seq = new Uint32Array(outRows);
      for (let r = 0; r < outRows; r++) seq[r] = r % tokens;
      ids = own = uploadTensor(ctx, seq, [outRows], "u32", "vit.position_ids");
    }
    expectShape("vit.positionIds", ids, [outRows]);
    const pe = embedding(rec, ids, w.positionEmbedding);
    const sum = add(rec, x, pe); // add's output may not alias an input (WebGPU's writable-binding rule)
    ctx.pool.release(pe.buffer);
    ctx.pool.release(x.buffer);
    x = sum;
    if (own) ctx.pool.release(own.buffer);
  }
  if (w.preNorm) {
    const normed = vitNorm(rec, cfg, x, w.preNorm);
    ctx.pool.release(x.buffer);
    x = normed;
  }
  return x;
}
