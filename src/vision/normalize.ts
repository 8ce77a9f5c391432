// Rescale + normalize as transformers' numpy image processors do it, bit for bit
// (BaseImageProcessor.rescale, then .normalize, each only if enabled):
//   rescale:   f32(f64(x) * rescale_factor)      (image_transforms.rescale upcasts, then casts)
//   normalize: f32(f32(v - f32(mean)) / f32(std))  (numpy in float32, mean/std cast to f32)
// With do_rescale off, normalize first casts the uint8 values to float32.
import { WebvlmError } from "../api/errors.ts";

/** OPENAI_CLIP_MEAN / OPENAI_CLIP_STD, the Qwen2-VL preprocessor_config values. */
export const IMAGE_MEAN: readonly [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const IMAGE_STD: readonly [number, number, number] = [0.26862954, 0.26130258, 0.27577711];
/** transformers' default rescale_factor, 1/255 as a Python float. */
export const RESCALE_FACTOR = 1 / 255;

export interface NormalizeOptions {
  /** image_mean: one value per channel, or one value for all (default CLIP's). */
  mean?: readonly number[] | number;
  /** image_std: one value per channel, or one value for all (default CLIP's). */
  std?: readonly number[] | number;
  /** rescale_factor (default 1/255) */
  rescaleFactor?: number;
  /** do_rescale (default true) */
  doRescale?: boolean;
  /** do_normalize (default true) */
  doNormalize?: boolean;
}

function perChannel(name: string, v: readonly number[] | number, channels: number): number[] {
  // transformers repeats a scalar for every channel and requires one value per channel otherwise.
  const arr = typeof v === "number" ? new Array<number>(channels).fill(v) : Array.from(v);
  if (arr.length !== channels) {
    throw new WebvlmError("shape_mismatch", `normalize: ${name} has ${arr.length} values for ${channels} channels`);
  }
  return arr;
}

/**
 * The float32 value of each of the 256 possible inputs, per channel:
 * lut[c * 256 + x]. Every pixel of a channel maps through it.
 */
export function normalizeTable(channels: number, opts: NormalizeOptions = {}): Float32Array {
  const mean = perChannel("image_mean", opts.mean ?? IMAGE_MEAN, channels);
  const std = perChannel("image_std", opts.std ?? IMAGE_STD, channels);
  const scale = opts.rescaleFactor ?? RESCALE_FACTOR;
  const doRescale = opts.doRescale ?? true;
  const doNormalize = opts.doNormalize ?? true;
  const lut = new Float32Array(channels * 256);
  for (let c = 0; c < channels; c++) {
    const m = Math.fround(mean[c]);
    const s = Math.fround(std[c]);
    for (let x = 0; x < 256; x++) {
      let v = doRescale ? Math.fround(x * scale) : x;
      // The store into lut rounds to f32; an f64 division of two f32 values,
      // rounded once to f32, equals numpy's f32 division.
      if (doNormalize) v = Math.fround(v - m) / s;
      lut[c * 256 + x] = v;
    }
  }
  return lut;
}

/**
 * Interleaved 8-bit (HWC, `channels` bands) -> float32 planar CHW, the layout
 * the processors build (data_format = channels_first) before patchifying.
 */
export function normalize8ToChw(
  src: Uint8Array, width: number, height: number, channels: number, opts: NormalizeOptions = {},
): Float32Array {
  const n = width * height;
  if (src.length !== n * channels) {
    throw new WebvlmError("shape_mismatch", `normalize: expected ${n * channels} bytes, got ${src.length}`);
  }
  const lut = normalizeTable(channels, opts);
  const out = new Float32Array(n * channels);
  if (channels === 3) {
    for (let i = 0, p = 0; i < n; i++, p += 3) {
      out[i] = lut[src[p]];
      out[n + i] = lut[256 + src[p + 1]];
      out[2 * n + i] = lut[512 + src[p + 2]];
    }
    return out;
  }
  for (let c = 0; c < channels; c++) {
    const plane = c * n;
    const base = c * 256;
    for (let i = 0, p = c; i < n; i++, p += channels) out[plane + i] = lut[base + src[p]];
  }
  return out;
}

/** RGB8 interleaved (HWC) -> float32 planar CHW. */
export function normalizeRgb8ToChw(
  rgb: Uint8Array, width: number, height: number, opts: NormalizeOptions = {},
): Float32Array {
  return normalize8ToChw(rgb, width, height, 3, opts);
}

const badConfig = (msg: string): WebvlmError => new WebvlmError("bad_request", `preprocessor_config.json: ${msg}`);

function meanStd(name: string, v: unknown): readonly number[] | number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "number" && Number.isFinite(v)) return v;
  if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "number" && Number.isFinite(x))) {
    return v as number[];
  }
  throw badConfig(`${name} must be a number or a list of numbers, got ${JSON.stringify(v)}`);
}

function flag(name: string, v: unknown): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "boolean") return v;
  throw badConfig(`${name} must be true or false, got ${JSON.stringify(v)}`);
}

/**
 * The rescale/normalize fields of a checkpoint's preprocessor_config.json
 * (image_mean, image_std, rescale_factor, do_rescale, do_normalize); a field
 * that is absent keeps the default.
 */
export function normalizeOptionsFromConfig(pp: Readonly<Record<string, unknown>>): NormalizeOptions {
  const out: NormalizeOptions = {};
  const mean = meanStd("image_mean", pp.image_mean);
  const std = meanStd("image_std", pp.image_std);
  if (std !== undefined && (typeof std === "number" ? [std] : std).some((s) => s === 0)) {
    throw badConfig("image_std must not be 0");
  }
  const rf = pp.rescale_factor;
  if (rf !== undefined && rf !== null && (typeof rf !== "number" || !Number.isFinite(rf))) {
    throw badConfig(`rescale_factor must be a number, got ${JSON.stringify(rf)}`);
  }
  if (mean !== undefined) out.mean = mean;
  if (std !== undefined) out.std = std;
  if (typeof rf === "number") out.rescaleFactor = rf;
  const doRescale = flag("do_rescale", pp.do_rescale);
  const doNormalize = flag("do_normalize", pp.do_normalize);
  if (doRescale !== undefined) out.doRescale = doRescale;
  if (doNormalize !== undefined) out.doNormalize = doNormalize;
  return out;
}
