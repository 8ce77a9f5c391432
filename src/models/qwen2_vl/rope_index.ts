// Qwen2-VL's 3-row M-RoPE positions (Qwen2VLModel.get_rope_index in
// transformers' modeling_qwen2_vl.py), for one unpadded sequence, on the CPU.
import { WebvlmError } from "../../api/errors.ts";

export type Grid = readonly [t: number, h: number, w: number];

export interface RopeIndexConfig {
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
  spatialMergeSize: number;
}

export interface RopeIndex {
  /** [3, L] row-major: temporal, height, width positions of each prompt token. */
  positions: Int32Array;
  /** max position + 1 - L: the token at cache index i (i >= L) gets position i + ropeDelta on all rows. */
  ropeDelta: number;
}

const bad = (msg: string, details?: Record<string, unknown>): WebvlmError =>
  new WebvlmError("bad_request", `rope index: ${msg}`, details);

/**
 * get_rope_index. Vision items are the `<|vision_start|>` tokens directly followed by an image or
 * video pad; they are taken in prompt order, the next image from imageGrids or the next video from
 * videoGrids, whichever pad occurs first at or after the current point. The text before an item
 * gets st_idx + arange(text_len) on all rows (st_idx = previous max + 1, 0 at the start); the
 * item's t x (h/merge) x (w/merge) tokens get their (t, h, w) indices, row-major, + st_idx +
 * text_len. Trailing text continues from max + 1.
 *
 * transformers takes st_idx from the last chunk's max; that equals the running max (positions
 * only grow), except when an image directly follows another (an empty text chunk), where torch
 * fails on max() of an empty tensor and this uses the running max.
 * Without grids the positions are 0..L-1 on all rows and the delta is 0, as transformers does.
 */
export function getRopeIndex(ids: readonly number[], imageGrids: readonly Grid[], videoGrids: readonly Grid[], cfg: RopeIndexConfig): RopeIndex {
  const L = ids.length;
  const positions = new Int32Array(3 * L);
  if (imageGrids.length === 0 && videoGrids.length === 0) {
    for (let r = 0; r < 3; r++) for (let i = 0; i < L; i++) positions[r * L + i] = i;
    return { positions, ropeDelta: 0 };
  }
  const { imageTokenId, videoTokenId, visionStartTokenId, spatialMergeSize: merge } = cfg;
  let imageNums = 0;
  let videoNums = 0;
  for (let i = 0; i + 1 < L; i++) {
    if (ids[i] !== visionStartTokenId) continue;
    if (ids[i + 1] === imageTokenId) imageNums++;
    else if (ids[i + 1] === videoTokenId) videoNums++;
  }
  if (imageNums !== imageGrids.length || videoNums !== videoGrids.length) {
    throw bad(`prompt has ${imageNums} image(s) and ${videoNums} video(s) after <|vision_start|>, but ${imageGrids.length} image and ${videoGrids.length} video grid(s) were given`);
  }

  let n = 0; // positions written so far
  let max = -1;
  const push = (t: number, h: number, w: number): void => {
    if (n >= L) throw bad(`the grids cover more tokens than the prompt's ${L}`);
    positions[n] = t;
    positions[L + n] = h;
    positions[2 * L + n] = w;
    n++;
    max = Math.max(max, t, h, w);
  };
  const indexFrom = (token: number, start: number): number => {
    const i = ids.indexOf(token, start);
    if (i < 0) throw bad(`token ${token} not found at or after position ${start}`);
    return i;
  };

  let st = 0;
  let imageIndex = 0;
  let videoIndex = 0;
  for (let item = 0; item < imageNums + videoNums; item++) {
    const edImage = imageIndex < imageNums ? indexFrom(imageTokenId, st) : L + 1;
    const edVideo = videoIndex < videoNums ? indexFrom(videoTokenId, st) : L + 1;
    const isImage = edImage < edVideo;
    const grid = isImage ? imageGrids[imageIndex++] : videoGrids[videoIndex++];
    const ed = isImage ? edImage : edVideo;
    const [gt, gh, gw] = grid;
    if (![gt, gh, gw].every((d) => Number.isSafeInteger(d) && d > 0) || gh % merge !== 0 || gw % merge !== 0) {
      throw bad(`bad grid [${grid.join(", ")}] (h and w must be multiples of ${merge})`);
    }
    const llmH = gh / merge;
    const llmW = gw / merge;
    const textLen = ed - st;
    const stIdx = max + 1;
    for (let i = 0; i < textLen; i++) push(stIdx + i, stIdx + i, stIdx + i);
    const base = stIdx + textLen;
    for (let t = 0; t < gt; t++) {
      for (let h = 0; h < llmH; h++) for (let w = 0; w < llmW; w++) push(base + t, base + h, base + w);
    }
    st = ed + gt * llmH * llmW;
  }
  if (st < L) {
    const stIdx = max + 1;
    for (let i = 0; i < L - st; i++) push(stIdx + i, stIdx + i, stIdx + i);
  }
  if (n !== L) throw bad(`built ${n} positions for ${L} tokens (pad count does not match the grids)`);
  return { positions, ropeDelta: max + 1 - L };
}
