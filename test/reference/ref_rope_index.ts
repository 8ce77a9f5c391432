// Qwen2VLModel.get_rope_index for one unpadded sequence (batch 1, no
// attention mask), followed step by step.

import type { RefConfig } from "./ref_model.ts";
import type { Grid } from "./ref_vision.ts";

export interface RopeIndex {
  /** [3][L]: temporal, height and width position rows. */
  positions: number[][];
  /** max position + 1 - L; a decoded token at cache index i gets i + ropeDelta on all rows. */
  ropeDelta: number;
}

/**
 * Walks the prompt: each vision item is found as a `<|vision_start|>` followed
 * by `<|image_pad|>` / `<|video_pad|>`; images and videos are consumed in the
 * order they appear, image grids from imageGrids and video grids from
 * videoGrids in order. Text before an item (text_len tokens) gets
 * st_idx + arange(text_len) on all three rows, where st_idx = previous max + 1
 * (0 at the start); the item's llm_t * llm_h * llm_w tokens (h, w divided by
 * spatial_merge_size) get (t, h, w) indices in row-major order, each + text_len + st_idx.
 * Trailing text continues from max + 1.
 */
export function getRopeIndex(inputIds: number[], imageGrids: Grid[], config: RefConfig, videoGrids: Grid[] = []): RopeIndex {
  const L = inputIds.length;
  if (imageGrids.length === 0 && videoGrids.length === 0) {
    // No vision inputs: plain 1-D positions, delta 0.
    const row = inputIds.map((_, i) => i);
    return { positions: [row, [...row], [...row]], ropeDelta: 0 };
  }
  const merge = config.vision.spatialMergeSize;
  const { imageTokenId, videoTokenId, visionStartTokenId } = config;

  let imageNums = 0;
  let videoNums = 0;
  for (let i = 0; i < L; i++) {
    if (inputIds[i] !== visionStartTokenId) continue;
    if (i + 1 >= L) throw new Error("get_rope_index: <|vision_start|> is the last token (index out of range)");
    if (inputIds[i + 1] === imageTokenId) imageNums++;
    if (inputIds[i + 1] === videoTokenId) videoNums++;
  }

  const rows: number[][] = [[], [], []];
  let maxSoFar = -1; // llm_pos_ids_list[-1].max(); every chunk's max is the running max
  const pushChunk = (t: number[], h: number[], w: number[]): void => {
    rows[0].push(...t);
    rows[1].push(...h);
    rows[2].push(...w);
    for (const v of [...t, ...h, ...w]) maxSoFar = Math.max(maxSoFar, v);
  };
  const pushText = (start: number, len: number): void => {
    const r = Array.from({ length: len }, (_, i) => start + i);
    pushChunk(r, r, r);
  };
  const indexFrom = (token: number, st: number): number => {
    const i = inputIds.indexOf(token, st);
    if (i < 0) throw new Error(`get_rope_index: ${token} is not in list (searching from ${st})`);
    return i;
  };

  let st = 0;
  let imageIndex = 0;
  let videoIndex = 0;
  let remainImages = imageNums;
  let remainVideos = videoNums;
  for (let item = 0; item < imageNums + videoNums; item++) {
    const edImage = inputIds.includes(imageTokenId) && remainImages > 0 ? indexFrom(imageTokenId, st) : L + 1;
    const edVideo = inputIds.includes(videoTokenId) && remainVideos > 0 ? indexFrom(videoTokenId, st) : L + 1;
    let grid: Grid | undefined;
    let ed: number;
    if (edImage < edVideo) {
      grid = imageGrids[imageIndex++];
      remainImages--;
      ed = edImage;
    } else {
      grid = videoGrids[videoIndex++];
      remainVideos--;
      ed = edVideo;
    }
    if (!grid) throw new Error("get_rope_index: more vision items in the prompt than grids");
    const llmT = grid[0];
    const llmH = Math.floor(grid[1] / merge);
    const llmW = Math.floor(grid[2] / merge);
    const textLen = ed - st;
    const stIdx = maxSoFar + 1; // 0 when nothing was pushed yet
    pushText(stIdx, textLen);
    const tIdx: number[] = [];
    const hIdx: number[] = [];
    const wIdx: number[] = [];
    for (let t = 0; t < llmT; t++) {
      for (let h = 0; h < llmH; h++) {
        for (let w = 0; w < llmW; w++) {
          tIdx.push(t + textLen + stIdx);
          hIdx.push(h + textLen + stIdx);
          wIdx.push(w + textLen + stIdx);
        }
      }
    }
    pushChunk(tIdx, hIdx, wIdx);
    st = ed + llmT * llmH * llmW;
  }
  if (st < L) pushText(maxSoFar + 1, L - st);
  if (rows[0].length !== L) {
    throw new Error(`get_rope_index: built ${rows[0].length} positions for ${L} tokens (pad count does not match grids)`);
  }
  return { positions: rows, ropeDelta: maxSoFar + 1 - L };
}
