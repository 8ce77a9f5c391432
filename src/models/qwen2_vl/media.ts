// Request media -> the model's pixel_values and grids (Qwen2-VL processor),
// with a content hash per item so the KV cache can be reused across turns.
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { Qwen2VLVisionConfig } from "./config.ts";
import { normalizeOptionsFromConfig, normalizeRgb8ToChw } from "../../vision/normalize.ts";
import { patchify } from "./patchify.ts";
import { preprocessImage, resizeForModel, type PreprocessOptions } from "./image_processor.ts";
import { smartResize } from "./smart_resize.ts";
import { loadImage } from "../../vision/load_image.ts";
import type { MediaRef } from "../family.ts";
import type { PreparedMedia } from "../family.ts";

/** One processed image or video: the family's PreparedMedia, its payload the patch rows and grid. */
export interface Qwen2VLMedia extends PreparedMedia {
  grid: [number, number, number];
  pixelValues: Float32Array;
  payload: { grid: [number, number, number]; pixelValues: Float32Array };
}

function media(kind: "image" | "video", grid: [number, number, number], pixelValues: Float32Array, merge: number): Qwen2VLMedia {
  const tokens = (grid[0] * grid[1] * grid[2]) / (merge * merge);
  return { kind, grid, pixelValues, hash: contentHash([pixelValues]), tokens, payload: { grid, pixelValues } };
}

// qwen_vl_utils' video budgets (in pixels): per frame and for the whole clip.
const VIDEO_MIN_PIXELS = 128 * 28 * 28;
const VIDEO_MAX_PIXELS = 768 * 28 * 28;
const VIDEO_TOTAL_PIXELS = 24576 * 28 * 28;
const FRAME_FACTOR = 2;

/**
 * The checkpoint's preprocessing defaults from its preprocessor_config.json:
 * the smart_resize area bounds and the rescale/normalize constants
 * (image_mean/image_std differ by vision tower: CLIP's, SigLIP's 0.5, ...).
 */
export function checkpointPreprocess(pp: Readonly<Record<string, unknown>>): PreprocessOptions {
  const num = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);
  return { minPixels: num(pp.min_pixels), maxPixels: num(pp.max_pixels), ...normalizeOptionsFromConfig(pp) };
}

function processorOptions(vc: Qwen2VLVisionConfig, defaults: PreprocessOptions, own: PreprocessOptions): PreprocessOptions {
  return {
    patchSize: vc.patchSize,
    mergeSize: vc.spatialMergeSize,
    temporalPatchSize: vc.temporalPatchSize,
    minPixels: own.minPixels ?? defaults.minPixels,
    maxPixels: own.maxPixels ?? defaults.maxPixels,
    resizedHeight: own.resizedHeight,
    resizedWidth: own.resizedWidth,
    // Rescale/normalize are the checkpoint's: a request cannot change them.
    mean: defaults.mean,
    std: defaults.std,
    rescaleFactor: defaults.rescaleFactor,
    doRescale: defaults.doRescale,
    doNormalize: defaults.doNormalize,
  };
}

export async function prepareMedia(
  refs: readonly MediaRef[],
  defaults: PreprocessOptions,
  vc: Qwen2VLVisionConfig,
  signal?: AbortSignal,
): Promise<Qwen2VLMedia[]> {
  const out: Qwen2VLMedia[] = [];
  const merge = vc.spatialMergeSize;
  const counts = { image: 0, video: 0 };
  for (const ref of refs) {
    const label = `${ref.kind} ${++counts[ref.kind]}`; // how errors name the item

    if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
    const opts = processorOptions(vc, defaults, ref.options);
    if (ref.kind === "image") {
      const img = await loadImage(ref.source, signal, { label });
      const p = preprocessImage(img.rgb, img.width, img.height, opts);
      out.push(media("image", p.grid, p.pixelValues, merge));
      continue;
    }
    // A video given as frames (qwen_vl_utils: an even number of frames, the last repeated if
    // needed; one size for all frames from the first frame and the per-frame budget).
    const frames = ref.source as unknown[];
    const n = Math.max(FRAME_FACTOR, Math.round(frames.length / FRAME_FACTOR) * FRAME_FACTOR);
    const decoded = [];
    for (let i = 0; i < n; i++) decoded.push(await loadImage(frames[Math.min(i, frames.length - 1)], signal, { label: `${label} frame ${Math.min(i, frames.length - 1) + 1}` }));
    const first = decoded[0];
    const minPixels = ref.options.minPixels ?? VIDEO_MIN_PIXELS;
    const maxPixels = ref.options.maxPixels ?? Math.max(Math.min(VIDEO_MAX_PIXELS, (VIDEO_TOTAL_PIXELS / n) * FRAME_FACTOR), Math.floor(minPixels * 1.05));
    const size = opts.resizedHeight !== undefined ? null : smartResize(first.height, first.width, { factor: vc.patchSize * merge, minPixels, maxPixels });
    const chw = decoded.map((d) => {
      if (d.width !== first.width || d.height !== first.height) throw new WebvlmError("bad_request", "video frames must all have the same size");
      const r = resizeForModel(d.rgb, d.width, d.height, size ? { ...opts, resizedHeight: size.height, resizedWidth: size.width } : opts);
      return { chw: normalizeRgb8ToChw(r.rgb, r.width, r.height, opts), h: r.height, w: r.width };
    });
    const { pixelValues, grid } = patchify(chw.map((c) => c.chw), chw[0].h, chw[0].w, {
      patchSize: vc.patchSize,
      temporalPatchSize: vc.temporalPatchSize,
      mergeSize: merge,
    });
    out.push(media("video", grid, pixelValues, merge));
  }
  return out;
}
