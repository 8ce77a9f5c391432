// Bit-exact port of Pillow's 8-bit `Image.resize(size, resample, box)` for
// BICUBIC and BILINEAR with reducing_gap=None (its default, and what
// transformers' image_transforms.resize passes): Image.resize's early copy,
// _imaging.c `_resize` (box checks, the integer-box crop shortcut) and
// Resample.c `ImagingResampleInner` (horizontal pass first, over only the
// source rows the vertical pass reads; a pass that would be the identity is
// skipped). Identical in Pillow 9.4 through 12.x; the arithmetic is in resample.ts.
import { WebvlmError } from "../api/errors.ts";
import {
  FILTERS, horizontalPass, precomputeCoeffs, verticalPass, type Coeffs, type ResampleFilter,
} from "./resample.ts";

export type { ResampleFilter } from "./resample.ts";

/** A source region in source pixels: [left, top, right, bottom], fractions allowed. */
export type ResizeBox = readonly [number, number, number, number];

export interface ResizeOptions {
  /** Default "bicubic", Image.resize's default for 8-bit modes. */
  filter?: ResampleFilter;
  /**
   * Pillow's `box`: the region of the source scaled to the output (default the
   * whole image). Pillow's C side takes it as float32, so it is rounded so here.
   */
  box?: ResizeBox;
}

function checkDims(dims: readonly (readonly [string, number])[]): void {
  for (const [name, v] of dims) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new WebvlmError("bad_request", `resize: ${name} must be a positive integer, got ${v}`);
    }
  }
}

function cropRows(
  src: Uint8Array, w: number, c: number, x0: number, y0: number, cw: number, ch: number,
): Uint8Array {
  const out = new Uint8Array(cw * ch * c);
  for (let y = 0; y < ch; y++) {
    const from = ((y0 + y) * w + x0) * c;
    out.set(src.subarray(from, from + cw * c), y * cw * c);
  }
  return out;
}

/**
 * How Pillow carries out one resize (Image.resize + _resize + ImagingResampleInner), decided from
 * the sizes and the box alone, so the CPU (resize8) and the GPU (ops/image_resample.ts) follow
 * the same steps:
 *   copy      nothing changes: Image.resize returns a copy;
 *   crop      an integer box of exactly the output size: rows/columns are copied;
 *   resample  a horizontal pass over source rows [first, last) (when `horizontal`), then a vertical
 *             pass (when `vertical`; its bounds already relative to `first` when both run).
 */
export type ResizePlan =
  | { kind: "copy" }
  | { kind: "crop"; x0: number; y0: number }
  | { kind: "resample"; horizontal: Coeffs | null; vertical: Coeffs | null; first: number; last: number };

export function planResize(w: number, h: number, newW: number, newH: number, opts: ResizeOptions = {}): ResizePlan {
  checkDims([["width", w], ["height", h], ["newWidth", newW], ["newHeight", newH]]);
  const filterName = opts.filter ?? "bicubic";
  if (!Object.hasOwn(FILTERS, filterName)) {
    throw new WebvlmError("bad_request", `resize: unknown filter ${JSON.stringify(filterName)} (bicubic or bilinear)`);
  }
  const filter = FILTERS[filterName];
  const given = opts.box ?? [0, 0, w, h];
  if (given.length !== 4 || !given.every(Number.isFinite)) {
    throw new WebvlmError("bad_request", `resize: box must be 4 finite numbers, got ${JSON.stringify(given)}`);
  }
  // Image.resize returns a copy before any filtering when nothing changes.
  if (newW === w && newH === h && given[0] === 0 && given[1] === 0 && given[2] === w && given[3] === h) {
    return { kind: "copy" };
  }
  const [b0, b1, b2, b3] = given.map(Math.fround);
  // _resize's checks, in the same order and on the same float32 values.
  if (b0 < 0 || b1 < 0) throw new WebvlmError("bad_request", "resize: box offset can't be negative");
  if (b2 > w || b3 > h) throw new WebvlmError("bad_request", "resize: box can't exceed original image size");
  if (b2 - b0 < 0 || b3 - b1 < 0) throw new WebvlmError("bad_request", "resize: box can't be empty");
  // An integer box of exactly the output size is a crop, not a resample.
  if (b0 === Math.trunc(b0) && Math.fround(b2 - b0) === newW && b1 === Math.trunc(b1) && Math.fround(b3 - b1) === newH) {
    return { kind: "crop", x0: b0, y0: b1 };
  }
  // ImagingResampleInner.
  const needH = newW !== w || b0 !== 0 || b2 !== newW;
  const needV = newH !== h || b1 !== 0 || b3 !== newH;
  const vert = precomputeCoeffs(h, b1, b3, newH, filter);
  if (!needH) return { kind: "resample", horizontal: null, vertical: needV ? vert : null, first: 0, last: h };
  const horiz = precomputeCoeffs(w, b0, b2, newW, filter);
  // Rows outside [first, last) never reach the output: Pillow skips them.
  const first = vert.bounds[0];
  const last = vert.bounds[newH * 2 - 2] + vert.bounds[newH * 2 - 1];
  for (let i = 0; i < newH; i++) vert.bounds[i * 2] -= first;
  return { kind: "resample", horizontal: horiz, vertical: needV ? vert : null, first, last };
}

/**
 * Resize an interleaved (HWC) 8-bit image whose `channels` bands are
 * independent, bit-identical to Pillow's resize of an 8-bit mode with that many
 * bands (L, RGB; 4 bands = RGBX/CMYK: Pillow premultiplies RGBA by alpha
 * first, which this does not). When shrinking, the kernel widens by the
 * shrink factor (antialiasing), as in Pillow.
 */
export function resize8(
  src: Uint8Array, w: number, h: number, newW: number, newH: number, channels: number,
  opts: ResizeOptions = {},
): Uint8Array {
  checkDims([["width", w], ["height", h], ["newWidth", newW], ["newHeight", newH], ["channels", channels]]);
  if (src.length !== w * h * channels) {
    throw new WebvlmError("shape_mismatch", `resize: expected ${w * h * channels} bytes, got ${src.length}`);
  }
  const plan = planResize(w, h, newW, newH, opts);
  if (plan.kind === "copy") return src.slice();
  if (plan.kind === "crop") return cropRows(src, w, channels, plan.x0, plan.y0, newW, newH);
  let img = src;
  if (plan.horizontal) img = horizontalPass(src, w, channels, plan.first, plan.last - plan.first, newW, plan.horizontal);
  if (plan.vertical) return verticalPass(img, plan.horizontal ? newW : w, channels, newH, plan.vertical);
  return img === src ? src.slice() : img;
}

/** Pillow BICUBIC resize of an interleaved 8-bit image with `channels` bands. */
export function resizeBicubic8(
  src: Uint8Array, w: number, h: number, newW: number, newH: number, channels: number,
): Uint8Array {
  return resize8(src, w, h, newW, newH, channels, { filter: "bicubic" });
}

/** Pillow BILINEAR resize of an interleaved 8-bit image with `channels` bands. */
export function resizeBilinear8(
  src: Uint8Array, w: number, h: number, newW: number, newH: number, channels: number,
): Uint8Array {
  return resize8(src, w, h, newW, newH, channels, { filter: "bilinear" });
}

/**
 * RGB8 interleaved resize, bit-identical to PIL
 * `im.resize((newW, newH), filter, box)` (default BICUBIC, whole image).
 */
export function resizeRgb8(
  src: Uint8Array, w: number, h: number, newW: number, newH: number, opts: ResizeOptions = {},
): Uint8Array {
  return resize8(src, w, h, newW, newH, 3, opts);
}
