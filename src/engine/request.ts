// OpenAI-shaped request -> what the model needs: validated parameters, the
// media parts in prompt order with their per-item size options.
import { WebvlmError } from "../api/errors.ts";
import type { ChatCompletionRequest, ChatMessage } from "../api/types.ts";
import type { GenerateParams } from "../generate/types.ts";

/**
 * A content part's own size controls (min_pixels, max_pixels, resized_height, resized_width):
 * validated here, interpreted by the family's processor (those without size rules ignore them).
 */
export interface MediaSizeOptions {
  minPixels?: number;
  maxPixels?: number;
  resizedHeight?: number;
  resizedWidth?: number;
}

export interface MediaRef {
  kind: "image" | "video";
  /** URL string, bytes, or a browser image object (video: an array of those, one per frame) */
  source: unknown;
  options: MediaSizeOptions;
}

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
  return out;
}

/** Media parts of all messages, in the order the chat template emits their placeholders. */
export function collectMedia(messages: readonly ChatMessage[]): MediaRef[] {
  const media: MediaRef[] = [];
  messages.forEach((m, mi) => {
    if (typeof m.content === "string") return;
    m.content.forEach((p, pi) => {
      const where = `messages[${mi}].content[${pi}]`;
      const part = p as unknown as Record<string, unknown>;
      if (p.type === "image_url") {
        const iu = part.image_url as Record<string, unknown> | string | undefined;
        const url = typeof iu === "string" ? iu : iu?.url;
        if (typeof url !== "string" || url.length === 0) throw bad(`${where}.image_url.url must be a non-empty string`);
        media.push({ kind: "image", source: url, options: sizeOptions(typeof iu === "object" && iu ? { ...part, ...iu } : part, where) });
      } else if (p.type === "image") {
        if (part.image === undefined || part.image === null) throw bad(`${where}.image is missing`);
        media.push({ kind: "image", source: part.image, options: sizeOptions(part, where) });
      } else if (p.type === "video") {
        if (!Array.isArray(part.video) || part.video.length === 0) {
          throw bad(`${where}.video must be a non-empty list of frames (images)`);
        }
        media.push({ kind: "video", source: part.video, options: sizeOptions(part, where) });
      } else if (p.type !== "text") {
        throw bad(`${where}: unsupported content part type ${JSON.stringify((p as { type?: unknown }).type)}`);
      }
    });
  });
  return media;
}

export function validateRequest(req: ChatCompletionRequest): void {
  if (req === null || typeof req !== "object") throw bad("the request must be an object");
  if (!Array.isArray(req.messages) || req.messages.length === 0) throw bad("messages must be a non-empty array", "messages");
  req.messages.forEach((m, i) => {
    if (!m || !["system", "user", "assistant"].includes(m.role)) throw bad(`messages[${i}].role must be system, user or assistant`, "messages");
    if (typeof m.content !== "string" && !Array.isArray(m.content)) throw bad(`messages[${i}].content must be a string or an array of parts`, "messages");
  });
  if (req.n !== undefined && req.n !== 1) throw bad("n > 1 is not supported: send the request n times (with different seeds)", "n");
}

/** OpenAI snake_case -> the generation layer's parameters; the checkpoint's defaults fill gaps. */
export function generateParams(req: ChatCompletionRequest, defaults: GenerateParams): GenerateParams {
  const pick = <T>(v: T | undefined | null, d: T | undefined): T | undefined => (v === undefined || v === null ? d : v);
  return {
    temperature: pick(req.temperature, defaults.temperature),
    topP: pick(req.top_p, req.temperature !== undefined ? undefined : defaults.topP),
    topK: pick(req.top_k, req.temperature !== undefined ? undefined : defaults.topK),
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
