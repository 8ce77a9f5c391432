// Video files in Chromium: short MP4/WebM clips written here with mediabunny over WebCodecs'
// encoders (each frame a solid colour that encodes its index), sampled by webvlm's video path
// (src/vision/video_browser.ts) with several option sets, its frames compared with the decoder's
// own frames (every frame decoded in order), abort and progress between frames, then (?model=)
// one question about the WebM through the worker engine, with the sampled frames returned as
// PNG so the Node engine can answer the same frames given as a frame list.
import { ALL_FORMATS, BlobSource, BufferTarget, CanvasSource, Input, Mp4OutputFormat, Output, VideoSampleSink, WebMOutputFormat, canEncodeVideo, type VideoCodec } from "mediabunny";
import { WebvlmError } from "../../src/api/errors.ts";
import { createEngine } from "../../src/engine/create.ts";
import { openVideo, type VideoFileOptions } from "../../src/vision/video_browser.ts";

export const W = 64;
export const H = 48;
export const FRAMES = 20;
export const FPS = 10;

/** Frame i's colour: far apart for neighbours, so a lossy codec keeps them distinguishable. */
export const colourOf = (i: number): [number, number, number] => [(i * 53) % 256, 255 - ((i * 97) % 256), (i * 29 + 40) % 256];

export interface SampledCase {
  options: Omit<VideoFileOptions, "onProgress" | "label">;
  nframes?: number;
  indices?: number[];
  timestamps?: number[];
  videoFps?: number;
  totalFrames?: number;
  size?: [number, number];
  /** Index of the nearest colour for each sampled frame's centre. */
  colourIndex?: number[];
  /** Every sampled frame equals the frame decoded in order at its index (all RGBA bytes). */
  equalToDecoder?: boolean;
  maxDiffToDecoder?: number;
  progress?: number[][];
  error?: string;
}

export interface VideoResult {
  encoders?: Record<string, boolean>;
  /** VideoDecoder.isConfigSupported per codec. */
  decoders?: Record<string, boolean>;
  /** The WebM given as a blob: URL string and as a <video> element: sampled indices. */
  otherSources?: { url?: number[]; element?: number[]; error?: string };
  files?: { name: string; codec: string; bytes: number; cases: SampledCase[] }[];
  abort?: { code?: string; progress: number[][] };
  answer?: { text?: string; progress: number[][]; preprocessDevice?: string; framesPng?: string[]; error?: string };
  /** Through the worker: a <video> element whose request is aborted in its first progress callback. */
  workerAbort?: { code?: string; progress: number[][]; after?: string };
  /** The VP8 WebM's bytes (base64), for the demo's drop test. */
  webmBase64?: string;
  /** Milliseconds per stage. */
  times?: Record<string, number>;
  error?: string;
}

declare global {
  interface Window {
    __videoDone?: (r: VideoResult) => Promise<void>;
  }
}

const params = new URLSearchParams(location.search);

async function makeVideo(format: "mp4" | "webm", codec: VideoCodec): Promise<Blob> {
  const canvas = new OffscreenCanvas(W, H);
  const ctx = canvas.getContext("2d")!;
  const target = new BufferTarget();
  const output = new Output({ format: format === "mp4" ? new Mp4OutputFormat() : new WebMOutputFormat(), target });
  const src = new CanvasSource(canvas, { codec, bitrate: 4_000_000, keyFrameInterval: 0.5 });
  output.addVideoTrack(src, { frameRate: FPS });
  await output.start();
  for (let i = 0; i < FRAMES; i++) {
    const [r, g, b] = colourOf(i);
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(0, 0, W, H);
    await src.add(i / FPS, 1 / FPS);
  }
  await output.finalize();
  return new Blob([target.buffer!], { type: format === "mp4" ? "video/mp4" : "video/webm" });
}

function rgba(img: CanvasImageSource, w: number, h: number): Uint8ClampedArray {
  const c = new OffscreenCanvas(w, h);
  const ctx = c.getContext("2d", { willReadFrequently: true })!;
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, w, h).data;
}

function nearestColour(px: Uint8ClampedArray): number {
  const o = ((H >> 1) * W + (W >> 1)) * 4;
  let best = -1;
  let bestD = Infinity;
  for (let i = 0; i < FRAMES; i++) {
    const c = colourOf(i);
    const d = (px[o] - c[0]) ** 2 + (px[o + 1] - c[1]) ** 2 + (px[o + 2] - c[2]) ** 2;
    if (d < bestD) [best, bestD] = [i, d];
  }
  return best;
}

/** Every frame as the decoder gives it, in order (VideoSampleSink.samples: sequential decoding). */
async function decoderFrames(blob: Blob): Promise<{ ts: number; px: Uint8ClampedArray }[]> {
  const input = new Input({ source: new BlobSource(blob), formats: ALL_FORMATS });
  const track = (await input.getPrimaryVideoTrack())!;
  const out: { ts: number; px: Uint8ClampedArray }[] = [];
  for await (const s of new VideoSampleSink(track).samples()) {
    const f = s.toVideoFrame();
    const bmp = await createImageBitmap(f, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
    out.push({ ts: s.timestamp, px: rgba(bmp, W, H) });
    bmp.close();
    f.close();
    s.close();
  }
  input.dispose();
  return out;
}

const CASES: SampledCase["options"][] = [
  {}, // fps 2 by default
  { nframes: 6 },
  { fps: 4, maxFrames: 6 },
  { minFrames: 10 },
  { videoStart: 1.0 },
  { nframes: 4, resizedHeight: 56, resizedWidth: 56 },
  { nframes: 30 }, // more than the video has: bad_request
];

async function sampleCases(blob: Blob): Promise<SampledCase[]> {
  const decoded = await decoderFrames(blob);
  const out: SampledCase[] = [];
  for (const options of CASES) {
    const c: SampledCase = { options, progress: [] };
    try {
      const v = await openVideo(blob, { ...options, onProgress: (d, t) => c.progress!.push([d, t]) });
      Object.assign(c, {
        nframes: v.plan.nframes, indices: v.plan.indices, videoFps: v.plan.videoFps, totalFrames: v.plan.totalFrames,
        size: [v.plan.size.height, v.plan.size.width], timestamps: [], colourIndex: [], equalToDecoder: true, maxDiffToDecoder: 0,
      });
      const first = decoded.findIndex((d) => d.ts >= (options.videoStart ?? -Infinity));
      for await (const f of v.frames()) {
        c.timestamps!.push(f.timestamp);
        const px = rgba(f.bitmap, W, H);
        f.bitmap.close();
        c.colourIndex!.push(nearestColour(px));
        const ref = decoded[first + f.index];
        let diff = ref && Math.abs(ref.ts - f.timestamp) < 1e-6 ? 0 : 999;
        if (ref) for (let k = 0; k < px.length; k++) diff = Math.max(diff, Math.abs(px[k] - ref.px[k]));
        c.maxDiffToDecoder = Math.max(c.maxDiffToDecoder!, diff);
        if (diff !== 0) c.equalToDecoder = false;
      }
    } catch (e) {
      c.error = e instanceof WebvlmError ? `${e.code}: ${e.message}` : String((e as Error).stack ?? e);
    }
    out.push(c);
  }
  return out;
}

async function pngDataUrl(bmp: ImageBitmap): Promise<string> {
  const c = new OffscreenCanvas(bmp.width, bmp.height);
  c.getContext("2d")!.drawImage(bmp, 0, 0);
  const blob = await c.convertToBlob({ type: "image/png" });
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return `data:image/png;base64,${btoa(s)}`;
}

async function main(): Promise<VideoResult> {
  const r: VideoResult = { encoders: {}, files: [], times: {} };
  let t0 = performance.now();
  const lap = (name: string): void => {
    r.times![name] = Math.round(performance.now() - t0);
    t0 = performance.now();
  };
  for (const codec of ["avc", "hevc", "vp8", "vp9", "av1"] as VideoCodec[]) r.encoders![codec] = await canEncodeVideo(codec, { width: W, height: H });
  const plans: [string, "mp4" | "webm", VideoCodec][] = [];
  // MP4 with H.264 where this Chromium can encode it, else VP9 in MP4; WebM with VP8 (and VP9).
  if (r.encoders!.avc) plans.push(["mp4-avc", "mp4", "avc"]);
  if (r.encoders!.vp9) plans.push(["mp4-vp9", "mp4", "vp9"]);
  if (r.encoders!.vp8) plans.push(["webm-vp8", "webm", "vp8"]);
  if (r.encoders!.vp9) plans.push(["webm-vp9", "webm", "vp9"]);
  if (r.encoders!.av1) plans.push(["webm-av1", "webm", "av1"]);
  r.decoders = {};
  const strings: Record<string, string> = { avc: "avc1.42001f", hevc: "hev1.1.6.L93.B0", vp8: "vp8", vp9: "vp09.00.10.08", av1: "av01.0.04M.08" };
  for (const [k, codec] of Object.entries(strings)) {
    r.decoders[k] = (await VideoDecoder.isConfigSupported({ codec, codedWidth: W, codedHeight: H })).supported === true;
  }
  let webm: Blob | null = null;
  for (const [name, format, codec] of plans) {
    const blob = await makeVideo(format, codec);
    if (format === "webm" && !webm) webm = blob;
    lap(`${name} write`);
    r.files!.push({ name, codec, bytes: blob.size, cases: await sampleCases(blob) });
    lap(`${name} sample`);
  }
  if (!webm) return r;
  // The same file as a blob: URL string and as a <video> element (its src is read).
  r.otherSources = {};
  const blobUrl = URL.createObjectURL(webm);
  try {
    const byUrl = await openVideo(blobUrl);
    r.otherSources.url = byUrl.plan.indices;
    byUrl.close();
    const el = document.createElement("video");
    el.src = blobUrl;
    const byElement = await openVideo(el);
    r.otherSources.element = byElement.plan.indices;
    byElement.close();
  } catch (e) {
    r.otherSources.error = String(e);
  }
  {
    const bytes = new Uint8Array(await webm.arrayBuffer());
    let bin = "";
    for (const b of bytes) bin += String.fromCharCode(b);
    r.webmBase64 = btoa(bin);
  }

  // Abort between frames: the signal fires in the first progress callback.
  const ac = new AbortController();
  const progress: number[][] = [];
  try {
    const v = await openVideo(webm, { nframes: 8, onProgress: (d, t) => (progress.push([d, t]), ac.abort()) }, ac.signal);
    for await (const f of v.frames(ac.signal)) f.bitmap.close();
    r.abort = { progress };
  } catch (e) {
    r.abort = { code: (e as WebvlmError).code, progress };
  }

  const model = params.get("model");
  if (model) {
    const answer: NonNullable<VideoResult["answer"]> = { progress: [] };
    r.answer = answer;
    try {
      // The frames the question is asked about, as PNG, for the Node engine's frame list.
      const opts = { nframes: 4, resizedHeight: 56, resizedWidth: 56 };
      const v = await openVideo(webm, opts);
      answer.framesPng = [];
      for await (const f of v.frames()) {
        answer.framesPng.push(await pngDataUrl(f.bitmap));
        f.bitmap.close();
      }
      lap("frames as PNG");
      const engine = await createEngine({ worker: true });
      try {
        await engine.load({ baseUrl: model }, { quantization: "f32", embedding: "f32", vision: "f32" });
        lap("worker load");
        const res = await engine.chat.completions.create({
          messages: [{ role: "user", content: [
            { type: "video", video: webm, nframes: 4, resized_height: 56, resized_width: 56, on_progress: (d: number, t: number) => answer.progress.push([d, t]) },
            { type: "text", text: params.get("q") ?? "What happens in this video?" },
          ] }],
          max_tokens: Number(params.get("max") ?? 8), temperature: 0,
        });
        answer.text = res.choices[0].message.content;
        answer.preprocessDevice = res.usage.preprocess_device;
        lap("worker answer");
        // A <video> element crosses as its src; the abort reaches the worker between frames.
        const wa: NonNullable<VideoResult["workerAbort"]> = { progress: [] };
        r.workerAbort = wa;
        const el = document.createElement("video");
        el.src = URL.createObjectURL(webm);
        const ac2 = new AbortController();
        try {
          await engine.chat.completions.create({
            messages: [{ role: "user", content: [
              { type: "video", video: el, nframes: 8, on_progress: (d: number, t: number) => (wa.progress.push([d, t]), ac2.abort()) },
              { type: "text", text: "?" },
            ] }],
            max_tokens: 2, temperature: 0, signal: ac2.signal,
          });
        } catch (e) {
          wa.code = (e as WebvlmError).code;
        }
        // The engine still answers afterwards (the same request as above).
        const again = await engine.chat.completions.create({
          messages: [{ role: "user", content: [
            { type: "video", video: el, nframes: 4, resized_height: 56, resized_width: 56 },
            { type: "text", text: params.get("q") ?? "What happens in this video?" },
          ] }],
          max_tokens: Number(params.get("max") ?? 8), temperature: 0,
        });
        wa.after = again.choices[0].message.content;
        lap("worker abort + <video>");
      } finally {
        await engine.terminate();
      }
    } catch (e) {
      answer.error = e instanceof WebvlmError ? `${e.code}: ${e.message}` : String((e as Error).stack ?? e);
    }
  }
  return r;
}

main().then(
  (r) => window.__videoDone?.(r),
  (e: unknown) => window.__videoDone?.({ error: String((e as Error).stack ?? e) }),
);
