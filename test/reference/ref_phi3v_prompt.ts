// Phi-3.5-vision reference, prompt side (PHI3V.md §5): OpenAI-style message parts -> chat
// messages with `<|image_k|>` tags (vLLM's convention), the checkpoint's chat template rendered by
// @huggingface/jinja, and Phi3VProcessor's per-chunk tokenization (every chunk between tags with
// its own `<s>`), through @huggingface/tokenizers on the checkpoint's tokenizer.json.
import { Template } from "@huggingface/jinja";
import type { Tokenizer } from "@huggingface/tokenizers";

/** An OpenAI-shaped message: string content, or text / image_url parts. */
export interface Phi3VRefMessage {
  role: string;
  content: string | ({ type: "text"; text: string } | { type: "image_url"; image_url?: unknown })[];
}

/**
 * Messages -> chat messages with string content: per message, its images' tags (numbered across
 * the request from 1), then its texts joined with "\n"; tags and text joined with "\n".
 */
export function phi3vChatMessages(messages: readonly Phi3VRefMessage[]): { role: string; content: string }[] {
  let image = 0;
  return messages.map((m) => {
    if (typeof m.content === "string") return { role: m.role, content: m.content };
    const tags: string[] = [];
    const texts: string[] = [];
    for (const part of m.content) {
      if (part.type === "image_url") tags.push(`<|image_${++image}|>`);
      else texts.push(part.text);
    }
    // vLLM joins the tags and the (possibly empty) joined text: an image-only message is "<|image_1|>\n".
    return { role: m.role, content: [...tags, texts.join("\n")].join("\n") };
  });
}

/** The checkpoint's chat_template with add_generation_prompt = true. */
export function renderPhi3VChat(chatTemplate: string, messages: readonly Phi3VRefMessage[], specialTokens: Record<string, string> = {}): string {
  return new Template(chatTemplate).render({ messages: phi3vChatMessages(messages), add_generation_prompt: true, ...specialTokens });
}

const TAG = /<\|image_(\d+)\|>/g;

/**
 * Phi3VProcessor._convert_images_texts_to_inputs: without tags, one tokenization (one `<s>`);
 * with tags, every chunk tokenized with special tokens and tag k replaced by counts[k−1]
 * placeholders (-k as the processor writes them, or the given id). Tag numbers must be 1…n with
 * n = counts.length.
 */
export function phi3vPromptIds(tokenizer: Tokenizer, text: string, counts: readonly number[], placeholder: number | "negative" = "negative"): number[] {
  const tags = [...text.matchAll(TAG)].map((m) => Number(m[1]));
  if (tags.length === 0) {
    if (counts.length > 0) throw new Error(`reference: ${counts.length} images but no <|image_k|> tag`);
    return [...tokenizer.encode(text, { add_special_tokens: true }).ids];
  }
  const unique = [...new Set(tags)].sort((a, b) => a - b);
  if (unique.length !== counts.length || unique.some((k, i) => k !== i + 1)) {
    throw new Error(`reference: image tags ${unique.join(",")} do not number 1..${counts.length}`);
  }
  const chunks = text.split(/<\|image_\d+\|>/);
  const out: number[] = [];
  chunks.forEach((chunk, i) => {
    out.push(...tokenizer.encode(chunk, { add_special_tokens: true }).ids);
    if (i < tags.length) {
      const k = tags[i];
      out.push(...new Array<number>(counts[k - 1]).fill(placeholder === "negative" ? -k : placeholder));
    }
  });
  return out;
}
