// Phi-3.5-vision reference, image preprocessing (PHI3V.md §3; image_processing_phi3_v.py's
// HD_transform + padding_336, torchvision ToTensor/Normalize, torch bicubic for the global view),
// from 8-bit RGB to the processor's pixel values. Written from Pillow's Resample.c (8-bit
// BILINEAR: precomputed f64 coefficients, 22-bit fixed point, horizontal pass then vertical
// with an 8-bit intermediate) and PyTorch's upsample_bicubic2d (align_corners=False, A = -0.75,
// clamped taps). Shares nothing with src/vision.
import { f32 } from "./ref_math.ts";

/** 8-bit RGB, row-major, 3 bytes a pixel. */
export interface RefRgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

export interface Phi3VProcessedImage {
  /** [(1 + hc·wc), 3, 336, 336]: the global view, then the tiles row-major. */
  pixelValues: Float32Array;
  /** [H, W] of the padded HD image (multiples of 336). */
  imageSize: [number, number];
  numImgTokens: number;
  /** The resized and padded 8-bit image (before normalization), for debugging. */
  hd: RefRgbImage;
}

const TILE = 336;
const PRECISION_BITS = 22;

/** HD_transform's scale: largest s >= 1 with s·ceil(s / ratio) <= numCrops (its while loop). */
export function hdScale(ratio: number, numCrops: number): number {
  let scale = 1;
  while (scale * Math.ceil(scale / ratio) <= numCrops) scale += 1;
  return scale - 1;
}

/** Size after HD_transform (resize + pad) of a width×height image: [H, W]. */
export function hdTargetSize(width: number, height: number, numCrops: number): { resized: [number, number]; padded: [number, number] } {
  const transposed = width < height;
  const [w, h] = transposed ? [height, width] : [width, height];
  const ratio = w / h;
  const newW = hdScale(ratio, numCrops) * TILE;
  const newH = Math.trunc(newW / ratio);
  const tar = Math.ceil(newH / TILE) * TILE;
  return transposed ? { resized: [newW, newH], padded: [newW, tar] } : { resized: [newH, newW], padded: [tar, newW] };
}

function transpose(img: RefRgbImage): RefRgbImage {
  const out = new Uint8Array(img.data.length);
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      for (let c = 0; c < 3; c++) out[(x * img.height + y) * 3 + c] = img.data[(y * img.width + x) * 3 + c];
    }
  }
  return { width: img.height, height: img.width, data: out };
}

/** Resample.c precompute_coeffs (bilinear, support 1) + normalize_coeffs_8bpc. */
function bilinearCoefficients(inSize: number, outSize: number): { bounds: Int32Array; weights: Int32Array[] } {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale;
  const bounds = new Int32Array(outSize * 2);
  const weights: Int32Array[] = [];
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      k[x] = t < 1 ? 1 - t : 0;
      ww += k[x];
    }
    const fixed = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      fixed[x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[2 * o] = xmin;
    bounds[2 * o + 1] = xmax;
    weights.push(fixed);
  }
  return { bounds, weights };
}

const clip8 = (ss: number): number => Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))));

/** Pillow Image.resize((w, h), BILINEAR) on 8-bit RGB: horizontal pass, then vertical. */
export function pillowBilinearResize(img: RefRgbImage, width: number, height: number): RefRgbImage {
  let cur = img;
  if (width !== cur.width) {
    const { bounds, weights } = bilinearCoefficients(cur.width, width);
    const out = new Uint8Array(width * cur.height * 3);
    for (let y = 0; y < cur.height; y++) {
      for (let x = 0; x < width; x++) {
        const xmin = bounds[2 * x];
        const k = weights[x];
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) ss += cur.data[(y * cur.width + xmin + i) * 3 + c] * k[i];
          out[(y * width + x) * 3 + c] = clip8(ss);
        }
      }
    }
    cur = { width, height: cur.height, data: out };
  }
  if (height !== cur.height) {
    const { bounds, weights } = bilinearCoefficients(cur.height, height);
    const out = new Uint8Array(cur.width * height * 3);
    for (let y = 0; y < height; y++) {
      const ymin = bounds[2 * y];
      const k = weights[y];
      for (let x = 0; x < cur.width; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < k.length; i++) ss += cur.data[((ymin + i) * cur.width + x) * 3 + c] * k[i];
          out[(y * cur.width + x) * 3 + c] = clip8(ss);
        }
      }
    }
    cur = { width: cur.width, height, data: out };
  }
  return cur;
}

/** HD_transform: transpose portrait, resize (Pillow bilinear), pad height with white centred, transpose back. */
export function hdTransform(img: RefRgbImage, numCrops: number): RefRgbImage {
  const transposed = img.width < img.height;
  let cur = transposed ? transpose(img) : img;
  const ratio = cur.width / cur.height;
  const newW = hdScale(ratio, numCrops) * TILE;
  const newH = Math.trunc(newW / ratio);
  cur = pillowBilinearResize(cur, newW, newH);
  const tar = Math.ceil(newH / TILE) * TILE;
  const top = Math.floor((tar - newH) / 2);
  const padded = new Uint8Array(newW * tar * 3).fill(255);
  padded.set(cur.data, top * newW * 3);
  cur = { width: newW, height: tar, data: padded };
  return transposed ? transpose(cur) : cur;
}

/** torch bicubic (align_corners=False, no antialias) of planes [3, h, w] to [3, 336, 336], f32. */
export function torchBicubicTo336(x: Float32Array, h: number, w: number): Float32Array {
  const A = -0.75;
  const c1 = (z: number): number => ((A + 2) * z - (A + 3)) * z * z + 1;
  const c2 = (z: number): number => ((A * z - 5 * A) * z + 8 * A) * z - 4 * A;
  const taps = (nIn: number): { idx: Int32Array; wt: Float32Array } => {
    const idx = new Int32Array(TILE * 4);
    const wt = new Float32Array(TILE * 4);
    const scale = f32(nIn / TILE);
    for (let o = 0; o < TILE; o++) {
      const src = f32(f32(scale * (o + 0.5)) - 0.5);
      const i0 = Math.floor(src);
      const t = f32(src - i0);
      const ws = [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)];
      for (let k = 0; k < 4; k++) {
        idx[o * 4 + k] = Math.min(Math.max(i0 - 1 + k, 0), nIn - 1);
        wt[o * 4 + k] = ws[k];
      }
    }
    return { idx, wt };
  };
  const ty = taps(h);
  const tx = taps(w);
  const out = new Float32Array(3 * TILE * TILE);
  const rows = new Float32Array(TILE * w);
  for (let c = 0; c < 3; c++) {
    const plane = x.subarray(c * h * w, (c + 1) * h * w);
    // Rows first (along y), then columns (along x).
    for (let o = 0; o < TILE; o++) {
      for (let xx = 0; xx < w; xx++) {
        let acc = 0;
        for (let k = 0; k < 4; k++) acc += ty.wt[o * 4 + k] * plane[ty.idx[o * 4 + k] * w + xx];
        rows[o * w + xx] = acc;
      }
    }
    for (let y = 0; y < TILE; y++) {
      for (let o = 0; o < TILE; o++) {
        let acc = 0;
        for (let k = 0; k < 4; k++) acc += tx.wt[o * 4 + k] * rows[y * w + tx.idx[o * 4 + k]];
        out[c * TILE * TILE + y * TILE + o] = acc;
      }
    }
  }
  return out;
}

/** Phi3VImageProcessor on one 8-bit RGB image: pixel values (global first), image_size, token count. */
export function phi3vPreprocess(img: RefRgbImage, numCrops: number, mean: readonly number[], std: readonly number[]): Phi3VProcessedImage {
  const hd = hdTransform(img, numCrops);
  const H = hd.height;
  const W = hd.width;
  const norm = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) {
    const m = f32(mean[c]);
    const s = f32(std[c]);
    for (let i = 0; i < H * W; i++) norm[c * H * W + i] = f32(f32(f32(hd.data[i * 3 + c] / 255) - m) / s);
  }
  const hc = H / TILE;
  const wc = W / TILE;
  const pixelValues = new Float32Array((1 + hc * wc) * 3 * TILE * TILE);
  pixelValues.set(torchBicubicTo336(norm, H, W), 0);
  for (let r = 0; r < hc; r++) {
    for (let q = 0; q < wc; q++) {
      const base = (1 + r * wc + q) * 3 * TILE * TILE;
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < TILE; y++) {
          const src = c * H * W + (r * TILE + y) * W + q * TILE;
          pixelValues.set(norm.subarray(src, src + TILE), base + c * TILE * TILE + y * TILE);
        }
      }
    }
  }
  return { pixelValues, imageSize: [H, W], numImgTokens: (hc * wc + 1) * 144 + 1 + (hc + 1) * 12, hd };
}
