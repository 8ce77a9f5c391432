// What Idefics2's vision tower reads of one processed (sub-)image (/work/shared/IDEFICS2.md §6.2-6.4):
// its valid patch grid, the valid patches as Conv2d input rows, and their bucketed position ids.
// Padding never changes a valid patch (a patch is valid only if every pixel of it is the image's
// own), so these per-crop values equal what transformers computes from the padded batch.
import { WebvlmError } from "../../api/errors.ts";
import type { Chw32 } from "../../vision/canvas.ts";

/** Valid patches of an h x w image: whole patches of its top-left block (§6.2). */
export function validPatchGrid(height: number, width: number, patchSize: number): { patchesH: number; patchesW: number } {
  return { patchesH: Math.floor(height / patchSize), patchesW: Math.floor(width / patchSize) };
}

/**
 * The valid patches as rows [nh*nw, C*p*p], row-major over patches, each flattened (c, y, x):
 * the Conv2d patch embedding is then `rows @ weight.reshape(D, C*p*p).T + bias`.
 */
export function idefics2PatchRows(img: Chw32, patchSize: number): Float32Array {
  const p = patchSize;
  const { patchesH: nh, patchesW: nw } = validPatchGrid(img.height, img.width, p);
  const c = img.channels;
  const rowLen = c * p * p;
  const out = new Float32Array(nh * nw * rowLen);
  const plane = img.height * img.width;
  for (let r = 0; r < nh; r++) {
    for (let q = 0; q < nw; q++) {
      let o = (r * nw + q) * rowLen;
      for (let ch = 0; ch < c; ch++) {
        for (let y = 0; y < p; y++) {
          const from = ch * plane + (r * p + y) * img.width + q * p;
          out.set(img.data.subarray(from, from + p), o);
          o += p;
        }
      }
    }
  }
  return out;
}

/**
 * torch.arange(1/nps, 1.0, 1/nps) as float32: the length and each value in float64
 * (start + k * step), each value then rounded to float32 (§6.4).
 */
export function positionBoundaries(numPatchesPerSide: number): Float32Array {
  const step = 1 / numPatchesPerSide;
  const count = Math.max(0, Math.ceil((1.0 - step) / step));
  const out = new Float32Array(count);
  for (let k = 0; k < count; k++) out[k] = step + k * step;
  return out;
}

/**
 * Bucket of each of n fractional coordinates f32(f32(f32(i) / f32(n)) * f32(1 - 1e-6)),
 * i < n: #{boundaries <= f} (torch.bucketize, right=True). All float32, step by step.
 */
export function bucketCoordinates(n: number, boundaries: Float32Array): Int32Array {
  const out = new Int32Array(n);
  const fn = Math.fround(n);
  const shrink = Math.fround(1 - 1e-6);
  for (let i = 0; i < n; i++) {
    const f = Math.fround(Math.fround(Math.fround(i) / fn) * shrink);
    // Boundaries ascend: binary search for the first one > f.
    let lo = 0;
    let hi = boundaries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (boundaries[mid] <= f) lo = mid + 1;
      else hi = mid;
    }
    out[i] = lo;
  }
  return out;
}

/** Position ids of an nh x nw valid grid, row-major: bh[i] * nps + bw[j] (§6.4). */
export function idefics2PositionIds(patchesH: number, patchesW: number, numPatchesPerSide: number): Int32Array {
  const boundaries = positionBoundaries(numPatchesPerSide);
  const bh = bucketCoordinates(patchesH, boundaries);
  const bw = bucketCoordinates(patchesW, boundaries);
  const out = new Int32Array(patchesH * patchesW);
  for (let i = 0; i < patchesH; i++) for (let j = 0; j < patchesW; j++) out[i * patchesW + j] = bh[i] * numPatchesPerSide + bw[j];
  return out;
}

/** One (sub-)image as the vision tower consumes it. */
export interface Idefics2CropPatches {
  /** The processed (resized) size, before any batch padding. */
  height: number;
  width: number;
  patchesH: number;
  patchesW: number;
  /** [patchesH * patchesW, 3 * p * p] float32, see idefics2PatchRows. */
  patchRows: Float32Array;
  /** [patchesH * patchesW] indices into the position table (nps^2 rows). */
  positionIds: Int32Array;
}

/**
 * The valid patch grid of a processed h x w (sub-)image, checked: bad vision sizes, or an image
 * with no whole patch (no valid key for the vision tower's attention), are bad_request naming it.
 */
export function idefics2CropGrid(
  height: number, width: number, patchSize: number, imageSize: number, label = "image",
): { patchesH: number; patchesW: number; positionsPerSide: number } {
  if (!Number.isSafeInteger(patchSize) || patchSize <= 0 || !Number.isSafeInteger(imageSize) || imageSize < patchSize) {
    throw new WebvlmError("bad_request", `bad Idefics2 vision sizes: patch_size ${patchSize}, image_size ${imageSize}`, { patchSize, imageSize });
  }
  const { patchesH, patchesW } = validPatchGrid(height, width, patchSize);
  if (patchesH === 0 || patchesW === 0) {
    throw new WebvlmError(
      "bad_request",
      `${label} is ${width}x${height} after preprocessing, smaller than one ${patchSize}x${patchSize} patch`,
      { width, height, patchSize, image: label },
    );
  }
  return { patchesH, patchesW, positionsPerSide: Math.floor(imageSize / patchSize) };
}

/**
 * Patch rows and position ids of a processed (sub-)image. An image with no whole patch has no
 * valid key for the vision tower's attention: bad_request with its size.
 */
export function idefics2CropPatches(img: Chw32, patchSize: number, imageSize: number, label = "image"): Idefics2CropPatches {
  const { patchesH, patchesW, positionsPerSide } = idefics2CropGrid(img.height, img.width, patchSize, imageSize, label);
  return {
    height: img.height,
    width: img.width,
    patchesH,
    patchesW,
    patchRows: idefics2PatchRows(img, patchSize),
    positionIds: idefics2PositionIds(patchesH, patchesW, positionsPerSide),
  };
}
