// Request media -> the model's pixel_values and grids (Qwen2-VL processor),
// with a content hash per item so the KV cache can be reused across turns.
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { Qwen2VLVisionConfig } from "./config.ts";
import { normalizeOptionsFromConfig, normalizeRgb8ToChw } from "../../vision/normalize.ts";
import { patchify } from "./patchify.ts";
import { preprocessImage, targetSize, type PreprocessOptions } from "./image_processor.ts";
import { resizeRgb8 } from "../../vision/resize.ts";
import { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { imagePatches } from "../../ops/image_patches.ts";
import { resizeImage } from "../../ops/image_resample.ts";
import { releaseImage, type GpuImage } from "../../vision/gpu_image.ts";
import { releaseMedia, type GpuPreprocessor } from "../../vision/gpu_preprocess.ts";
import { requestedResize, smartResize, type ResizedSize } from "./smart_resize.ts";
import { loadImage } from "../../vision/load_image.ts";
import { openVideo } from "../../vision/video_browser.ts";
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

// qwen_vl_utils (0.0.8, the Qwen2-VL release) pads a frame list to a multiple of FRAME_FACTOR.
// Its video budgets (128..768 x 28 x 28 per frame, 24576 x 28 x 28 in all) apply to video files
// only: a frame list goes frame by frame through fetch_image, with the image budgets.
const FRAME_FACTOR = 2;
const FETCH_MIN_PIXELS = 4 * 28 * 28;
const FETCH_MAX_PIXELS = 16384 * 28 * 28;

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

/**
 * How a video given as a list of frames is sized, as qwen_vl_utils 0.0.8 and the processor do it:
 * each frame is resized (Pillow BICUBIC) by fetch_image to its own size — smart_resize of the
 * frame's size with the part's min_pixels/max_pixels (default 4..16384 x 28 x 28), or the part's
 * resized_height/resized_width rounded to 28 — and the list is padded to an even count by
 * repeating the last frame; then Qwen2VLImageProcessor resizes every frame to smart_resize of the
 * FIRST frame's size under the checkpoint's min/max pixels (a no-op when they agree).
 */
interface FramePlan {
  /** The frame sources, without padding (a video file's: its sampled frames, decoded one by one). */
  sources: Iterable<unknown> | AsyncIterable<unknown>;
  /** Called once a source has been read (a video file's frames are closed). */
  done?(source: unknown): void;
  /** Frames after padding. */
  count: number;
  /** fetch_image's size for a frame of width x height. */
  fetchSize(width: number, height: number): ResizedSize;
  /** The processor's size for every frame, from the first frame's fetched size. */
  finalSize(first: ResizedSize): ResizedSize;
}

function framePlan(ref: MediaRef, defaults: PreprocessOptions, vc: Qwen2VLVisionConfig): FramePlan {
  const sources = ref.source as unknown[];
  const factor = vc.patchSize * vc.spatialMergeSize;
  const own = ref.options;
  return {
    sources,
    count: Math.ceil(sources.length / FRAME_FACTOR) * FRAME_FACTOR,
    fetchSize: (width, height) =>
      own.resizedHeight !== undefined && own.resizedWidth !== undefined
        ? requestedResize(own.resizedHeight, own.resizedWidth, { factor })
        : requestedResize(height, width, { factor, minPixels: own.minPixels ?? FETCH_MIN_PIXELS, maxPixels: own.maxPixels ?? FETCH_MAX_PIXELS }),
    finalSize: (first) => smartResize(first.height, first.width, { factor, minPixels: defaults.minPixels, maxPixels: defaults.maxPixels }),
  };
}

/**
 * A video FILE (browser only: WebCodecs), sampled as qwen_vl_utils' fetch_video does
 * (src/vision/video_sampling.ts): nframes from fps (default 2) / nframes / min_frames / max_frames,
 * frames at linspace(0, total - 1, nframes), all resized to smart_resize of the video's size under
 * the per-frame budget from min_pixels / max_pixels / total_pixels (or resized_height/width); then,
 * as for frame lists, the processor's resize to smart_resize of that size with the checkpoint's bounds.
 * fetch_video resizes with torchvision's BICUBIC (antialias) on a tensor, not Pillow's: both resizes
 * here are the Pillow-exact bicubic (CPU and GPU alike), so pixels differ slightly from the Python
 * reference (decoded frames differ by decoder anyway). Node: unsupported_feature (openVideo).
 */
async function videoFilePlan(ref: MediaRef, defaults: PreprocessOptions, vc: Qwen2VLVisionConfig, label: string, signal?: AbortSignal): Promise<FramePlan> {
  const factor = vc.patchSize * vc.spatialMergeSize;
  const own = ref.options;
  const video = await openVideo(ref.source, { ...own, onProgress: own.onVideoProgress, label, factor }, signal);
  const size = video.plan.size;
  async function* bitmaps(): AsyncGenerator<ImageBitmap> {
    for await (const f of video.frames(signal)) yield f.bitmap;
  }
  return {
    sources: bitmaps(),
    done: (src) => (src as ImageBitmap).close(),
    count: video.plan.nframes,
    fetchSize: () => size,
    finalSize: (first) => smartResize(first.height, first.width, { factor, minPixels: defaults.minPixels, maxPixels: defaults.maxPixels }),
  };
}

/** The plan of a video part: a frame list's, or a video file's. */
async function videoPlan(ref: MediaRef, defaults: PreprocessOptions, vc: Qwen2VLVisionConfig, label: string, signal?: AbortSignal): Promise<FramePlan> {
  return Array.isArray(ref.source) ? framePlan(ref, defaults, vc) : videoFilePlan(ref, defaults, vc, label, signal);
}

async function prepareCpu(
  ref: MediaRef, opts: PreprocessOptions, defaults: PreprocessOptions, vc: Qwen2VLVisionConfig, label: string, signal?: AbortSignal,
): Promise<Qwen2VLMedia> {
  const merge = vc.spatialMergeSize;
  if (ref.kind === "image") {
    const img = await loadImage(ref.source, signal, { label });
    const p = preprocessImage(img.rgb, img.width, img.height, opts);
    return media("image", p.grid, p.pixelValues, merge);
  }
  // A video given as frames (framePlan): each frame fetched at its own size, then all at the first's.
  // A video file (videoFilePlan): its sampled frames, all fetched at the video's size.
  const plan = await videoPlan(ref, defaults, vc, label, signal);
  const chw: Float32Array[] = [];
  let final: ResizedSize | null = null;
  let i = 0;
  for await (const src of plan.sources) {
    let d;
    try {
      d = await loadImage(src, signal, { label: `${label} frame ${++i}` });
    } finally {
      plan.done?.(src);
    }
    const fetched = plan.fetchSize(d.width, d.height);
    final ??= plan.finalSize(fetched);
    const once = resizeRgb8(d.rgb, d.width, d.height, fetched.width, fetched.height);
    const twice = resizeRgb8(once, fetched.width, fetched.height, final.width, final.height);
    chw.push(normalizeRgb8ToChw(twice, final.width, final.height, opts));
  }
  while (chw.length < plan.count) chw.push(chw[chw.length - 1]);
  const f = final as ResizedSize;
  const { pixelValues, grid } = patchify(chw, f.height, f.width, {
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
  gp: GpuPreprocessor, ref: MediaRef, opts: PreprocessOptions, defaults: PreprocessOptions, vc: Qwen2VLVisionConfig, label: string, signal?: AbortSignal,
): Promise<Qwen2VLMedia | null> {
  const tps = vc.temporalPatchSize;
  if (tps < 1 || tps > 2 || vc.inChannels !== 3) return null; // the kernel reads one or two frames of RGB
  const ctx = gp.ctx;
  const plan = ref.kind === "video" ? await videoPlan(ref, defaults, vc, label, signal) : null;
  const sources = plan ? plan.sources : [ref.source];
  const count = plan ? plan.count : 1;
  const frames: GpuImage[] = [];
  let pixels: Tensor | null = null;
  try {
    let final: ResizedSize | null = null;
    let i = 0;
    for await (const src of sources) {
      let img: GpuImage;
      try {
        img = await gp.loadImage(src, signal, { label: plan ? `${label} frame ${++i}` : label });
      } finally {
        plan?.done?.(src);
      }
      // An image: one resize (targetSize). A frame: fetch_image's resize, then the processor's.
      const fetched = plan ? plan.fetchSize(img.width, img.height) : targetSize(img.width, img.height, opts);
      final ??= plan ? plan.finalSize(fetched) : fetched;
      const pixelBytes = final.width * final.height * 3 * tps * Math.ceil(count / tps) * 4;
      if (!gp.fits(img.rowBytes * img.height, fetched.width * fetched.height * 4, final.width * final.height * 4, pixelBytes)) {
        releaseImage(ctx, img);
        return null;
      }
      const rec = new Recorder(ctx);
      let resized = resizeImage(rec, img, fetched.width, fetched.height, { filter: "bicubic" });
      if (fetched.width !== final.width || fetched.height !== final.height) {
        const again = resizeImage(rec, resized, final.width, final.height, { filter: "bicubic" });
        ctx.pool.release(resized.buffer); // recorded: the pass that reads it runs first
        resized = again;
      }
      rec.submit();
      releaseImage(ctx, img);
      frames.push(resized);
    }
    const s = final as ResizedSize;
    const ps = vc.patchSize;
    // Padding to the frame count (qwen_vl_utils), then to the temporal patch (the processor): the last frame again.
    while (frames.length < count || frames.length % tps !== 0) frames.push(frames[frames.length - 1]);
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
      out.push((gpu && (await prepareGpu(gpu, ref, opts, defaults, vc, label, signal))) || (await prepareCpu(ref, opts, defaults, vc, label, signal)));
    }
  } catch (e) {
    releaseMedia(out);
    throw e;
  }
  return out;
}
