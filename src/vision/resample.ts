// The arithmetic of Pillow's 8-bit resampling (src/libImaging/Resample.c):
// filters, precompute_coeffs, normalize_coeffs_8bpc, and the horizontal and
// vertical passes. Every float step is an IEEE double in the same order as the
// C source, and every sum is a C `int`, so the output is bit-identical.
// resize.ts puts these together the way ImagingResampleInner does.

/** 32 - 8 bits of result - 2 bits of headroom for negative lobes / overshoot. */
export const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

export interface Filter {
  /** Pillow's `support`: the kernel's half-width at scale 1. */
  support: number;
  kernel: (x: number) => number;
}

// Keys' cubic with a = -0.5, written in Pillow's operation order so that the
// doubles round identically.
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

function bilinear(x: number): number {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

/** Pillow's filter table entries for the two filters VLM processors use. */
export const FILTERS = {
  bicubic: { support: 2.0, kernel: bicubic },
  bilinear: { support: 1.0, kernel: bilinear },
} as const satisfies Record<string, Filter>;

export type ResampleFilter = keyof typeof FILTERS;

export interface Coeffs {
  ksize: number;
  /** per output index: [first input index, tap count] */
  bounds: Int32Array;
  /** fixed-point taps (normalize_coeffs_8bpc), ksize per output index */
  kk: Int32Array;
}

/**
 * precompute_coeffs + normalize_coeffs_8bpc for the source span [in0, in1)
 * of an axis `inSize` long. `in0`/`in1` must already be float32 values (Pillow
 * parses the box with "(ffff)"); their difference is rounded to float32 too,
 * as C computes `in1 - in0` in float before the cast to double.
 */
export function precomputeCoeffs(
  inSize: number, in0: number, in1: number, outSize: number, filter: Filter,
): Coeffs {
  const scale = Math.fround(in1 - in0) / outSize;
  // Shrinking widens the kernel by the scale factor: this is Pillow's antialiasing.
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const pre = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let ww = 0.0;
    // (int) casts truncate toward zero
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.kernel((x + xmin - center + 0.5) * ss);
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
export function horizontalPass(
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

/**
 * Vertical pass: accumulates whole source rows into one output row — the same
 * int32 sums as Pillow's per-pixel loop, but reading memory in order.
 */
export function verticalPass(src: Uint8Array, w: number, c: number, outH: number, co: Coeffs): Uint8Array {
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
