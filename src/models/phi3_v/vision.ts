// Phi-3.5-vision's image path (PHI3V.md §4): CLIP ViT over each image's 336 px tiles (global tile
// first, then the HD crops row-major) on the shared ViT (class token, position table, pre_layrnorm,
// pre-LN blocks with quick_gelu, attention kept within each tile by a segments mask), only the
// first layersUsed layers (layer_idx); then the HD assembly — drop CLS, 2x2 merge to 4C, the sub
// grid with sub_GN after each row, glb_GN, the global grid with sub_GN after each row — as ONE
// row gather (the embedding op over the tower's output with the separators appended as extra
// rows: a 4C vector is 4 consecutive C-rows), and the projection Linear -> GELU (erf) -> Linear.
// Records into a Recorder; submits nothing (model.ts schedules the submits).
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import { byteSize, isTensor, reshape, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { gelu } from "../../ops/activation.ts";
import { embedding } from "../../ops/embedding.ts";
import { linear } from "../../ops/linear.ts";
import { runVitBlocks, type VitConfig } from "../vit/encoder.ts";
import { vitEmbed } from "../vit/embeddings.ts";
import { PHI3V_GRID, PHI3V_PATCH_DIM, PHI3V_TILE_TOKENS, type Phi3VVisionConfig } from "./config.ts";
import type { Phi3VConnectorWeights, Phi3VVisionWeights } from "./weights.ts";

/** Patches per tile (24 x 24) and merged tokens per tile side (12). */
const TILE_PATCHES = PHI3V_GRID * PHI3V_GRID;
const MERGED = PHI3V_GRID / 2;

/** One image as the processor prepares it (the model-facing part of Phi3VImagePayload). */
export interface Phi3VImageItem {
  /** HD crop rows and columns (H / 336, W / 336). */
  hc: number;
  wc: number;
  /** Placeholder tokens of the image: (hc*wc + 1)*144 + 1 + (hc + 1)*12. */
  numImgTokens: number;
  /**
   * f32 [(1 + hc*wc) * 576, 3*14*14]: the global tile, then the HD tiles row-major; patches
   * row-major, (c, y, x). Host values, or a GPU tensor (GPU preprocessing) the model copies from
   * and never releases.
   */
  patchRows: Float32Array | Tensor;
}

/** §3.6: the processor's token count of an hc x wc image. */
export function phi3VImageTokens(hc: number, wc: number): number {
  return (hc * wc + 1) * MERGED * MERGED + 1 + (hc + 1) * MERGED;
}

/** Checks an item against the fixed tile geometry (bad_request naming what differs). */
export function checkImageItem(item: Phi3VImageItem, index = 0): void {
  const { hc, wc } = item;
  if (!Number.isSafeInteger(hc) || !Number.isSafeInteger(wc) || hc < 1 || wc < 1) {
    throw new WebvlmError("bad_request", `phi3_v: image ${index} has a ${hc}x${wc} crop grid (at least 1x1)`);
  }
  const want = phi3VImageTokens(hc, wc);
  if (item.numImgTokens !== want) {
    throw new WebvlmError("bad_request", `phi3_v: image ${index} (${hc}x${wc} crops) says ${item.numImgTokens} tokens, the HD layout gives ${want}`, { numImgTokens: item.numImgTokens, expected: want });
  }
  const values = (1 + hc * wc) * TILE_PATCHES * PHI3V_PATCH_DIM;
  const p = item.patchRows as unknown;
  const got = p instanceof Float32Array ? p.length : isTensor(p) && p.dtype === "f32" ? byteSize(p) / 4 : undefined;
  if (got !== values) {
    throw new WebvlmError("bad_request", `phi3_v: image ${index} (${hc}x${wc} crops) has ${got} patch values, expected ${values}`);
  }
}

export function vitConfigOf(v: Phi3VVisionConfig): VitConfig {
  return { hiddenSize: v.hiddenSize, numHeads: v.numHeads, headDim: v.headDim, norm: "layer_norm", normEps: v.layerNormEps, act: "quick_gelu" };
}

/**
 * patches f32 [tiles * 576, 3*14*14] (tiles concatenated), positionIds u32 [tiles * 577]
 * (0..576 per tile) and cuSeqlens u32 [tiles + 1] (multiples of 577), all uploaded by the caller
 * -> hidden states f32 [tiles * 577, C] after the first layersUsed layers (class token rows
 * included). The caller releases the result.
 */
export function encodeTiles(rec: Recorder, v: Phi3VVisionConfig, w: Phi3VVisionWeights, patches: Tensor, positionIds: Tensor, cuSeqlens: Tensor): Tensor {
  const vit = vitConfigOf(v);
  const tiles = patches.shape[0] / TILE_PATCHES;
  if (!Number.isInteger(tiles) || tiles < 1) throw new WebvlmError("internal", `phi3_v vision: ${patches.shape[0]} patch rows are not whole tiles`);
  const x = vitEmbed(rec, vit, w.embed, patches, { images: tiles, positionIds });
  runVitBlocks(rec, vit, w.blocks, x, { mask: { kind: "segments", cuSeqlens } });
  return x;
}

/** u32 [tiles * 577] position ids 0..576 per tile, and the tiles' u32 cu_seqlens [tiles + 1]. */
export function tileInputs(tiles: number): { positionIds: Uint32Array; cuSeqlens: Uint32Array } {
  const positionIds = new Uint32Array(tiles * PHI3V_TILE_TOKENS);
  for (let r = 0; r < positionIds.length; r++) positionIds[r] = r % PHI3V_TILE_TOKENS;
  const cuSeqlens = Uint32Array.from({ length: tiles + 1 }, (_, i) => i * PHI3V_TILE_TOKENS);
  return { positionIds, cuSeqlens };
}

/**
 * The HD assembly (§4) as row indices into a table of C-wide rows: the image's tiles' hidden
 * states (tile t's token k at row t*577 + k; tile 0 = global), then sub_GN's 4 C-chunks at rows
 * R..R+3 and glb_GN's at R+4..R+7 (R = tiles * 577). Four consecutive ids make one 4C vector;
 * numImgTokens * 4 ids in all.
 */
export function hdGatherIds(hc: number, wc: number): Uint32Array {
  const R = (1 + hc * wc) * PHI3V_TILE_TOKENS;
  const ids = new Uint32Array(phi3VImageTokens(hc, wc) * 4);
  let n = 0;
  const separator = (first: number): void => {
    for (let k = 0; k < 4; k++) ids[n++] = first + k;
  };
  /** Merged token (i, j) of tile t: f[2i,2j], f[2i,2j+1], f[2i+1,2j], f[2i+1,2j+1] (after CLS). */
  const merged = (t: number, i: number, j: number): void => {
    const base = t * PHI3V_TILE_TOKENS + 1;
    for (const [dy, dx] of [[0, 0], [0, 1], [1, 0], [1, 1]]) ids[n++] = base + (2 * i + dy) * PHI3V_GRID + 2 * j + dx;
  };
  for (let r = 0; r < MERGED * hc; r++) {
    for (let c = 0; c < MERGED * wc; c++) merged(1 + Math.floor(r / MERGED) * wc + Math.floor(c / MERGED), r % MERGED, c % MERGED);
    separator(R);
  }
  separator(R + 4);
  for (let i = 0; i < MERGED; i++) {
    for (let j = 0; j < MERGED; j++) merged(0, i, j);
    separator(R);
  }
  if (n !== ids.length) throw new WebvlmError("internal", `phi3_v: HD layout wrote ${n} of ${ids.length} ids`);
  return ids;
}

/**
 * table f32 [R + 8, C] (allocHdTable): the image's tiles' hidden states in rows [0, R), R =
 * tiles * 577, and room for the 8 separator rows at R (filled here) -> projected image features f32
 * [numImgTokens, H]. `ids` = hdGatherIds(hc, wc), uploaded by the caller. The caller releases the
 * result.
 */
export function assembleAndProject(rec: Recorder, w: Phi3VConnectorWeights, table: Tensor, tiles: number, ids: Tensor): Tensor {
  const ctx = rec.ctx;
  const [rows, C] = table.shape;
  const R = tiles * PHI3V_TILE_TOKENS;
  if (rows !== R + 8) throw new WebvlmError("internal", `phi3_v: HD table of ${rows} rows for ${tiles} tiles`);
  const rowBytes = C * 4;
  rec.copy(w.subGN, { buffer: table.buffer, offset: table.offset + R * rowBytes, size: 4 * rowBytes });
  rec.copy(w.glbGN, { buffer: table.buffer, offset: table.offset + (R + 4) * rowBytes, size: 4 * rowBytes });
  const gathered = embedding(rec, ids, { format: "f32", rows, cols: C, data: table });
  const tokens = reshape(gathered, [ids.shape[0] / 4, 4 * C]);
  const h = linear(rec, tokens, w.proj0, w.proj0Bias);
  ctx.pool.release(gathered.buffer);
  const act = gelu(rec, h);
  ctx.pool.release(h.buffer);
  const out = linear(rec, act, w.proj2, w.proj2Bias);
  ctx.pool.release(act.buffer);
  return out;
}

/** An f32 [(1 + hc*wc) * 577 + 8, C] table for one image's tower output and separators. */
export function allocHdTable(rec: Recorder, tiles: number, C: number): Tensor {
  return allocTensor(rec.ctx, [tiles * PHI3V_TILE_TOKENS + 8, C], "f32", "phi3v.hd_table");
}
