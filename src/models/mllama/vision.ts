// Llama 3.2 Vision's tiled vision encoder (MLLAMA.md §4, transformers' MllamaVisionModel) and the
// projector, for one image: all T = max_num_tiles tiles always run (real tokens attend to padded
// tiles). Patch conv as a GEMM over patch rows (cut on the CPU and uploaded, or already on the GPU
// from the processor's GPU path, read in place); pre-tile embedding (patch tokens) by
// aspect-ratio id with a tanh gate; class token; (1 - tanh g) position + tanh g tile embeddings;
// layernorm_pre; each tile padded to L = P rounded up to 8 AFTER the norm; the local transformer
// over all T*L tokens under the pad-vs-pad mask (keyMask "maskedRows": padding queries see only real
// keys, real queries see everything), tapping layer INPUTS; layernorm_post; post-tile embedding;
// the gated global transformer; the projector (column blocks, weights.ts) over the padded rows, then
// pad rows dropped while copying into the request's cross states. Records; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { isTensor, reshape, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../../gpu/transfer.ts";
import { embedding } from "../../ops/embedding.ts";
import { gatedAdd } from "../../ops/gated_add.ts";
import { layerNorm } from "../../ops/layer_norm.ts";
import { linear } from "../../ops/linear.ts";
import { runVitBlocks, type VitConfig, type VitRunOptions } from "../vit/encoder.ts";
import type { MllamaVisionConfig } from "./config.ts";
import type { MllamaVisionWeights } from "./weights.ts";

/** One preprocessed image (the processor's payload). */
export interface MllamaVisionImage {
  /**
   * f32 [T, C, tile, tile] on the CPU (tiles numTiles..T-1 are zeros), or the same values as the
   * patch conv's input rows on the GPU, f32 [T * n, C * p * p] (mllamaPatchRows' layout); a tensor
   * is read, never released.
   */
  pixelValues: Float32Array | Tensor;
  /** 1-based index into supported_aspect_ratios. */
  aspectRatioId: number;
  numTiles: number;
}

export function mllamaVitConfig(v: MllamaVisionConfig): VitConfig {
  return { hiddenSize: v.hiddenSize, numHeads: v.numHeads, headDim: v.headDim, norm: "layer_norm", normEps: v.normEps, act: v.act };
}

export function checkVisionImage(v: MllamaVisionConfig, img: MllamaVisionImage): void {
  const need = v.maxNumTiles * v.numChannels * v.tileSize * v.tileSize;
  const pv = img.pixelValues;
  if (isTensor(pv)) {
    const rows = v.maxNumTiles * v.patchesPerTile;
    const width = v.numChannels * v.patchSize * v.patchSize;
    if (pv.dtype !== "f32" || pv.shape.length !== 2 || pv.shape[0] !== rows || pv.shape[1] !== width) {
      throw new WebvlmError("bad_request", `mllama: patch rows must be f32 [${rows}, ${width}], got ${pv.dtype} [${pv.shape}]`, { expected: [rows, width], shape: [...pv.shape] });
    }
  } else if (!(pv instanceof Float32Array) || pv.length !== need) {
    throw new WebvlmError("bad_request", `mllama: pixel values must be f32 [${v.maxNumTiles}, ${v.numChannels}, ${v.tileSize}, ${v.tileSize}]`, { expected: need });
  }
  if (!Number.isInteger(img.aspectRatioId) || img.aspectRatioId < 1 || img.aspectRatioId > v.aspectRatios.length) {
    throw new WebvlmError("bad_request", `mllama: aspect ratio id ${img.aspectRatioId} outside [1, ${v.aspectRatios.length}]`, { aspectRatioId: img.aspectRatioId });
  }
  if (!Number.isInteger(img.numTiles) || img.numTiles < 1 || img.numTiles > v.maxNumTiles) {
    throw new WebvlmError("bad_request", `mllama: ${img.numTiles} tiles outside [1, ${v.maxNumTiles}]`, { numTiles: img.numTiles });
  }
}

/**
 * Conv2d(stride = kernel) input rows: f32 [T * n, C * p * p], patch (py, px) of tile t at row
 * t * n + py * side + px, its features in the kernel's (c, ky, kx) order.
 */
export function mllamaPatchRows(v: Pick<MllamaVisionConfig, "tileSize" | "patchSize" | "numChannels" | "maxNumTiles">, pixels: Float32Array): Float32Array {
  const { tileSize: S, patchSize: p, numChannels: C, maxNumTiles: T } = v;
  const side = S / p;
  const width = C * p * p;
  const out = new Float32Array(T * side * side * width);
  let o = 0;
  for (let t = 0; t < T; t++) {
    for (let py = 0; py < side; py++) {
      for (let px = 0; px < side; px++) {
        for (let c = 0; c < C; c++) {
          const plane = (t * C + c) * S * S;
          for (let ky = 0; ky < p; ky++) {
            const row = plane + (py * p + ky) * S + px * p;
            for (let kx = 0; kx < p; kx++) out[o++] = pixels[row + kx];
          }
        }
      }
    }
  }
  return out;
}

/** keep[t * L + j] = 1 for real tokens (j < P of a tile < numTiles), 0 for padding (§4.7). */
export function mllamaVisionKeep(v: MllamaVisionConfig, numTiles: number): Uint32Array {
  const L = v.paddedTokensPerTile;
  const keep = new Uint32Array(v.maxNumTiles * L);
  for (let t = 0; t < numTiles; t++) keep.fill(1, t * L, t * L + v.tokensPerTile);
  return keep;
}

/**
 * Records one image through the tower and the projector into rows [row0, row0 + T * P) of
 * `crossStates` f32 [rows, hidden] (image, tile, patch order).
 */
export function encodeMllamaImage(
  rec: Recorder, v: MllamaVisionConfig, w: MllamaVisionWeights, img: MllamaVisionImage, crossStates: Tensor, row0: number,
): void {
  checkVisionImage(v, img);
  const ctx = rec.ctx;
  const D = v.hiddenSize;
  const T = v.maxNumTiles;
  const n = v.patchesPerTile;
  const P = v.tokensPerTile;
  const L = v.paddedTokensPerTile;
  const H = crossStates.shape[1];
  const cfg = mllamaVitConfig(v);
  const rowBytes = D * 4;
  const uploads = [
    uploadTensor(ctx, Uint32Array.of(img.aspectRatioId), [1], "u32", "mllama.aspect_ratio_id"),
    uploadTensor(ctx, Uint32Array.from({ length: P }, (_, i) => i), [P], "u32", "mllama.position_ids"),
    uploadTensor(ctx, mllamaVisionKeep(v, img.numTiles), [T * L], "u32", "mllama.vision_keep"),
  ];
  const [arId, positionIds, keep] = uploads;
  // GPU-preprocessed patch rows are read in place (the payload owns them); host pixels are cut here.
  const pv = img.pixelValues;
  const patches = isTensor(pv) ? pv : uploadTensor(ctx, mllamaPatchRows(v, pv), [T * n, v.numChannels * v.patchSize * v.patchSize], "f32", "mllama.patches");
  if (patches !== pv) uploads.push(patches);
  const temps: Tensor[] = [];
  const tmp = (t: Tensor): Tensor => (temps.push(t), t);
  try {
    // 1-2: patch conv, pre-tile embedding on patch tokens (one [D] vector per tile).
    const x0 = tmp(linear(rec, patches, w.patch));
    const preTile = tmp(embedding(rec, arId, w.preTileEmbedding));
    gatedAdd(rec, x0, reshape(preTile, [T, D]), w.preTileGate, { broadcast: "interleave", out: x0 });
    // 3: class token first in every tile.
    const x = tmp(allocTensor(ctx, [T * P, D], "f32", "mllama.tiles"));
    for (let t = 0; t < T; t++) {
      const dst = x.offset + t * P * rowBytes;
      rec.copy(w.classEmbedding, { buffer: x.buffer, offset: dst, size: rowBytes });
      rec.copy({ buffer: x0.buffer, offset: x0.offset + t * n * rowBytes, size: n * rowBytes }, { buffer: x.buffer, offset: dst + rowBytes, size: n * rowBytes });
    }
    // 4: (1 - tanh g) * position embedding (every tile), tanh g * tile embedding of the aspect ratio.
    const pos = tmp(embedding(rec, positionIds, w.positionEmbedding));
    gatedAdd(rec, x, pos, w.positionGate, { form: "oneMinusTanh", broadcast: "repeat", out: x });
    const tile = tmp(embedding(rec, arId, w.tileEmbedding));
    gatedAdd(rec, x, reshape(tile, [T * P, D]), w.positionGate, { out: x });
    // 5-6: layernorm_pre, then pad each tile to L rows of zeros.
    const normed = tmp(layerNorm(rec, x, w.layernormPre.weight, w.layernormPre.bias, v.normEps));
    const h = tmp(allocTensor(ctx, [T * L, D], "f32", "mllama.padded"));
    rec.commandEncoder().clearBuffer(h.buffer, h.offset, T * L * rowBytes);
    for (let t = 0; t < T; t++) {
      rec.copy({ buffer: normed.buffer, offset: normed.offset + t * P * rowBytes, size: P * rowBytes }, { buffer: h.buffer, offset: h.offset + t * L * rowBytes, size: P * rowBytes });
    }
    // 7-8: local transformer; hidden[i] = input of layer i = tap i - 1.
    const run: VitRunOptions = { mask: { kind: "full", kvLength: T * L }, keyMask: { keep, rows: "maskedRows" } };
    const tapIds = [...new Set(v.intermediateLayers.map((i) => i - 1))];
    const tapped = runVitBlocks(rec, cfg, w.local, h, { ...run, taps: tapIds });
    temps.push(...tapped);
    const tapOf = new Map(tapIds.map((t, i) => [t, tapped[i]]));
    // 9-10: layernorm_post, post-tile embedding on every position, gated global transformer.
    const g = tmp(layerNorm(rec, h, w.layernormPost.weight, w.layernormPost.bias, v.normEps));
    const postTile = tmp(embedding(rec, arId, w.postTileEmbedding));
    gatedAdd(rec, g, reshape(postTile, [T, D]), w.postTileGate, { broadcast: "interleave", out: g });
    runVitBlocks(rec, cfg, w.global, g, run);
    // 11-14: projector over [global | intermediates] as column blocks, then drop the pad rows.
    const y = tmp(linear(rec, g, w.projector[0], w.projectorBias));
    v.intermediateLayers.forEach((layer, k) => linear(rec, tapOf.get(layer - 1)!, w.projector[1 + k], undefined, y, { accumulate: true }));
    for (let t = 0; t < T; t++) {
      rec.copy(
        { buffer: y.buffer, offset: y.offset + t * L * H * 4, size: P * H * 4 },
        { buffer: crossStates.buffer, offset: crossStates.offset + (row0 + t * P) * H * 4, size: P * H * 4 },
      );
    }
  } finally {
    // Released once recorded: later users of these buffers come after this encoder in stream order.
    for (const t of [...uploads, ...temps]) ctx.pool.release(t.buffer);
  }
}
