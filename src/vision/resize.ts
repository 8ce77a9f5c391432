// Bit-exact port of Pillow's 8-bit BICUBIC resample (src/libImaging/Resample.c,
// ImagingResampleInner with box = (0, 0, w, h)), which is what
// `Image.resize((w, h), Image.BICUBIC)` runs for an RGB image in the
// transformers Qwen2-VL processor. Identical in Pillow 9.4 through 12.x.
import { WebvlmError } from "../api/errors.ts";

/** 32 - 8 bits of result - 2 bits of headroom for negative lobes / overshoot. */
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);
const BICUBIC_SUPPORT = 2.0;

// Keys' cubic with a = -0.5, written in Pillow's operation order so that the
// doubles round identically.
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

interface Coeffs {
  ksize: number;
  /** per output index: [first input index, tap count] */
  bounds: Int32Array;
  /** fixed-point taps, ksize per output index */
  kk: Int32Array;
}

/** precompute_coeffs + normalize_coeffs_8bpc for box [0, inSize). */
function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  // box edges are C floats; integers below 2^24 are exact, so in0 = 0, in1 = inSize.
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const pre = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    // (int) casts truncate toward zero
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = bicubic((x + xmin - center + 0.5) * ss);
      pre[x] = w;
      ww += w;
    }
    const base = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? pre[x] / ww : pre[x];
      kk[base + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

// clip8: arithmetic shift then clamp (Pillow's lookup table covers the same range).
function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Horizontal pass over rows [y0, y0 + rows) of `src` (w wide, c channels).
 * int32 arithmetic, as Pillow's `int ss` accumulators (sums fit by design).
 */
function horizontal(
  src: Uint8Array, w: number, c: number, y0: number, rows: number, outW: number, co: Coeffs,
): Uint8Array {
  const out = new Uint8Array(outW * rows * c);
  const { ksize, bounds, kk } = co;
  if (c === 3) {
    // The common case, with the channel loop unrolled (several times faster).
    for (let yy = 0; yy < rows; yy++) {
      const rowIn = (yy + y0) * w * 3;
      let o = yy * outW * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        const kb = xx * ksize;
        let s0 = HALF, s1 = HALF, s2 = HALF;
        let p = rowIn + xmin * 3;
        for (let x = 0; x < xmax; x++, p += 3) {
          const k = kk[kb + x];
          s0 = (s0 + Math.imul(src[p], k)) | 0;
          s1 = (s1 + Math.imul(src[p + 1], k)) | 0;
          s2 = (s2 + Math.imul(src[p + 2], k)) | 0;
        }
        out[o++] = clip8(s0);
        out[o++] = clip8(s1);
        out[o++] = clip8(s2);
      }
    }
    return out;
  }
  const acc = new Int32Array(c);
  for (let yy = 0; yy < rows; yy++) {
    const rowIn = (yy + y0) * w * c;
    const rowOut = yy * outW * c;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2];
      const xmax = bounds[xx * 2 + 1];
      const kb = xx * ksize;
      acc.fill(HALF);
      for (let x = 0; x < xmax; x++) {
        const k = kk[kb + x];
        const p = rowIn + (x + xmin) * c;
        for (let ch = 0; ch < c; ch++) acc[ch] += Math.imul(src[p + ch], k);
      }
      for (let ch = 0; ch < c; ch++) out[rowOut + xx * c + ch] = clip8(acc[ch]);
    }
  }
  return out;
}

// Accumulates whole source rows into one output row: the same int32 sums as
// Pillow's per-pixel loop, but reading memory in order.
function vertical(src: Uint8Array, w: number, c: number, outH: number, co: Coeffs): Uint8Array {
  const stride = w * c;
  const out = new Uint8Array(stride * outH);
  const acc = new Int32Array(stride);
  const { ksize, bounds, kk } = co;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    const kb = yy * ksize;
    acc.fill(HALF);
    for (let y = 0; y < ymax; y++) {
      const k = kk[kb + y];
      if (k === 0) continue;
      const row = (y + ymin) * stride;
      for (let i = 0; i < stride; i++) acc[i] += Math.imul(src[row + i], k);
    }
    const rowOut = yy * stride;
    for (let i = 0; i < stride; i++) out[rowOut + i] = clip8(acc[i]);
  }
  return out;
}

/**
 * Resize an interleaved 8-bit image with `channels` independent bands exactly as
 * Pillow's BICUBIC (antialiased: the kernel widens by the shrink factor).
 * The horizontal pass runs first, only on the source rows the vertical pass
 * reads; a pass whose dimension is unchanged is skipped, as in Pillow.
 */
export function resizeBicubic8(
  src: Uint8Array, w: number, h: number, newW: number, newH: number, channels: number,
): Uint8Array {
  for (const [name, v] of [["width", w], ["height", h], ["newWidth", newW], ["newHeight", newH]] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new WebvlmError("bad_request", `resize: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (src.length !== w * h * channels) {
    throw new WebvlmError("shape_mismatch", `resize: expected ${w * h * channels} bytes, got ${src.length}`);
  }
  const needH = newW !== w;
  const needV = newH !== h;
  if (!needH && !needV) return src.slice();
  const horiz = needH ? precomputeCoeffs(w, newW) : null;
  const vert = precomputeCoeffs(h, newH);
  let img = src;
  if (horiz) {
    // Rows outside [first, last) never reach the output: Pillow skips them.
    const first = vert.bounds[0];
    const last = vert.bounds[newH * 2 - 2] + vert.bounds[newH * 2 - 1];
    const rows = needV ? last - first : h;
    const y0 = needV ? first : 0;
    img = horizontal(src, w, channels, y0, rows, newW, horiz);
    if (needV) for (let i = 0; i < newH; i++) vert.bounds[i * 2] -= first;
  }
  return needV ? vertical(img, newW, channels, newH, vert) : img;
}

/** RGB8 interleaved resize, bit-identical to PIL `im.resize((newW, newH), Image.BICUBIC)`. */
export function resizeRgb8(src: Uint8Array, w: number, h: number, newW: number, newH: number): Uint8Array {
  return resizeBicubic8(src, w, h, newW, newH, 3);
}
