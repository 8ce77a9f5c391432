// Request media -> the model's pixel_values and grids (Qwen2-VL processor),
// with a content hash per item so the KV cache can be reused across turns.
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { Qwen2VLVisionConfig } from "./config.ts";
import { normalizeOptionsFromConfig, normalizeRgb8ToChw } from "../../vision/normalize.ts";
import { patchify } from "./patchify.ts";
import { preprocessImage, resizeForModel, targetSize, type PreprocessOptions } from "./image_processor.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { imagePatches } from "../../ops/image_patches.ts";
import { resizeImage } from "../../ops/image_resample.ts";
import { releaseImage, type GpuImage } from "../../vision/gpu_image.ts";
import { releaseMedia, type GpuPreprocessor } from "../../vision/gpu_preprocess.ts";
import { smartResize, type ResizedSize } from "./smart_resize.ts";
import { loadImage } from "../../vision/load_image.ts";
import type { MediaRef } from "../family.ts";
import type { PreparedMedia } from "../family.ts";

/** The payload of one processed image or video: its patch rows (on the CPU or the GPU) and grid. */
export interface Qwen2VLPayload {
  grid: [number, number, number];
  /** [t*h*w, C*T*P*P] patch rows: host values (CPU path) or a GPU tensor (GPU path). */
  pixelValues: Float32Array | Tensor;
}

/** One processed image or video: the family's PreparedMedia with its payload typed. */
export interface Qwen2VLMedia extends PreparedMedia {
  payload: Qwen2VLPayload;
}

const tokensOf = (grid: readonly number[], merge: number): number => (grid[0] * grid[1] * grid[2]) / (merge * merge);

function media(kind: "image" | "video", grid: [number, number, number], pixelValues: Float32Array, merge: number): Qwen2VLMedia {
  return { kind, hash: contentHash([pixelValues]), tokens: tokensOf(grid, merge), payload: { grid, pixelValues }, device: "cpu" };
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

/** The frames of a video part, padded to an even count (qwen_vl_utils), and the size they are resized to. */
function videoPlan(ref: MediaRef, vc: Qwen2VLVisionConfig): { sources: unknown[]; count: number; size: (w: number, h: number) => ResizedSize | null } {
  const frames = ref.source as unknown[];
  const n = Math.max(FRAME_FACTOR, Math.round(frames.length / FRAME_FACTOR) * FRAME_FACTOR);
  const minPixels = ref.options.minPixels ?? VIDEO_MIN_PIXELS;
  const maxPixels = ref.options.maxPixels ?? Math.max(Math.min(VIDEO_MAX_PIXELS, (VIDEO_TOTAL_PIXELS / n) * FRAME_FACTOR), Math.floor(minPixels * 1.05));
  const size = (w: number, h: number): ResizedSize | null =>
    ref.options.resizedHeight !== undefined ? null : smartResize(h, w, { factor: vc.patchSize * vc.spatialMergeSize, minPixels, maxPixels });
  return { sources: Array.from({ length: n }, (_, i) => frames[Math.min(i, frames.length - 1)]), count: frames.length, size };
}

async function prepareCpu(ref: MediaRef, opts: PreprocessOptions, vc: Qwen2VLVisionConfig, label: string, signal?: AbortSignal): Promise<Qwen2VLMedia> {
  const merge = vc.spatialMergeSize;
  if (ref.kind === "image") {
    const img = await loadImage(ref.source, signal, { label });
    const p = preprocessImage(img.rgb, img.width, img.height, opts);
    return media("image", p.grid, p.pixelValues, merge);
  }
  // A video given as frames: one size for all frames from the first frame and the per-frame budget.
  const plan = videoPlan(ref, vc);
  const decoded = [];
  for (const [i, src] of plan.sources.entries()) decoded.push(await loadImage(src, signal, { label: `${label} frame ${Math.min(i, plan.count - 1) + 1}` }));
  const first = decoded[0];
  const size = plan.size(first.width, first.height);
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
  return media("video", grid, pixelValues, merge);
}

/**
 * The same item on the GPU: each frame decoded to the GPU, resized by image_resample.wgsl and
 * cut into temporal pairs of patch rows by image_patches.wgsl, bit-identical to prepareCpu.
 * Null when the device cannot hold it (the caller takes the CPU path).
 */
async function prepareGpu(
  gp: GpuPreprocessor, ref: MediaRef, opts: PreprocessOptions, vc: Qwen2VLVisionConfig, label: string, signal?: AbortSignal,
): Promise<Qwen2VLMedia | null> {
  const tps = vc.temporalPatchSize;
  if (tps < 1 || tps > 2 || vc.inChannels !== 3) return null; // the kernel reads one or two frames of RGB
  const ctx = gp.ctx;
  const plan = ref.kind === "video" ? videoPlan(ref, vc) : { sources: [ref.source], count: 1, size: () => null };
  const frames: GpuImage[] = [];
  let pixels: Tensor | null = null;
  try {
    let size: ResizedSize | null = null;
    let first: { width: number; height: number } | null = null;
    for (const [i, src] of plan.sources.entries()) {
      const img = await gp.loadImage(src, signal, { label: ref.kind === "video" ? `${label} frame ${Math.min(i, plan.count - 1) + 1}` : label });
      first ??= { width: img.width, height: img.height };
      if (img.width !== first.width || img.height !== first.height) {
        releaseImage(ctx, img);
        throw new WebvlmError("bad_request", "video frames must all have the same size");
      }
      if (!size) {
        const s = plan.size(img.width, img.height);
        size = targetSize(img.width, img.height, s ? { ...opts, resizedHeight: s.height, resizedWidth: s.width } : opts);
      }
      if (!gp.fits(size.width * size.height * 4, (size.width * size.height * 3 * tps * Math.ceil(plan.sources.length / tps)) * 4)) {
        releaseImage(ctx, img);
        return null;
      }
      const rec = new Recorder(ctx);
      const resized = resizeImage(rec, img, size.width, size.height, { filter: "bicubic" });
      rec.submit();
      releaseImage(ctx, img);
      frames.push(resized);
    }
    const s = size as ResizedSize;
    const ps = vc.patchSize;
    while (frames.length % tps !== 0) frames.push(frames[frames.length - 1]);
    const grid: [number, number, number] = [frames.length / tps, s.height / ps, s.width / ps];
    const perT = grid[1] * grid[2];
    pixels = allocTensor(ctx, [grid[0] * perT, 3 * tps * ps * ps], "f32", "qwen2_vl.pixel_values");
    const rec = new Recorder(ctx);
    const table = gp.normalizeTable(opts);
    for (let t = 0; t < grid[0]; t++) {
      // A still image is its own temporal pair: the same frame twice.
      const pair = tps === 1 ? [frames[t]] : [frames[t * 2], frames[t * 2 + 1]];
      imagePatches(rec, pair, table, { patchSize: ps, gridW: grid[2], gridH: grid[1], mergeSize: vc.spatialMergeSize }, { out: pixels, rowOffset: t * perT });
    }
    rec.submit();
    const item = await gp.media(ref.kind, tokensOf(grid, vc.spatialMergeSize), [pixels], { grid, pixelValues: pixels } satisfies Qwen2VLPayload);
    pixels = null;
    return item as Qwen2VLMedia;
  } finally {
    for (const f of new Set(frames)) releaseImage(ctx, f);
    if (pixels) ctx.pool.release(pixels.buffer);
  }
}

/**
 * Every media part of a request, in order: on the GPU when `gpu` is given (falling back to the
 * CPU per item that does not fit the device), else on the CPU.
 */
export async function prepareMedia(
  refs: readonly MediaRef[],
  defaults: PreprocessOptions,
  vc: Qwen2VLVisionConfig,
  signal?: AbortSignal,
  gpu?: GpuPreprocessor,
): Promise<Qwen2VLMedia[]> {
  const out: Qwen2VLMedia[] = [];
  const counts = { image: 0, video: 0 };
  try {
    for (const ref of refs) {
      const label = `${ref.kind} ${++counts[ref.kind]}`; // how errors name the item
      if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
      const opts = processorOptions(vc, defaults, ref.options);
      out.push((gpu && (await prepareGpu(gpu, ref, opts, vc, label, signal))) || (await prepareCpu(ref, opts, vc, label, signal)));
    }
  } catch (e) {
    releaseMedia(out);
    throw e;
  }
  return out;
}
