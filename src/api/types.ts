// OpenAI-shaped chat completion types, plus the extras users of local runtimes expect.
import type { FinishReason, TokenLogprob, TopLogprob } from "../generate/types.ts";

export type { FinishReason, TokenLogprob, TopLogprob };

export interface ImageUrlPart {
  type: "image_url";
  image_url: { url: string; detail?: "auto" | "low" | "high" } & VisionSizeOptions;
}

/** Per-image size controls (min/max_pixels, resized_*: Qwen2-VL's processor; num_crops: Phi-3-vision's HD transform). */
export interface VisionSizeOptions {
  min_pixels?: number;
  max_pixels?: number;
  resized_height?: number;
  resized_width?: number;
  /** Most 336x336 HD crops for this image (Phi-3-vision; default: preprocessor_config.json's num_crops). */
  num_crops?: number;
}

/** An image handed over as an object (browser: Blob/File/ImageBitmap/ImageData/canvas/<img>; Node: bytes). */
export interface ImagePart extends VisionSizeOptions {
  type: "image";
  image: unknown;
}

/**
 * A video: a list of frames (each an image as in ImagePart.image; sized frame by frame like
 * images, qwen_vl_utils' frame-list rules), or a video FILE — a URL string, Blob/File or
 * ArrayBuffer/Uint8Array of an MP4/WebM/MKV/MOV, or a <video> element (its src is read) — decoded
 * with WebCodecs in browsers and sampled by qwen_vl_utils' video-file rules (fps/nframes,
 * min_frames/max_frames, per-frame pixels from min_pixels/max_pixels/total_pixels).
 * Node has no WebCodecs: a video file there is an unsupported_feature error.
 */
export interface VideoPart extends VisionSizeOptions {
  type: "video";
  video: unknown;
  /** Frames per second to sample (default 2); not with nframes. Video files only. */
  fps?: number;
  /** Exact number of frames to sample (rounded to an even count). Video files only. */
  nframes?: number;
  /** Fewest / most frames when sampling by fps (default 4 / min(768, frames)). Video files only. */
  min_frames?: number;
  max_frames?: number;
  /** Pixel budget of all sampled frames together (default 24576*28*28). Video files only. */
  total_pixels?: number;
  /** Seconds to read from / up to (default: the whole video). Video files only. */
  video_start?: number;
  video_end?: number;
  /**
   * Called after each sampled frame is decoded, with (decoded, total). With the worker engine it is
   * called on the page (it crosses as a proxy). The request's signal aborts between frames.
   */
  on_progress?: (decoded: number, total: number) => void;
}

export interface TextPart {
  type: "text";
  text: string;
}

export type ContentPart = TextPart | ImageUrlPart | ImagePart | VideoPart;

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string | ContentPart[];
}

export interface ChatCompletionRequest {
  model?: string;
  messages: ChatMessage[];
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  /** null, as in OpenAI's API, means "the default" for every optional field below. */
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  /** Only 1 (or null) is supported. */
  n?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  add_vision_id?: boolean;
  signal?: AbortSignal;
  /**
   * Prefill progress for long prompts: (prompt tokens computed, tokens to compute), called after each
   * chunk of 512 tokens has run and once at the end (not called when one chunk does it all).
   */
  on_prefill_progress?: (done: number, total: number) => void;
}


export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** prompt tokens whose KV cache was reused from the previous request (OpenAI's field) */
  prompt_tokens_details?: { cached_tokens: number };
  /** extras: measured speeds (prefill counts only the tokens computed, not the cached ones) */
  prefill_tokens_per_second?: number;
  decode_tokens_per_second?: number;
  time_to_first_token_ms?: number;
  /** extras, when the request has images/videos: their preprocessing time and where it ran */
  preprocess_ms?: number;
  preprocess_device?: "gpu" | "cpu" | "mixed";
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: "assistant"; content: string };
    finish_reason: FinishReason;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: {
    index: number;
    delta: { role?: "assistant"; content?: string };
    finish_reason: FinishReason | null;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  usage?: Usage | null;
}
