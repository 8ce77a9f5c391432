// Chat prompt construction, as transformers' processor does it:
// 1. render the checkpoint's own Jinja chat template (never a hard-coded copy)
//    over OpenAI/HF-shaped messages;
// 2. expand each <|image_pad|> / <|video_pad|> into t*h*w/merge^2 copies
//    (processing_qwen2_vl.py does this on the text, before tokenizing);
// 3. tokenize.
import { Template } from "@huggingface/jinja";
import { WebvlmError } from "../api/errors.ts";
import { QWEN_SPECIAL_TOKENS, type TextTokenizer } from "./tokenizer.ts";

export type ContentPart =
  | { type: "text"; text: string }
  | { type: "image"; image?: unknown }
  | { type: "image_url"; image_url: { url: string; detail?: string } | string }
  | { type: "video"; video?: unknown }
  | { type: "video_url"; video_url: { url: string } | string };

export interface ChatMessage {
  role: string;
  content: string | ContentPart[] | null;
  /** Extra fields (name, tool_calls, ...) are passed to the template untouched. */
  [key: string]: unknown;
}

export interface RenderOptions {
  addGenerationPrompt?: boolean;
  /** Qwen2-VL: prefix "Picture N: " / "Video N: " to each media part. */
  addVisionId?: boolean;
  /** Special-token strings (bos_token, eos_token, ...) and other template variables. */
  variables?: Record<string, unknown>;
}

/** (t, h, w) in patches, as the image processor returns image_grid_thw. */
export type GridTHW = readonly [number, number, number];

const bad = (msg: string, details?: Record<string, unknown>): WebvlmError => new WebvlmError("bad_request", msg, details);

/**
 * Reduces parts to what a template inspects: type + text for text, a bare
 * {type: "image"} / {type: "video"} for media. Media payloads (URLs, bytes,
 * bitmaps) are the processor's business, and copying them into the Jinja
 * runtime would be slow; the Qwen2-VL template tests `type == 'image'` first,
 * so the rendering is unchanged. video_url (vLLM's spelling) counts as video.
 */
function normalizePart(p: unknown, where: string): Record<string, unknown> {
  if (p === null || typeof p !== "object") throw bad(`${where}: content part must be an object`);
  const part = p as Record<string, unknown>;
  const type = part.type ?? (part.text !== undefined ? "text" : part.image !== undefined || part.image_url !== undefined ? "image" : part.video !== undefined ? "video" : undefined);
  switch (type) {
    case "text":
      if (typeof part.text !== "string") throw bad(`${where}: text part without a text string`);
      return { type: "text", text: part.text };
    case "image":
    case "image_url":
      return { type: "image" };
    case "video":
    case "video_url":
      return { type: "video" };
    default:
      throw bad(`${where}: unsupported content part type ${JSON.stringify(type)}`, { type });
  }
}

export function normalizeMessages(messages: readonly ChatMessage[]): Record<string, unknown>[] {
  if (!Array.isArray(messages) || messages.length === 0) throw bad("messages must be a non-empty array");
  return messages.map((m, i) => {
    if (m === null || typeof m !== "object" || typeof m.role !== "string") throw bad(`messages[${i}]: needs a string role`);
    const { content, ...rest } = m;
    let c: unknown;
    if (typeof content === "string") c = content;
    else if (content === null || content === undefined) c = ""; // assistant turns with only tool calls
    else if (Array.isArray(content)) c = content.map((p, j) => normalizePart(p, `messages[${i}].content[${j}]`));
    else throw bad(`messages[${i}]: content must be a string or an array of parts`);
    return { ...rest, role: m.role, content: c };
  });
}

/** A compiled chat template. Compile once per model; render per request. */
export class ChatTemplate {
  private readonly template: Template;

  constructor(readonly source: string) {
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new WebvlmError("unsupported_feature", `chat template does not compile: ${(e as Error).message}`);
    }
  }

  render(messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
    const vars = {
      ...opts.variables,
      messages: normalizeMessages(messages),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      add_vision_id: opts.addVisionId ?? false,
    };
    try {
      return this.template.render(vars);
    } catch (e) {
      throw bad(`chat template failed to render: ${(e as Error).message}`);
    }
  }
}

/**
 * Picks the template the processor would: chat_template.jinja text, then
 * chat_template.json's "chat_template", then tokenizer_config.json's (the
 * "default" entry when it holds several named templates).
 */
export function resolveChatTemplate(files: {
  chatTemplateJinja?: string;
  chatTemplateJson?: unknown;
  tokenizerConfig?: unknown;
}): string {
  if (typeof files.chatTemplateJinja === "string" && files.chatTemplateJinja.length > 0) return files.chatTemplateJinja;
  const fromJson = (files.chatTemplateJson as Record<string, unknown> | undefined)?.chat_template;
  if (typeof fromJson === "string") return fromJson;
  const t = (files.tokenizerConfig as Record<string, unknown> | undefined)?.chat_template;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const d = (t as { name?: unknown; template?: unknown }[]).find((e) => e?.name === "default");
    if (typeof d?.template === "string") return d.template;
  }
  throw new WebvlmError("unsupported_feature", "checkpoint has no chat template (chat_template.json / tokenizer_config.json)");
}

export interface VisionGrids {
  images?: readonly GridTHW[];
  videos?: readonly GridTHW[];
  /** spatial_merge_size; 2 for Qwen2-VL. */
  mergeSize?: number;
  imagePad?: string;
  videoPad?: string;
}

/** LLM tokens one grid becomes: t*h*w / merge^2. */
export function tokensForGrid(grid: GridTHW, mergeSize = 2): number {
  const [t, h, w] = grid;
  for (const d of grid) if (!Number.isSafeInteger(d) || d < 1) throw bad(`bad grid ${JSON.stringify(grid)}`);
  if (h % mergeSize !== 0 || w % mergeSize !== 0) throw bad(`grid ${JSON.stringify(grid)} not divisible by merge size ${mergeSize}`);
  return (t * h * w) / (mergeSize * mergeSize);
}

function countOf(text: string, token: string): number {
  let n = 0;
  for (let i = text.indexOf(token); i !== -1; i = text.indexOf(token, i + token.length)) n++;
  return n;
}

function expandOne(text: string, token: string, grids: readonly GridTHW[], mergeSize: number, kind: string): string {
  const found = countOf(text, token);
  if (found !== grids.length) {
    throw bad(`prompt has ${found} ${token} placeholders but ${grids.length} ${kind} grid(s) were given`, { placeholders: found, grids: grids.length });
  }
  if (found === 0) return text;
  let k = 0;
  return text.split(token).reduce((acc, piece, i) => (i === 0 ? piece : acc + token.repeat(tokensForGrid(grids[k++], mergeSize)) + piece), "");
}

/** Expands pads in rendered text, in order, one grid per placeholder. */
export function expandVisionPads(text: string, g: VisionGrids): string {
  const m = g.mergeSize ?? 2;
  const out = expandOne(text, g.imagePad ?? QWEN_SPECIAL_TOKENS.imagePad, g.images ?? [], m, "image");
  return expandOne(out, g.videoPad ?? QWEN_SPECIAL_TOKENS.videoPad, g.videos ?? [], m, "video");
}

/**
 * Same expansion on token ids (one id per placeholder -> n ids). Equivalent
 * to expanding the text first, since the pads are atomic added tokens, and
 * cheaper: a 2691-token image is not re-scanned by the BPE.
 */
export function expandVisionPadIds(ids: readonly number[], imagePadId: number, videoPadId: number, g: VisionGrids): number[] {
  const images = g.images ?? [];
  const videos = g.videos ?? [];
  const m = g.mergeSize ?? 2;
  const ni = ids.filter((x) => x === imagePadId).length;
  const nv = ids.filter((x) => x === videoPadId).length;
  if (ni !== images.length) throw bad(`prompt has ${ni} image placeholders but ${images.length} image grid(s) were given`);
  if (nv !== videos.length) throw bad(`prompt has ${nv} video placeholders but ${videos.length} video grid(s) were given`);
  const out: number[] = [];
  let ki = 0;
  let kv = 0;
  for (const id of ids) {
    const n = id === imagePadId ? tokensForGrid(images[ki++], m) : id === videoPadId ? tokensForGrid(videos[kv++], m) : 1;
    for (let j = 0; j < n; j++) out.push(id);
  }
  return out;
}

export interface ChatPrompt {
  text: string;
  ids: number[];
}

/** Render -> expand -> tokenize: the input_ids the processor would produce. */
export function buildChatPrompt(
  tokenizer: TextTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  grids: VisionGrids = {},
  opts: RenderOptions = {},
): ChatPrompt {
  const rendered = template.render(messages, { ...opts, variables: { ...tokenizer.templateTokens(), ...opts.variables } });
  const text = expandVisionPads(rendered, grids);
  const ids = expandVisionPadIds(tokenizer.encode(rendered), tokenizer.qwen.imagePad, tokenizer.qwen.videoPad, grids);
  return { text, ids };
}
