// Phi3VImageProcessor (the checkpoint's image_processing_phi3_v.py; /work/shared/PHI3V.md §3), step
// by step: the HD transform on the 8-bit image (transpose portrait images, scale to a grid of
// 336-pixel crops bounded by num_crops, Pillow BILINEAR resize, white centred padding of the
// height, transpose back), ToTensor + Normalize in float32, the global view as PyTorch's bicubic
// resize of the normalized HD image to 336x336, and the 336x336 tiles row-major.
import { WebvlmError } from "../../api/errors.ts";
import { padHwc8, type Chw32, type Hwc8 } from "../../vision/canvas.ts";
import { normalize8ToChw, normalizeOptionsFromConfig } from "../../vision/normalize.ts";
import { resize8 } from "../../vision/resize.ts";
import { absent, flagField, PREPROCESSOR_CONFIG_FILE, rgbTriple } from "../common/preprocess_config.ts";
import { resizeTorchBicubicChw } from "../../vision/resize_torch_bicubic.ts";

/** Crop side: CLIP ViT-L/14-336's input, fixed by the remote code. */
export const PHI3V_CROP_SIZE = 336;
/** Merged tokens per crop side: the 24x24 patch grid after the 2x2 merge. */
export const PHI3V_CROP_TOKENS_SIDE = 12;
/**
 * Largest num_crops accepted (from the file or a request): the HD image holds up to num_crops
 * crops of 336x336 (f32: 1.35 MB each, plus as much again as patch rows) and about 150 prompt
 * tokens each. The checkpoints ship 4 or 16.
 */
export const PHI3V_MAX_NUM_CROPS = 64;

/** The checkpoint's preprocessing settings (preprocessor_config.json). */
export interface Phi3VPreprocessOptions {
  /** Most 336x336 crops of the HD image (class default 1; the checkpoints ship 4 or 16). */
  numCrops: number;
  imageMean: readonly [number, number, number];
  imageStd: readonly [number, number, number];
  /**
   * No effect: preprocess() converts to RGB again unconditionally (convert("RGB"), alpha dropped),
   * which the shared loader's RGB output already is.
   */
  doConvertRgb: boolean;
}

/** Class defaults of Phi3VImageProcessor: num_crops 1, OpenAI CLIP mean/std. */
export const PHI3V_DEFAULT_PREPROCESS: Readonly<Phi3VPreprocessOptions> = {
  numCrops: 1,
  imageMean: [0.48145466, 0.4578275, 0.40821073],
  imageStd: [0.26862954, 0.26130258, 0.27577711],
  doConvertRgb: true,
};

const PP_FILE = PREPROCESSOR_CONFIG_FILE;

/** A num_crops value (the file's or a request's): a positive integer up to PHI3V_MAX_NUM_CROPS. */
export function checkNumCrops(v: unknown, where: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
    throw new WebvlmError("bad_request", `${where}: num_crops must be a positive integer, got ${JSON.stringify(v)}`, { field: "num_crops", value: v });
  }
  if (v > PHI3V_MAX_NUM_CROPS) {
    throw new WebvlmError("limit_exceeded", `${where}: num_crops ${v} is over the limit of ${PHI3V_MAX_NUM_CROPS} crops per image`, {
      field: "num_crops", value: v, limit: PHI3V_MAX_NUM_CROPS,
    });
  }
  return v;
}

/**
 * Typed settings from preprocessor_config.json ({} when absent; absent fields take the class
 * defaults). Malformed values throw bad_request naming the file and field.
 */
export function parsePhi3VPreprocess(pp: Readonly<Record<string, unknown>>): Phi3VPreprocessOptions {
  const d = PHI3V_DEFAULT_PREPROCESS;
  const norm = normalizeOptionsFromConfig(pp);
  const doConvertRgb = flagField(pp, "do_convert_rgb", d.doConvertRgb);
  const crops = pp.num_crops;
  return {
    numCrops: absent(crops) ? d.numCrops : checkNumCrops(crops, PP_FILE),
    imageMean: rgbTriple("image_mean", norm.mean, d.imageMean),
    imageStd: rgbTriple("image_std", norm.std, d.imageStd),
    doConvertRgb,
  };
}

/** Sizes of the HD transform of a width x height image (HD_transform + padding_336). */
export interface Phi3VHdGeometry {
  /** Portrait input: the transform runs on the transposed image. */
  transposed: boolean;
  /** Resize target in the (possibly transposed) frame: width scale*336, height int(width / ratio). */
  resizedWidth: number;
  resizedHeight: number;
  /** Rows of white above the resized image (in the transposed frame: columns left of it). */
  padTop: number;
  /** The HD image: image_size = [height, width], both multiples of 336. */
  height: number;
  width: number;
  /** Crop rows / columns: height / 336, width / 336. */
  hc: number;
  wc: number;
  /** Prompt tokens of the image: (hc*wc + 1)*144 + 1 + (hc + 1)*12. */
  numImgTokens: number;
}

/** num_img_tokens of an HD image of hc x wc crops (§3.6): sub grid rows + separators, glb_GN, global rows. */
export function phi3vNumImgTokens(hc: number, wc: number): number {
  const t = PHI3V_CROP_TOKENS_SIDE;
  return (hc * wc + 1) * t * t + 1 + (hc + 1) * t;
}

/** The HD transform's sizes for a width x height image and num_crops (float64 as Python, int() truncation). */
export function phi3vHdGeometry(width: number, height: number, numCrops: number): Phi3VHdGeometry {
  const S = PHI3V_CROP_SIZE;
  const transposed = width < height;
  const [w, h] = transposed ? [height, width] : [width, height];
  const ratio = w / h;
  let scale = 1;
  while (scale * Math.ceil(scale / ratio) <= numCrops) scale++;
  scale--;
  const resizedWidth = scale * S;
  const resizedHeight = Math.trunc(resizedWidth / ratio);
  if (resizedHeight < 1) {
    // PIL refuses a zero-sized resize, so the original fails here too.
    throw new WebvlmError("aspect_ratio_too_large", `a ${width}x${height} image is too elongated for the HD transform: its short side would scale to 0 pixels`, {
      width, height, numCrops,
    });
  }
  const padded = Math.ceil(resizedHeight / S) * S;
  const padTop = Math.floor((padded - resizedHeight) / 2);
  const [H, W] = transposed ? [resizedWidth, padded] : [padded, resizedWidth];
  const hc = H / S;
  const wc = W / S;
  return { transposed, resizedWidth, resizedHeight, padTop, height: H, width: W, hc, wc, numImgTokens: phi3vNumImgTokens(hc, wc) };
}

/** PIL's Image.TRANSPOSE of an interleaved image: pixel (x, y) -> (y, x). */
export function transposeHwc8(img: Hwc8): Hwc8 {
  const { width: w, height: h, channels: c, data } = img;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const from = (y * w + x) * c;
      const to = (x * h + y) * c;
      for (let k = 0; k < c; k++) out[to + k] = data[from + k];
    }
  }
  return { data: out, width: h, height: w, channels: c };
}

/**
 * HD_transform on the 8-bit RGB image: the padded H x W image (still uint8) whose crops the model
 * sees. The resize runs in the transposed frame for portrait images (Pillow's horizontal pass
 * then goes along the original vertical axis, which changes the rounding).
 */
export function phi3vHdImage(img: Hwc8, numCrops: number): { image: Hwc8; geometry: Phi3VHdGeometry } {
  const g = phi3vHdGeometry(img.width, img.height, numCrops);
  let work = g.transposed ? transposeHwc8(img) : img;
  const data = resize8(work.data, work.width, work.height, g.resizedWidth, g.resizedHeight, work.channels, { filter: "bilinear" });
  work = { data, width: g.resizedWidth, height: g.resizedHeight, channels: work.channels };
  const paddedHeight = g.transposed ? g.width : g.height;
  work = padHwc8(work, g.resizedWidth, paddedHeight, { value: 255, position: { left: 0, top: g.padTop } });
  return { image: g.transposed ? transposeHwc8(work) : work, geometry: g };
}

/** One image's processed pixels: the normalized HD image and its global view. */
export interface Phi3VPixels {
  geometry: Phi3VHdGeometry;
  /** The padded HD image before normalization, uint8 RGB (what the float values are a function of). */
  hd8: Hwc8;
  /** The normalized HD image, float32 [3, H, W]; its 336x336 tiles, row-major, are the crops. */
  hd: Chw32;
  /** The global view, float32 [3, 336, 336]: bicubic resize of `hd`. */
  global: Chw32;
}

/** One decoded RGB8 image -> its HD image and global view, as Phi3VImageProcessor.preprocess makes them. */
export function processPhi3VImage(
  image: { rgb: Uint8Array; width: number; height: number },
  opts: Phi3VPreprocessOptions,
  numCrops: number = opts.numCrops,
): Phi3VPixels {
  const { image: hd8, geometry } = phi3vHdImage({ data: image.rgb, width: image.width, height: image.height, channels: 3 }, numCrops);
  // ToTensor's float32 x / 255 equals normalize.ts's float32(x * (1/255)) for every byte: x / 255 is
  // never within 2^-53 (relative) of a float32 rounding boundary, so both round alike.
  const data = normalize8ToChw(hd8.data, hd8.width, hd8.height, 3, { mean: opts.imageMean, std: opts.imageStd });
  const hd: Chw32 = { data, width: hd8.width, height: hd8.height, channels: 3 };
  return { geometry, hd8, hd, global: resizeTorchBicubicChw(hd, PHI3V_CROP_SIZE, PHI3V_CROP_SIZE) };
}
