// A video FILE (MP4/MOV, WebM/MKV, ... : what mediabunny demuxes) in the browser: the frames
// qwen_vl_utils' fetch_video would take (video_sampling.ts), decoded with WebCodecs.
//
// Demuxing: mediabunny (pure TypeScript, no eval / new Function, loaded with a dynamic import so
// pages without video never fetch it). Decoding: its VideoSampleSink over the browser's
// VideoDecoder, asked only for the sampled timestamps (each packet decoded at most once).
// Frames come out one at a time as ImageBitmaps (the caller closes them), so a long video never
// holds more than one decoded frame; the signal is checked and progress reported between frames.
//
// webvlm does not apply a track's rotation metadata itself (torchvision's read_video, which
// qwen_vl_utils uses, does not either); rotated phone videos are untested. Containers mediabunny cannot demux (AVI,
// Ogg, ...) are an image_decode_failed error: no <video>-element seeking fallback yet.
//
// Node has no WebCodecs: a video file there is an unsupported_feature error (give frames instead).
// No pure-JS H.264/VP8/VP9/AV1 decoder on npm is well kept and fast enough to serve here.
import { WebvlmError } from "../api/errors.ts";
import { planVideoSampling, type VideoSamplingOptions, type VideoSamplingPlan } from "./video_sampling.ts";

export interface VideoFileOptions extends VideoSamplingOptions {
  /** Seconds to read from / up to (torchvision read_video's start_pts / end_pts, inclusive). */
  videoStart?: number;
  videoEnd?: number;
  /** After each decoded frame: (decoded, total). */
  onProgress?: (decoded: number, total: number) => void;
  /** How errors name the video ("video 1"). */
  label?: string;
  /** smart_resize factor (patch_size * merge_size); default 28. */
  factor?: number;
}

export interface SampledVideoFrame {
  /** Index among the video's frames (presentation order, within video_start..video_end). */
  index: number;
  /** Presentation timestamp in seconds. */
  timestamp: number;
  /** The decoded frame at its display size; the consumer closes it. */
  bitmap: ImageBitmap;
}

export interface OpenedVideo {
  plan: VideoSamplingPlan;
  /** Display size of the video track. */
  width: number;
  height: number;
  /** Presentation timestamps (seconds) of every frame counted by the plan. */
  timestamps: number[];
  /** The codec mediabunny names ("avc", "vp8", "vp9", "av1", "hevc", ...). */
  codec: string | null;
  /** Decodes the sampled frames in order; stops (and frees the input) at the end, on an error or on abort. */
  frames(signal?: AbortSignal): AsyncGenerator<SampledVideoFrame>;
  /** Frees the input (frames() does it when it finishes). */
  close(): void;
}

export const hasWebCodecs = (): boolean => typeof VideoDecoder !== "undefined" && typeof createImageBitmap !== "undefined";

function aborted(label: string): WebvlmError {
  return new WebvlmError("aborted", `the request was aborted while decoding ${label}`, { video: label });
}

type Mediabunny = typeof import("mediabunny");

/** The mediabunny Source for a URL, Blob/File, bytes or <video> element. */
async function toSource(mb: Mediabunny, source: unknown, label: string, signal?: AbortSignal): Promise<InstanceType<Mediabunny["Source"]>> {
  if (typeof HTMLVideoElement !== "undefined" && source instanceof HTMLVideoElement) {
    const src = source.currentSrc || source.src;
    if (!src) {
      throw new WebvlmError("unsupported_feature", `${label} is a <video> element without a src (a MediaStream cannot be sampled as a file): give its frames as a list`, { video: label });
    }
    source = src;
  }
  if (typeof source === "string") {
    const url = new URL(source, globalThis.location?.href).href;
    // Whole-file read (blob:/data: URLs and servers without Range all work); the bytes stay in memory.
    let res: Response;
    try {
      res = await fetch(url, { signal });
    } catch (e) {
      if (signal?.aborted) throw aborted(label);
      throw new WebvlmError("download_failed", `${label}: could not fetch ${url.slice(0, 200)}: ${(e as Error).message}`, { video: label });
    }
    if (!res.ok) throw new WebvlmError("download_failed", `${label}: HTTP ${res.status} for ${url.slice(0, 200)}`, { video: label, status: res.status });
    return new mb.BlobSource(await res.blob());
  }
  if (typeof Blob !== "undefined" && source instanceof Blob) return new mb.BlobSource(source);
  if (source instanceof ArrayBuffer) return new mb.BufferSource(source);
  if (ArrayBuffer.isView(source)) return new mb.BufferSource(new Uint8Array(source.buffer, source.byteOffset, source.byteLength).slice().buffer);
  throw new WebvlmError("bad_request", `${label}: unsupported video source: give a URL, a Blob/File, bytes, a <video> element, or a list of frames`, { video: label });
}

/**
 * Opens a video file and plans its sampling (qwen_vl_utils fetch_video's rules): counts its frames
 * (packet timestamps, no decoding) within video_start..video_end, reads its frame rate, and picks
 * the frame indices and the per-frame size. Decoding happens in `frames()`.
 */
export async function openVideo(source: unknown, opts: VideoFileOptions = {}, signal?: AbortSignal): Promise<OpenedVideo> {
  const label = opts.label ?? "video";
  if (!hasWebCodecs()) {
    throw new WebvlmError(
      "unsupported_feature",
      `${label} is a video file: decoding video files needs a browser with WebCodecs (VideoDecoder); in Node give the video as a list of frames`,
      { video: label },
    );
  }
  if (signal?.aborted) throw aborted(label);
  const mb = await import("mediabunny");
  const input = new mb.Input({ source: await toSource(mb, source, label, signal), formats: mb.ALL_FORMATS });
  let handedOver = false;
  try {
    let track: Awaited<ReturnType<typeof input.getPrimaryVideoTrack>>;
    try {
      track = await input.getPrimaryVideoTrack();
    } catch (e) {
      throw new WebvlmError("image_decode_failed", `${label} is not a video file mediabunny can read (MP4/MOV, WebM/MKV, ...): ${(e as Error).message}`, { video: label });
    }
    if (!track) throw new WebvlmError("image_decode_failed", `${label} has no video track`, { video: label });
    if (!(await track.canDecode())) {
      const codec = (await track.getCodecParameterString()) ?? track.codec ?? "unknown";
      throw new WebvlmError("unsupported_feature", `${label}: this browser's WebCodecs cannot decode its codec ${codec}`, { video: label, codec });
    }
    // Every frame's presentation timestamp (packet metadata only), in presentation order.
    const all: number[] = [];
    const packets = new mb.EncodedPacketSink(track);
    for await (const p of packets.packets(undefined, undefined, { metadataOnly: true })) {
      all.push(p.timestamp);
      if (signal?.aborted) throw aborted(label);
    }
    all.sort((a, b) => a - b);
    const start = opts.videoStart ?? -Infinity;
    const end = opts.videoEnd ?? Infinity;
    const timestamps = all.filter((t) => t >= start && t <= end);
    // torchvision's info["video_fps"] is the stream's average frame rate.
    const stats = await track.computePacketStats();
    const width = track.displayWidth;
    const height = track.displayHeight;
    const plan = planVideoSampling(timestamps.length, stats.averagePacketRate, height, width, opts, opts.factor ?? 28);
    let closed = false;
    const close = (): void => {
      if (!closed) input.dispose();
      closed = true;
    };
    handedOver = true;
    return {
      plan, width, height, timestamps, codec: track.codec, close,
      async *frames(sig?: AbortSignal): AsyncGenerator<SampledVideoFrame> {
        const sink = new mb.VideoSampleSink(track);
        const wanted = plan.indices.map((i) => timestamps[i]);
        const it = sink.samplesAtTimestamps(wanted);
        let n = 0;
        try {
          for await (const sample of it) {
            if (!sample) throw new WebvlmError("image_decode_failed", `${label}: no frame at ${wanted[n]} s`, { video: label });
            let bitmap: ImageBitmap;
            try {
              if (sig?.aborted) throw aborted(label);
              const frame = sample.toVideoFrame();
              try {
                bitmap = await createImageBitmap(frame, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
              } finally {
                frame.close();
              }
            } finally {
              sample.close();
            }
            const i = n++;
            opts.onProgress?.(n, plan.nframes);
            yield { index: plan.indices[i], timestamp: wanted[i], bitmap };
            if (sig?.aborted) throw aborted(label);
          }
          if (n !== plan.nframes) throw new WebvlmError("image_decode_failed", `${label}: decoded ${n} of ${plan.nframes} frames`, { video: label });
        } catch (e) {
          if (e instanceof WebvlmError) throw e;
          if (sig?.aborted) throw aborted(label);
          throw new WebvlmError("image_decode_failed", `${label}: decoding failed: ${(e as Error).message}`, { video: label });
        } finally {
          await it.return(undefined);
          close();
        }
      },
    };
  } finally {
    if (!handedOver) input.dispose();
  }
}
