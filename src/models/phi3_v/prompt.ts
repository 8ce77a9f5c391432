// Phi-3-vision's prompt (/work/shared/PHI3V.md §5), as its HF processor builds input_ids:
// 1. OpenAI message parts -> one string per message: the message's images become numbered tags
//    <|image_k|> (k counts images across the request from 1; vLLM's convention for phi3_v), then
//    its text parts joined with "\n"; tags and text joined with "\n";
// 2. the checkpoint's chat template renders the messages;
// 3. Phi3VProcessor._convert_images_texts_to_inputs: the rendered text is split at the tags and
//    EVERY chunk is tokenized on its own with special tokens (so each starts with <s>, also after
//    an image); tag k becomes image k's run of placeholder ids. Without images the whole text is
//    tokenized once.
// The HF processor writes -k at image k's positions; the engine carries the tokenizer's <|image|>
// id there instead (Phi3VProcessor.placeholders), which the model overwrites with the features.
import { WebvlmError } from "../../api/errors.ts";
import type { ChatMessage, ChatPrompt, ChatTemplate, MediaPlaceholder, RenderOptions } from "../../tokenizer/chat_template.ts";
import type { TextTokenizer } from "../../tokenizer/tokenizer.ts";
import type { PromptBuilder, PromptStyle } from "../family.ts";

/** The processor's tag pattern (processing_phi3_v.py: r"<\|image_\d+\|>"). */
const IMAGE_TAG = /<\|image_(\d+)\|>/g;

const bad = (msg: string, details?: Record<string, unknown>): WebvlmError => new WebvlmError("bad_request", msg, details);

/**
 * OpenAI-shaped messages -> messages with string content, images as <|image_k|> tags (§5). A
 * string content is kept as is; null becomes "". Videos are unsupported.
 */
export function phi3vChatMessages(messages: readonly ChatMessage[]): ChatMessage[] {
  if (!Array.isArray(messages) || messages.length === 0) throw bad("messages must be a non-empty array");
  let images = 0;
  return messages.map((m, i) => {
    if (m === null || typeof m !== "object" || typeof m.role !== "string") throw bad(`messages[${i}]: needs a string role`);
    const { content } = m;
    if (typeof content === "string") return { ...m };
    if (content === null || content === undefined) return { ...m, content: "" };
    if (!Array.isArray(content)) throw bad(`messages[${i}]: content must be a string or an array of parts`);
    const tags: string[] = [];
    const texts: string[] = [];
    content.forEach((p: unknown, j) => {
      const where = `messages[${i}].content[${j}]`;
      if (p === null || typeof p !== "object") throw bad(`${where}: content part must be an object`);
      const part = p as Record<string, unknown>;
      const type = part.type ?? (typeof part.text === "string" ? "text" : undefined);
      if (type === "text") {
        if (typeof part.text !== "string") throw bad(`${where}: text part without a text string`);
        texts.push(part.text);
      } else if (type === "image_url" || type === "image") {
        tags.push(`<|image_${++images}|>`);
      } else if (type === "video" || type === "video_url") {
        throw new WebvlmError("unsupported_feature", `${where}: Phi-3-vision takes images only, not videos`, { type });
      } else {
        throw bad(`${where}: unsupported content part type ${JSON.stringify(type)}`, { type });
      }
    });
    return { ...m, content: [...tags, texts.join("\n")].join("\n") };
  });
}

/** The placeholder runs of the request's images (one MediaPlaceholder, or none without images). */
function imageRuns(media: readonly MediaPlaceholder[]): { tokenId: number; counts: readonly number[] } | null {
  if (media.length === 0) return null;
  if (media.length > 1) throw new WebvlmError("internal", `phi3_v: expected one placeholder kind (images), got ${media.length}`);
  const p = media[0];
  for (const n of p.counts) {
    if (!Number.isSafeInteger(n) || n < 1) throw bad(`bad token count ${n} for an image`, { count: n });
  }
  return p.counts.length === 0 ? null : p;
}

/**
 * Ids of a rendered prompt as the HF processor makes them: chunks between tags tokenized one by
 * one with special tokens, tag k replaced by counts[k - 1] placeholder ids. The tags must be
 * <|image_1|> ... <|image_n|> in that order, each once, for the request's n images: the processor
 * requires the set {1..n}, and its model writes the i-th image's features at the i-th run of
 * image positions, so any other order or a repeat would misplace features.
 */
export function phi3vPromptIds(tokenizer: TextTokenizer, rendered: string, media: readonly MediaPlaceholder[]): number[] {
  const runs = imageRuns(media);
  if (!runs) return tokenizer.encode(rendered, { addSpecialTokens: true });
  const n = runs.counts.length;
  const tags = [...rendered.matchAll(IMAGE_TAG)].map((m) => Number(m[1]));
  if (tags.length !== n || tags.some((k, i) => k !== i + 1)) {
    throw bad(
      `the prompt's image tags must be <|image_1|> ... <|image_${n}|> in order, one per image (${n} image(s)); ` +
        `found ${tags.length === 0 ? "none" : tags.map((k) => `<|image_${k}|>`).join(", ")}`,
      { images: n, tags },
    );
  }
  const chunks = rendered.split(/<\|image_\d+\|>/);
  const ids: number[] = [];
  chunks.forEach((chunk, i) => {
    for (const id of tokenizer.encode(chunk, { addSpecialTokens: true })) ids.push(id);
    if (i < n) for (let c = 0; c < runs.counts[i]; c++) ids.push(runs.tokenId);
  });
  return ids;
}

/**
 * The family's PromptBuilder: tags, the checkpoint's chat template, chunk-wise tokenization. The
 * returned text is the rendered template with its tags (the ids are not a tokenization of any one
 * text: every chunk has its own <s>). RenderOptions' stringContentAsParts and addSpecialTokens do
 * not apply (content is always a string here; every chunk gets its <s>).
 */
export const phi3vPromptBuilder: PromptBuilder = (
  tokenizer: TextTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  media: readonly MediaPlaceholder[],
  opts: RenderOptions,
): ChatPrompt => {
  const rendered = template.render(phi3vChatMessages(messages), {
    addGenerationPrompt: opts.addGenerationPrompt,
    addVisionId: opts.addVisionId,
    limits: opts.limits,
    variables: { ...tokenizer.templateTokens(), ...opts.variables },
  });
  return { text: rendered, ids: phi3vPromptIds(tokenizer, rendered, media) };
};

/** The family's PromptStyle (for its ModelFamily.prompt). */
export const PHI3V_PROMPT_STYLE: Readonly<PromptStyle> = { build: phi3vPromptBuilder, stringContentAsParts: false, addSpecialTokens: true };
