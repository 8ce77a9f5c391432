// OpenAI-shaped request -> what the model needs: validated parameters, the
// media parts in prompt order with their per-item size options.
import type { MediaRef, MediaSizeOptions } from "../models/family.ts";
import { WebvlmError } from "../api/errors.ts";
import type { ChatCompletionRequest, ChatMessage } from "../api/types.ts";
import { MAX_TOP_LOGPROBS } from "../generate/logprobs.ts";
import { MAX_STOP_STRINGS } from "../generate/stop.ts";
import type { GenerateParams } from "../generate/types.ts";

export type { MediaRef, MediaSizeOptions };

const bad = (message: string, param?: string): WebvlmError => new WebvlmError("bad_request", message, param ? { param } : undefined);

function sizeOptions(o: Record<string, unknown>, where: string): MediaSizeOptions {
  const out: MediaSizeOptions = {};
  const num = (k: string): number | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw bad(`${where}.${k} must be a positive number`, k);
    return v;
  };
  out.minPixels = num("min_pixels");
  out.maxPixels = num("max_pixels");
  out.resizedHeight = num("resized_height");
  out.resizedWidth = num("resized_width");
  const crops = num("num_crops");
  if (crops !== undefined && !Number.isSafeInteger(crops)) throw bad(`${where}.num_crops must be a positive integer`, "num_crops");
  out.numCrops = crops;
  return out;
}

/**
 * A video file's sampling options (qwen_vl_utils fetch_video): fps | nframes, min_frames, max_frames,
 * total_pixels, video_start/video_end, and on_progress (a function, or the MessagePort the worker
 * engine puts in its place).
 */
function videoOptions(o: Record<string, unknown>, where: string, out: MediaSizeOptions): MediaSizeOptions {
  const num = (k: string, integer = false, zeroOk = false): number | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || (v === 0 && !zeroOk) || (integer && !Number.isSafeInteger(v))) {
      throw bad(`${where}.${k} must be a ${zeroOk ? "non-negative" : "positive"} ${integer ? "integer" : "number"}`, k);
    }
    return v;
  };
  out.fps = num("fps");
  out.nframes = num("nframes", true);
  if (out.fps !== undefined && out.nframes !== undefined) throw bad(`${where}: give either fps or nframes, not both`, "nframes");
  out.minFrames = num("min_frames", true);
  out.maxFrames = num("max_frames", true);
  out.totalPixels = num("total_pixels");
  out.videoStart = num("video_start", false, true);
  out.videoEnd = num("video_end");
  if (out.videoStart !== undefined && out.videoEnd !== undefined && out.videoEnd <= out.videoStart) {
    throw bad(`${where}.video_end must be after video_start`, "video_end");
  }
  const p = o.on_progress;
  if (typeof p === "function") out.onVideoProgress = p as (decoded: number, total: number) => void;
  else if (typeof MessagePort !== "undefined" && p instanceof MessagePort) {
    out.onVideoProgress = (decoded, total) => p.postMessage([decoded, total]);
  } else if (p !== undefined && p !== null) throw bad(`${where}.on_progress must be a function`, "on_progress");
  return out;
}

/** Media parts of all messages, in the order the chat template emits their placeholders. */
export function collectMedia(messages: readonly ChatMessage[]): MediaRef[] {
  const media: MediaRef[] = [];
  messages.forEach((m, mi) => {
    if (typeof m.content === "string") return;
    m.content.forEach((p, pi) => {
      const where = `messages[${mi}].content[${pi}]`;
      if (p === null || typeof p !== "object") throw bad(`${where} must be a content part object, got ${show(p)}`, "messages");
      const part = p as unknown as Record<string, unknown>;
      if (p.type === "image_url") {
        const iu = part.image_url as Record<string, unknown> | string | undefined;
        const url = typeof iu === "string" ? iu : iu?.url;
        if (typeof url !== "string" || url.length === 0) throw bad(`${where}.image_url.url must be a non-empty string`, "messages");
        media.push({ kind: "image", source: url, options: sizeOptions(typeof iu === "object" && iu ? { ...part, ...iu } : part, where) });
      } else if (p.type === "image") {
        if (part.image === undefined || part.image === null) throw bad(`${where}.image is missing`, "messages");
        media.push({ kind: "image", source: part.image, options: sizeOptions(part, where) });
      } else if (p.type === "video") {
        const v = part.video;
        if (Array.isArray(v)) {
          // A list of frames: sized like images (qwen_vl_utils ignores the video-file options here).
          if (v.length === 0) throw bad(`${where}.video must be a non-empty list of frames (images) or a video file`, "messages");
          media.push({ kind: "video", source: v, options: sizeOptions(part, where) });
        } else {
          // A video file: URL string, Blob/File, bytes or a <video> element (decoded in the processor).
          if (v === undefined || v === null || (typeof v === "string" ? v.length === 0 : typeof v !== "object")) {
            throw bad(`${where}.video must be a list of frames or a video file (URL, Blob/File, bytes, <video>), got ${show(v)}`, "messages");
          }
          media.push({ kind: "video", source: v, options: videoOptions(part, where, sizeOptions(part, where)) });
        }
      } else if (p.type !== "text") {
        throw bad(`${where}: unsupported content part type ${JSON.stringify((p as { type?: unknown }).type)}`, "messages");
      }
    });
  });
  return media;
}

const MAX_STOP = MAX_STOP_STRINGS;

/** What a value is, for messages: `null`, `an array`, `the string "x"`, `-1`. */
function show(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  if (typeof v === "object") return "an object";
  return String(v);
}

const absent = (v: unknown): boolean => v === undefined || v === null;

/** An optional number: finite, and within [lo, hi] (or (lo, hi] when loOpen); the message states the bound. */
function checkNumber(req: Record<string, unknown>, key: string, bound: { lo?: number; hi?: number; loOpen?: boolean; integer?: boolean; text: string }): void {
  const v = req[key];
  if (absent(v)) return;
  const ok = typeof v === "number" && Number.isFinite(v) &&
    (!bound.integer || Number.isSafeInteger(v)) &&
    (bound.lo === undefined || (bound.loOpen ? v > bound.lo : v >= bound.lo)) &&
    (bound.hi === undefined || v <= bound.hi);
  if (!ok) throw bad(`${key} must be ${bound.text}, got ${show(v)}`, key);
}

function checkBoolean(req: Record<string, unknown>, key: string): void {
  const v = req[key];
  if (!absent(v) && typeof v !== "boolean") throw bad(`${key} must be true or false, got ${show(v)}`, key);
}

/**
 * Checks the whole request before anything is queued, so every bad field is a
 * bad_request naming its parameter (OpenAI's field rules; where webvlm is more
 * permissive, the message states webvlm's bound). Media parts are checked here
 * too (collectMedia is pure); decoding them happens later, in the queue.
 */
export function validateRequest(req: ChatCompletionRequest): void {
  if (req === null || typeof req !== "object" || Array.isArray(req)) {
    throw bad(`the request must be an object with a messages array, got ${show(req)}`, "messages");
  }
  const r = req as unknown as Record<string, unknown>;
  if (!Array.isArray(req.messages) || req.messages.length === 0) throw bad("messages must be a non-empty array", "messages");
  req.messages.forEach((m, i) => {
    if (m === null || typeof m !== "object" || Array.isArray(m)) throw bad(`messages[${i}] must be an object, got ${show(m)}`, "messages");
    if (!["system", "user", "assistant"].includes(m.role)) throw bad(`messages[${i}].role must be system, user or assistant, got ${show(m.role)}`, "messages");
    if (typeof m.content === "string") return;
    if (!Array.isArray(m.content)) throw bad(`messages[${i}].content must be a string or an array of parts, got ${show(m.content)}`, "messages");
    m.content.forEach((p, j) => {
      const where = `messages[${i}].content[${j}]`;
      if (p === null || typeof p !== "object" || Array.isArray(p)) throw bad(`${where} must be a content part object, got ${show(p)}`, "messages");
      if (typeof (p as { type?: unknown }).type !== "string") throw bad(`${where}.type must be a string, got ${show((p as { type?: unknown }).type)}`, "messages");
      if (p.type === "text" && typeof (p as { text?: unknown }).text !== "string") throw bad(`${where}.text must be a string, got ${show((p as { text?: unknown }).text)}`, "messages");
    });
  });
  collectMedia(req.messages);

  if (!absent(r.model) && typeof r.model !== "string") throw bad(`model must be a string, got ${show(r.model)}`, "model");
  checkBoolean(r, "stream");
  const pp = r.on_prefill_progress;
  if (!absent(pp) && typeof pp !== "function" && !(typeof MessagePort !== "undefined" && pp instanceof MessagePort)) {
    throw bad(`on_prefill_progress must be a function, got ${show(pp)}`, "on_prefill_progress");
  }
  if (!absent(r.stream_options)) {
    const so = r.stream_options;
    if (typeof so !== "object" || Array.isArray(so)) throw bad(`stream_options must be an object, got ${show(so)}`, "stream_options");
    if (!absent((so as Record<string, unknown>).include_usage) && typeof (so as Record<string, unknown>).include_usage !== "boolean") {
      throw bad(`stream_options.include_usage must be true or false, got ${show((so as Record<string, unknown>).include_usage)}`, "stream_options");
    }
  }

  // n: null / absent / 1 are one choice. n > 1 is a well-formed request this runtime cannot serve; it stays
  // bad_request (HTTP 400, what clients and the existing tests expect) with a message saying how to get n answers.
  if (!absent(r.n)) {
    const n = r.n;
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1) throw bad(`n must be a positive integer, got ${show(n)}`, "n");
    if (n > 1) throw bad(`n = ${n} is not supported (only n = 1): send the request ${n} times, with different seeds`, "n");
  }

  if (!absent(r.stop)) {
    const stop = r.stop;
    if (typeof stop !== "string") {
      if (!Array.isArray(stop)) throw bad(`stop must be a string, an array of up to ${MAX_STOP} strings, or null, got ${show(stop)}`, "stop");
      if (stop.length > MAX_STOP) throw bad(`stop may hold at most ${MAX_STOP} strings, got ${stop.length}`, "stop");
      stop.forEach((s, i) => {
        if (typeof s !== "string") throw bad(`stop[${i}] must be a string, got ${show(s)}`, "stop");
      });
    }
    const list = typeof stop === "string" ? [stop] : (stop as string[]);
    if (list.some((s) => s.length === 0)) throw bad("stop strings must not be empty", "stop");
  }

  checkNumber(r, "max_tokens", { lo: 1, integer: true, text: "an integer >= 1" });
  checkNumber(r, "max_completion_tokens", { lo: 1, integer: true, text: "an integer >= 1" });
  // OpenAI caps temperature at 2; webvlm's sampler takes any temperature >= 0 (0 = greedy).
  checkNumber(r, "temperature", { lo: 0, text: "a number >= 0 (0 = greedy)" });
  checkNumber(r, "top_p", { lo: 0, hi: 1, loOpen: true, text: "a number greater than 0 and at most 1" });
  checkNumber(r, "top_k", { lo: -1, integer: true, text: "an integer >= -1 (0 or -1 = off)" });
  checkNumber(r, "min_p", { lo: 0, hi: 1, text: "a number between 0 and 1" });
  checkNumber(r, "repetition_penalty", { lo: 0, loOpen: true, text: "a number greater than 0 (1 = off)" });
  checkNumber(r, "frequency_penalty", { lo: -2, hi: 2, text: "a number between -2 and 2" });
  checkNumber(r, "presence_penalty", { lo: -2, hi: 2, text: "a number between -2 and 2" });
  checkNumber(r, "seed", { integer: true, text: "an integer" });
  checkBoolean(r, "logprobs");
  checkNumber(r, "top_logprobs", { lo: 0, hi: MAX_TOP_LOGPROBS, integer: true, text: `an integer between 0 and ${MAX_TOP_LOGPROBS}` });
  if (!absent(r.top_logprobs) && (r.top_logprobs as number) > 0 && r.logprobs !== true) throw bad("top_logprobs requires logprobs: true", "top_logprobs");
  checkBoolean(r, "add_vision_id");
}

/** OpenAI snake_case -> the generation layer's parameters; the checkpoint's defaults fill gaps. */
export function generateParams(req: ChatCompletionRequest, defaults: GenerateParams): GenerateParams {
  const pick = <T>(v: T | undefined | null, d: T | undefined): T | undefined => (v === undefined || v === null ? d : v);
  return {
    temperature: pick(req.temperature, defaults.temperature),
    // A request that sets temperature turns off the checkpoint's top_p / top_k defaults (null = not set).
    topP: pick(req.top_p, req.temperature !== undefined && req.temperature !== null ? undefined : defaults.topP),
    topK: pick(req.top_k, req.temperature !== undefined && req.temperature !== null ? undefined : defaults.topK),
    minP: pick(req.min_p, defaults.minP),
    repetitionPenalty: pick(req.repetition_penalty, defaults.repetitionPenalty),
    frequencyPenalty: req.frequency_penalty ?? undefined,
    presencePenalty: req.presence_penalty ?? undefined,
    seed: req.seed ?? undefined,
    maxTokens: pick(req.max_completion_tokens, pick(req.max_tokens, defaults.maxTokens)),
    stop: req.stop ?? undefined,
    logprobs: req.logprobs ?? undefined,
    topLogprobs: req.top_logprobs ?? undefined,
  };
}
