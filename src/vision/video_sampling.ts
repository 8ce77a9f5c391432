// How a video FILE is sampled and sized, as qwen_vl_utils (the Qwen2-VL release,
// QwenLM/Qwen2-VL qwen-vl-utils/src/qwen_vl_utils/vision_process.py, fetch_video's
// video-file branch) does it. Pure functions: no decoding here (see video_browser.ts).
//
//   nframes = round_by_factor(nframes, 2)                         when the part gives nframes
//           = round_by_factor(clamp(total / video_fps * fps,      else (fps default 2)
//                   ceil_by_factor(min_frames ?? 4, 2),
//                   floor_by_factor(max_frames ?? min(768, total), 2)), 2)
//   2 <= nframes <= total, else an error (qwen_vl_utils: ValueError)
//   indices = torch.linspace(0, total - 1, nframes).round()      (float32, ties to even)
//   per-frame budget: min_pixels ?? 128*28*28;
//                     max_pixels ?? max(min(768*28*28, (total_pixels ?? 24576*28*28) / nframes * 2), int(min_pixels * 1.05))
//   size: qwen_vl_utils smart_resize(resized_height, resized_width) when both are given,
//         else smart_resize(h, w, 28, min_pixels, max_pixels)
//
// "total" counts the frames the decoder yields between video_start and video_end (torchvision's
// read_video(start_pts, end_pts) does the same); video_fps is the stream's average frame rate.
import { WebvlmError } from "../api/errors.ts";
import { pyRound, requestedResize, type ResizedSize } from "./smart_resize.ts";

export const VIDEO_MIN_PIXELS = 128 * 28 * 28;
export const VIDEO_MAX_PIXELS = 768 * 28 * 28;
export const VIDEO_TOTAL_PIXELS = 24576 * 28 * 28;
export const FRAME_FACTOR = 2;
export const FPS = 2.0;
export const FPS_MIN_FRAMES = 4;
export const FPS_MAX_FRAMES = 768;

/** A video part's sampling and sizing options (the part's snake_case fields, camelCased). */
export interface VideoSamplingOptions {
  fps?: number;
  nframes?: number;
  minFrames?: number;
  maxFrames?: number;
  minPixels?: number;
  maxPixels?: number;
  totalPixels?: number;
  resizedHeight?: number;
  resizedWidth?: number;
}

const roundByFactor = (n: number, f: number): number => pyRound(n / f) * f;
const ceilByFactor = (n: number, f: number): number => Math.ceil(n / f) * f;
const floorByFactor = (n: number, f: number): number => Math.floor(n / f) * f;

/** How many frames fetch_video takes from `totalFrames` frames at `videoFps`. Throws bad_request outside [2, totalFrames]. */
export function sampleFrameCount(totalFrames: number, videoFps: number, o: VideoSamplingOptions = {}): number {
  if (o.fps !== undefined && o.nframes !== undefined) {
    throw new WebvlmError("bad_request", "a video part takes either fps or nframes, not both", { param: "nframes" });
  }
  let nframes: number;
  if (o.nframes !== undefined) {
    nframes = roundByFactor(o.nframes, FRAME_FACTOR);
  } else {
    const fps = o.fps ?? FPS;
    const minFrames = ceilByFactor(o.minFrames ?? FPS_MIN_FRAMES, FRAME_FACTOR);
    const maxFrames = floorByFactor(o.maxFrames ?? Math.min(FPS_MAX_FRAMES, totalFrames), FRAME_FACTOR);
    if (!(videoFps > 0) || !Number.isFinite(videoFps)) {
      throw new WebvlmError("bad_request", `the video's frame rate is unknown (${videoFps}): give nframes instead of fps`, { param: "nframes" });
    }
    nframes = (totalFrames / videoFps) * fps;
    nframes = Math.min(Math.max(nframes, minFrames), maxFrames);
    nframes = roundByFactor(nframes, FRAME_FACTOR);
  }
  if (!(FRAME_FACTOR <= nframes && nframes <= totalFrames)) {
    throw new WebvlmError("bad_request", `nframes should be in the interval [${FRAME_FACTOR}, ${totalFrames}] (the video's frames), but got ${nframes}`, {
      param: "nframes", nframes, totalFrames,
    });
  }
  return nframes;
}

/**
 * torch.linspace(0, total - 1, n).round() in float32 (the default dtype), as torch's CPU kernel
 * computes it: start + step*i for the first half, end - step*(n-1-i) for the second, then round
 * half to even. (The vectorized kernel may differ in the last float32 bit for very long videos.)
 */
export function sampleFrameIndices(totalFrames: number, nframes: number): number[] {
  const f = Math.fround;
  const end = f(totalFrames - 1);
  if (nframes === 1) return [0];
  const step = f(end / f(nframes - 1));
  const half = Math.floor(nframes / 2);
  const out: number[] = [];
  for (let i = 0; i < nframes; i++) {
    const v = i < half ? f(step * i) : f(end - f(step * (nframes - 1 - i)));
    out.push(pyRound(v));
  }
  return out;
}

/** fetch_video's per-frame pixel bounds for `nframes` frames. */
export function videoFrameBudget(nframes: number, o: VideoSamplingOptions = {}): { minPixels: number; maxPixels: number } {
  const minPixels = o.minPixels ?? VIDEO_MIN_PIXELS;
  const totalPixels = o.totalPixels ?? VIDEO_TOTAL_PIXELS;
  const derived = Math.max(Math.min(VIDEO_MAX_PIXELS, (totalPixels / nframes) * FRAME_FACTOR), Math.trunc(minPixels * 1.05));
  return { minPixels, maxPixels: o.maxPixels ?? derived };
}

/** fetch_video's size for the sampled frames of a `width` x `height` video (qwen_vl_utils smart_resize). */
export function videoFrameSize(height: number, width: number, nframes: number, o: VideoSamplingOptions = {}, factor = 28): ResizedSize {
  if (o.resizedHeight !== undefined && o.resizedWidth !== undefined) return requestedResize(o.resizedHeight, o.resizedWidth, { factor });
  const { minPixels, maxPixels } = videoFrameBudget(nframes, o);
  return requestedResize(height, width, { factor, minPixels, maxPixels });
}

/** Everything fetch_video decides for one video file, before any pixel is decoded. */
export interface VideoSamplingPlan {
  totalFrames: number;
  videoFps: number;
  nframes: number;
  /** Indices into the video's frames (presentation order, after video_start/video_end), one per sampled frame. */
  indices: number[];
  minPixels: number;
  maxPixels: number;
  /** fetch_video's resize target (before the processor's own smart_resize with the checkpoint's bounds). */
  size: ResizedSize;
}

export function planVideoSampling(totalFrames: number, videoFps: number, height: number, width: number, o: VideoSamplingOptions = {}, factor = 28): VideoSamplingPlan {
  const nframes = sampleFrameCount(totalFrames, videoFps, o);
  const indices = sampleFrameIndices(totalFrames, nframes);
  const budget = videoFrameBudget(nframes, o);
  return { totalFrames, videoFps, nframes, indices, ...budget, size: videoFrameSize(height, width, nframes, o, factor) };
}
