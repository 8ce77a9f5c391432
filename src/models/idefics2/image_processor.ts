// Idefics2ImageProcessor, the PIL ("slow") path of transformers, step by step as
// /work/shared/IDEFICS2.md §5 specifies it: split into 4 crops + the full image
// (before resizing), resize each by get_resize_output_image_size with Pillow's
// filter, rescale + normalize in float32 (CHW), and — for the batch view the
// reference compares — zero-pad to the request's largest (sub-)image with a pixel mask.
import { WebvlmError } from "../../api/errors.ts";
import { cropHwc8, padChw32, padMask, type Chw32, type Hwc8 } from "../../vision/canvas.ts";
import { normalize8ToChw, normalizeOptionsFromConfig } from "../../vision/normalize.ts";
import { resize8, type ResampleFilter } from "../../vision/resize.ts";
import {
  absent, badField, checkRescaleFactor, flagField, positiveInt, PREPROCESSOR_CONFIG_FILE, PROCESSOR_CONFIG_FILE, resampleField, rgbTriple,
} from "../common/preprocess_config.ts";

/** Target-size rule: Idefics2's longest/shortest edge pair, or a fixed height x width. */
export type Idefics2SizeRule =
  | { readonly kind: "edges"; readonly longestEdge: number; readonly shortestEdge: number }
  | { readonly kind: "fixed"; readonly height: number; readonly width: number };

/** The checkpoint's preprocessing settings (preprocessor_config.json + processor_config.json). */
export interface Idefics2PreprocessOptions {
  size: Idefics2SizeRule;
  doResize: boolean;
  /** 4 crops + the full image per input image (class default false; the official checkpoints ship true). */
  doImageSplitting: boolean;
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  imageMean: readonly [number, number, number];
  imageStd: readonly [number, number, number];
  /** PIL resample 2 (BILINEAR, the default) or 3 (BICUBIC). */
  resample: ResampleFilter;
  /** Always honoured in effect: the shared loader yields RGB (alpha dropped, as PIL's convert("RGB")). */
  doConvertRgb: boolean;
  doPad: boolean;
  /** <image> tokens per (sub-)image: processor_config.json's image_seq_len (default 64). */
  imageSeqLen: number;
}

/** Class defaults of Idefics2ImageProcessor / Idefics2Processor (§5, §4.3). */
export const IDEFICS2_DEFAULT_PREPROCESS: Readonly<Idefics2PreprocessOptions> = {
  size: { kind: "edges", longestEdge: 980, shortestEdge: 378 },
  doResize: true,
  doImageSplitting: false,
  doRescale: true,
  rescaleFactor: 1 / 255,
  doNormalize: true,
  imageMean: [0.5, 0.5, 0.5],
  imageStd: [0.5, 0.5, 0.5],
  resample: "bilinear",
  doConvertRgb: true,
  doPad: true,
  imageSeqLen: 64,
};

const PP_FILE = PREPROCESSOR_CONFIG_FILE;

function sizeRule(v: unknown): Idefics2SizeRule {
  if (absent(v)) return IDEFICS2_DEFAULT_PREPROCESS.size;
  if (typeof v !== "object" || Array.isArray(v)) throw badField(PP_FILE, "size", "an object", v);
  const s = v as Record<string, unknown>;
  // Idefics2ImageProcessor.resize accepts these two spellings and rejects anything else.
  if (!absent(s.longest_edge) && !absent(s.shortest_edge)) {
    return {
      kind: "edges",
      longestEdge: positiveInt(PP_FILE, "size.longest_edge", s.longest_edge),
      shortestEdge: positiveInt(PP_FILE, "size.shortest_edge", s.shortest_edge),
    };
  }
  if (!absent(s.height) && !absent(s.width)) {
    return { kind: "fixed", height: positiveInt(PP_FILE, "size.height", s.height), width: positiveInt(PP_FILE, "size.width", s.width) };
  }
  throw badField(PP_FILE, "size", "{longest_edge, shortest_edge} or {height, width}", v);
}

/**
 * Typed Idefics2 preprocessing options from preprocessor_config.json and processor_config.json
 * ({} when absent); absent fields take the class defaults. Malformed values throw bad_request
 * naming the file and field.
 */
export function parseIdefics2Preprocess(
  preprocessorConfig: Readonly<Record<string, unknown>>,
  processorConfig: Readonly<Record<string, unknown>> = {},
): Idefics2PreprocessOptions {
  const d = IDEFICS2_DEFAULT_PREPROCESS;
  // Mean/std/rescale fields share their spelling (and checks) with every transformers processor.
  const norm = normalizeOptionsFromConfig(preprocessorConfig);
  checkRescaleFactor(norm.rescaleFactor);
  const seq = processorConfig.image_seq_len;
  return {
    size: sizeRule(preprocessorConfig.size),
    doResize: flagField(preprocessorConfig, "do_resize", d.doResize),
    doImageSplitting: flagField(preprocessorConfig, "do_image_splitting", d.doImageSplitting),
    doRescale: norm.doRescale ?? d.doRescale,
    rescaleFactor: norm.rescaleFactor ?? d.rescaleFactor,
    doNormalize: norm.doNormalize ?? d.doNormalize,
    imageMean: rgbTriple("image_mean", norm.mean, d.imageMean),
    imageStd: rgbTriple("image_std", norm.std, d.imageStd),
    resample: resampleField(preprocessorConfig.resample, d.resample),
    doConvertRgb: flagField(preprocessorConfig, "do_convert_rgb", d.doConvertRgb),
    doPad: flagField(preprocessorConfig, "do_pad", d.doPad),
    imageSeqLen: absent(seq) ? d.imageSeqLen : positiveInt(PROCESSOR_CONFIG_FILE, "image_seq_len", seq),
  };
}

/**
 * get_resize_output_image_size: the long edge is capped at longest_edge keeping the aspect ratio
 * (float64, int() truncation; note `w / ar` vs `h * ar`), then each edge is floored at
 * shortest_edge on its own (so the aspect ratio is not kept).
 */
export function idefics2ResizeSize(height: number, width: number, size: Idefics2SizeRule): { height: number; width: number } {
  if (size.kind === "fixed") return { height: size.height, width: size.width };
  let h = height;
  let w = width;
  const ar = w / h;
  if (w >= h && w > size.longestEdge) {
    w = size.longestEdge;
    h = Math.trunc(w / ar);
  } else if (h > w && h > size.longestEdge) {
    h = size.longestEdge;
    w = Math.trunc(h * ar);
  }
  return { height: Math.max(h, size.shortestEdge), width: Math.max(w, size.shortestEdge) };
}

/** Where a (sub-)image lies in the decoded image (split_image's slices, or the whole image). */
export interface Idefics2CropRect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/**
 * split_image's regions of a width x height image: the four quadrants (top-left, top-right,
 * bottom-left, bottom-right; the odd row/column goes to the bottom/right) then the full image;
 * without splitting, the full image alone. An image too small to split is a bad_request.
 */
export function idefics2CropRects(width: number, height: number, split: boolean): Idefics2CropRect[] {
  const full = { x: 0, y: 0, width, height };
  if (!split) return [full];
  const mh = Math.floor(height / 2);
  const mw = Math.floor(width / 2);
  if (mh === 0 || mw === 0) {
    throw new WebvlmError("bad_request", `a ${width}x${height} image is too small to split into 4 crops (do_image_splitting)`, { width, height });
  }
  const w2 = width - mw;
  const h2 = height - mh;
  return [
    { x: 0, y: 0, width: mw, height: mh },
    { x: mw, y: 0, width: w2, height: mh },
    { x: 0, y: mh, width: mw, height: h2 },
    { x: mw, y: mh, width: w2, height: h2 },
    full,
  ];
}

/** The size a height x width (sub-)image is processed at: resized per the size rule, or kept. */
export function idefics2TargetSize(height: number, width: number, opts: Idefics2PreprocessOptions): { height: number; width: number } {
  return opts.doResize ? idefics2ResizeSize(height, width, opts.size) : { height, width };
}

/**
 * split_image: on the uint8 image before resizing, the four quadrants (top-left, top-right,
 * bottom-left, bottom-right; the odd row/column goes to the bottom/right) then the full image.
 */
export function splitIdefics2Image(img: Hwc8): Hwc8[] {
  return idefics2CropRects(img.width, img.height, true).map((r, i) => (i === 4 ? img : cropHwc8(img, r)));
}

/** One (sub-)image: resize (Pillow), rescale, normalize -> float32 CHW at its own size. */
export function processIdefics2SubImage(img: Hwc8, opts: Idefics2PreprocessOptions): Chw32 {
  let { data, width, height } = img;
  if (opts.doResize) {
    const size = idefics2TargetSize(height, width, opts);
    data = resize8(data, width, height, size.width, size.height, img.channels, { filter: opts.resample });
    ({ width, height } = size);
  }
  const chw = normalize8ToChw(data, width, height, img.channels, {
    mean: opts.imageMean,
    std: opts.imageStd,
    rescaleFactor: opts.rescaleFactor,
    doRescale: opts.doRescale,
    doNormalize: opts.doNormalize,
  });
  return { data: chw, width, height, channels: img.channels };
}

/**
 * One decoded RGB8 image -> its processed (sub-)images in prompt order: crops 1-4 then the full
 * image when splitting, else the image alone.
 */
export function processIdefics2Image(
  image: { rgb: Uint8Array; width: number; height: number },
  opts: Idefics2PreprocessOptions,
): Chw32[] {
  const hwc: Hwc8 = { data: image.rgb, width: image.width, height: image.height, channels: 3 };
  const parts = opts.doImageSplitting ? splitIdefics2Image(hwc) : [hwc];
  return parts.map((p) => processIdefics2SubImage(p, opts));
}

/** The processor's batch tensors for one request (one sample), as transformers returns them. */
export interface Idefics2PixelBatch {
  /** N (sub-)images, in prompt order. */
  count: number;
  /** Hmax / Wmax over the request's (sub-)images. */
  height: number;
  width: number;
  /** pixel_values [N, 3, Hmax, Wmax], zero-padded bottom/right. */
  pixelValues: Float32Array;
  /** pixel_attention_mask [N, Hmax, Wmax]: 1 on each image's own top-left h x w block. */
  pixelAttentionMask: Uint8Array;
}

/**
 * The pad step (§5.7): every (sub-)image of the request zero-padded to the largest height and
 * width over all of them, with its pixel mask. The GPU path does not need this (see patches.ts):
 * it is the view the reference comparison checks. Pads whatever do_pad says: unpadded
 * (do_pad false) images of different sizes cannot form one tensor in transformers either.
 */
export function padIdefics2Batch(images: readonly Chw32[]): Idefics2PixelBatch {
  if (images.length === 0) throw new WebvlmError("bad_request", "an Idefics2 pixel batch needs at least one image");
  const height = Math.max(...images.map((i) => i.height));
  const width = Math.max(...images.map((i) => i.width));
  const channels = images[0].channels;
  const plane = height * width;
  const pixelValues = new Float32Array(images.length * channels * plane);
  const pixelAttentionMask = new Uint8Array(images.length * plane);
  images.forEach((img, n) => {
    if (img.channels !== channels) throw new WebvlmError("shape_mismatch", `image ${n + 1} has ${img.channels} channels, image 1 has ${channels}`);
    pixelValues.set(padChw32(img, width, height).data, n * channels * plane);
    pixelAttentionMask.set(padMask(img.width, img.height, width, height), n * plane);
  });
  return { count: images.length, height, width, pixelValues, pixelAttentionMask };
}

/** Decoded RGB8 images of one request -> pixel_values / pixel_attention_mask (§5). */
export function idefics2PixelBatch(
  images: readonly { rgb: Uint8Array; width: number; height: number }[],
  opts: Idefics2PreprocessOptions,
): Idefics2PixelBatch {
  return padIdefics2Batch(images.flatMap((img) => processIdefics2Image(img, opts)));
}
