// Llama 3.2 Vision's prompt path (/work/shared/MLLAMA.md §5): the checkpoint's chat template over
// messages whose non-system string content is given as [{type: "text", text}] (the template's
// image-detection loop iterates every message's content; Python Jinja walks a string's characters
// and finds no image, @huggingface/jinja throws on iterating a string), while the system message
// stays a string (the template `|trim`s it, which fails on a list). Tokenized without the
// tokenizer's BOS (the template writes bos_token): exactly one 128000.
import { WebvlmError } from "../../api/errors.ts";
import { buildChatPrompt, type ChatMessage, type ContentPart } from "../../tokenizer/chat_template.ts";
import type { PromptBuilder, PromptStyle } from "../family.ts";

/** A system message given as text parts -> its text (the parts joined as the template would emit them). */
function systemText(content: ContentPart[], index: number): string {
  return content.map((p, j) => {
    if (p !== null && typeof p === "object" && p.type === "text" && typeof p.text === "string") return p.text;
    throw new WebvlmError("bad_request", `messages[${index}].content[${j}]: a system message can hold only text parts`, { message: index, part: j });
  }).join("");
}

/**
 * Messages as the Llama 3.2 Vision template reads them: string content of non-system messages as
 * one text part; system content as a string (text parts joined).
 */
export function mllamaTemplateMessages(messages: readonly ChatMessage[]): ChatMessage[] {
  return messages.map((m, i) => {
    if (m === null || typeof m !== "object") return m;
    if (m.role === "system") return Array.isArray(m.content) ? { ...m, content: systemText(m.content, i) } : m;
    return typeof m.content === "string" ? { ...m, content: [{ type: "text", text: m.content }] } : m;
  });
}

/** buildChatPrompt over mllamaTemplateMessages, never adding the tokenizer's BOS. */
export const buildMllamaPrompt: PromptBuilder = (tokenizer, template, messages, media, opts) =>
  buildChatPrompt(tokenizer, template, mllamaTemplateMessages(messages), media, { ...opts, stringContentAsParts: false, addSpecialTokens: false });

/** The family's PromptStyle (family.ts: `prompt: MLLAMA_PROMPT_STYLE`). */
export const MLLAMA_PROMPT_STYLE: PromptStyle = {
  stringContentAsParts: false,
  addSpecialTokens: false,
  build: buildMllamaPrompt,
};
