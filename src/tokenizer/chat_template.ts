// Chat prompt construction, as transformers' processors do it:
// 1. render the checkpoint's own Jinja chat template (never a hard-coded copy)
//    over OpenAI/HF-shaped messages;
// 2. tokenize;
// 3. expand each media placeholder token into as many copies as the model
//    family's processor says the item takes (Qwen2-VL: t*h*w/merge^2 per
//    grid, computed by the family, not here).
// The template is the checkpoint's code, so rendering is bounded
// (template_limits.ts: a step budget and an output-size budget, typed
// limit_exceeded past either, raisable through ChatTemplateOptions.limits or
// RenderOptions.limits).
// Nothing here knows a model family: placeholder ids and counts are the
// caller's, special-token strings come from the checkpoint's tokenizer.
import { Template } from "@huggingface/jinja";
import { WebvlmError } from "../api/errors.ts";
import { DEFAULT_TEMPLATE_LIMITS, TemplateLimitHit, compileSteps, renderBounded, type TemplateLimits } from "./template_limits.ts";
import type { TextTokenizer } from "./tokenizer.ts";

export { DEFAULT_TEMPLATE_LIMITS, type TemplateLimits } from "./template_limits.ts";

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
  /** The template variable add_vision_id (Qwen2-VL's templates then write "Picture N: " before each image). */
  addVisionId?: boolean;
  /** Special-token strings (bos_token, eos_token, ...) and other template variables. */
  variables?: Record<string, unknown>;
  /** This render's limits, over the template's (see ChatTemplateOptions.limits). */
  limits?: Partial<TemplateLimits>;
  /**
   * Give string content to the template as [{type: "text", text}] (Idefics2's template iterates
   * content parts and would print nothing for a plain string).
   */
  stringContentAsParts?: boolean;
  /** Tokenize with the tokenizer's post-processor (BOS insertion) in buildChatPrompt; default false. */
  addSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** How errors name the template (e.g. "Qwen/Qwen2-VL-2B-Instruct's chat template"). */
  name?: string;
  /**
   * Rendering limits (template_limits.ts): a template is the checkpoint's code,
   * so a render that takes more than maxSteps steps or builds a value over
   * maxOutputChars characters fails with limit_exceeded instead of hanging.
   * Defaults: DEFAULT_TEMPLATE_LIMITS; raise them here or per render.
   */
  limits?: Partial<TemplateLimits>;
}

function checkLimits(l: Partial<TemplateLimits> | undefined, base: TemplateLimits): TemplateLimits {
  const out = { ...base };
  for (const k of ["maxSteps", "maxOutputChars"] as const) {
    const v = l?.[k];
    if (v === undefined) continue;
    if (typeof v !== "number" || !(v > 0) || !(Number.isSafeInteger(v) || v === Infinity)) throw bad(`chat template limit ${k} must be a positive integer (or Infinity)`, { [k]: v });
    out[k] = v;
  }
  return out;
}

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

export function normalizeMessages(messages: readonly ChatMessage[], stringContentAsParts = false): Record<string, unknown>[] {
  if (!Array.isArray(messages) || messages.length === 0) throw bad("messages must be a non-empty array");
  return messages.map((m, i) => {
    if (m === null || typeof m !== "object" || typeof m.role !== "string") throw bad(`messages[${i}]: needs a string role`);
    const { content, ...rest } = m;
    let c: unknown;
    if (typeof content === "string") c = stringContentAsParts ? [{ type: "text", text: content }] : content;
    else if (content === null || content === undefined) c = ""; // assistant turns with only tool calls
    else if (Array.isArray(content)) c = content.map((p, j) => normalizePart(p, `messages[${i}].content[${j}]`));
    else throw bad(`messages[${i}]: content must be a string or an array of parts`);
    return { ...rest, role: m.role, content: c };
  });
}

/** A compiled chat template. Compile once per model; render per request. */
export class ChatTemplate {
  private readonly template: Template;
  readonly name: string;
  readonly limits: Readonly<TemplateLimits>;
  /** Steps the last render took (for sizing limits). */
  lastSteps = 0;

  constructor(readonly source: string, opts: ChatTemplateOptions = {}) {
    this.name = opts.name ?? "the chat template";
    this.limits = Object.freeze(checkLimits(opts.limits, DEFAULT_TEMPLATE_LIMITS));
    if (typeof source !== "string") throw bad(`${this.name} is not a string`);
    const steps = compileSteps(source);
    if (steps > this.limits.maxSteps) {
      throw this.limitError(new TemplateLimitHit("maxSteps", steps, `compiling would take about ${steps} steps (its whitespace runs are long)`), this.limits);
    }
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new WebvlmError("unsupported_feature", `${this.name} does not compile: ${(e as Error).message}`);
    }
  }

  private limitError(e: TemplateLimitHit, limits: TemplateLimits): WebvlmError {
    const limit = limits[e.limit];
    return new WebvlmError("limit_exceeded",
      `${this.name}: ${e.message} (limit ${e.limit} = ${limit}); if the template is trusted, raise it with ` +
      `new ChatTemplate(source, { limits: { ${e.limit}: ... } })${e.message.startsWith("compiling") ? "" : ` or render(messages, { limits: { ${e.limit}: ... } })`}`,
      { limit, option: e.limit, template: this.name });
  }

  render(messages: readonly ChatMessage[], opts: RenderOptions = {}): string {
    const limits = checkLimits(opts.limits, this.limits);
    const vars = {
      ...opts.variables,
      messages: normalizeMessages(messages, opts.stringContentAsParts),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      add_vision_id: opts.addVisionId ?? false,
    };
    try {
      const { text, steps } = renderBounded(this.template, vars, limits);
      this.lastSteps = steps;
      return text;
    } catch (e) {
      if (e instanceof TemplateLimitHit) throw this.limitError(e, limits);
      if (e instanceof WebvlmError) throw e;
      // A JS RangeError (call stack, string length) is the template's doing too.
      throw bad(`${this.name} failed to render: ${(e as Error).message}`);
    }
  }
}

/** The files a chat template can come from, parsed (JSON) or as text (Jinja). */
export interface ChatTemplateFiles {
  chatTemplateJinja?: string;
  chatTemplateJson?: unknown;
  /** processor_config.json (Idefics2's official checkpoints keep their template only there). */
  processorConfig?: unknown;
  tokenizerConfig?: unknown;
}

/**
 * The template transformers would use, or null: chat_template.jinja's text,
 * then chat_template.json's "chat_template", then processor_config.json's,
 * then tokenizer_config.json's (a string, or a list of {name, template}: the
 * "default" one).
 */
export function findChatTemplate(files: ChatTemplateFiles): string | null {
  if (typeof files.chatTemplateJinja === "string" && files.chatTemplateJinja.length > 0) return files.chatTemplateJinja;
  const fromJson = (files.chatTemplateJson as Record<string, unknown> | undefined)?.chat_template;
  if (typeof fromJson === "string") return fromJson;
  const fromProcessor = (files.processorConfig as Record<string, unknown> | undefined)?.chat_template;
  if (typeof fromProcessor === "string") return fromProcessor;
  const t = (files.tokenizerConfig as Record<string, unknown> | undefined)?.chat_template;
  if (typeof t === "string") return t;
  if (Array.isArray(t)) {
    const d = (t as { name?: unknown; template?: unknown }[]).find((e) => e?.name === "default");
    if (typeof d?.template === "string") return d.template;
  }
  return null;
}

/** findChatTemplate, for callers that need one: a checkpoint without any is unsupported_feature. */
export function resolveChatTemplate(files: ChatTemplateFiles): string {
  const t = findChatTemplate(files);
  if (t === null) throw new WebvlmError("unsupported_feature", "checkpoint has no chat template (chat_template.jinja / chat_template.json / processor_config.json / tokenizer_config.json)");
  return t;
}

/**
 * One kind of media placeholder: the token the template writes once per
 * item, and how many copies of it each item becomes in the prompt. The model
 * family's processor computes the counts (and owns the placeholder id, e.g.
 * config.json's image_token_id); this layer checks that placeholders and
 * items agree, and repeats.
 */
export interface MediaPlaceholder {
  /** The placeholder's token id; an added token, so the template's text holds it whole. */
  tokenId: number;
  /** Copies each item becomes (>= 1), one entry per item, in prompt order. */
  counts: readonly number[];
  /** What the items are, for error messages ("image", "video"). */
  kind?: string;
  /**
   * Per item, the ids its placeholder becomes when that is not counts[k] copies of tokenId, e.g.
   * Idefics2's <fake_token_around_image> + <image> x 64 + <fake_token_around_image> (five times for
   * a split image). counts[k] is then the number of tokenId in expansions[k] (the item's embedding
   * rows); the other ids must be added tokens.
   */
  expansions?: readonly (readonly number[])[];
  /**
   * After expansion, each doubled occurrence of this id becomes one, left to right without overlap:
   * Idefics2Processor's text.replace("<fake_token_around_image>" * 2, "<fake_token_around_image>").
   */
  collapseDoubled?: number;
}

function checkCounts(p: MediaPlaceholder): void {
  for (const n of p.counts) {
    if (!Number.isSafeInteger(n) || n < 1) throw bad(`bad token count ${n} for a ${p.kind ?? "media"} item`, { count: n });
  }
  if (p.expansions) {
    if (p.expansions.length !== p.counts.length) throw bad(`${p.expansions.length} expansions for ${p.counts.length} ${p.kind ?? "media"} item(s)`);
    p.expansions.forEach((e, k) => {
      const n = e.reduce((a, id) => a + (id === p.tokenId ? 1 : 0), 0);
      if (n !== p.counts[k]) throw bad(`the expansion of ${p.kind ?? "media"} item ${k} holds ${n} placeholder ids, its count is ${p.counts[k]}`);
    });
  }
}

/** The ids item k's placeholder becomes. */
function itemIds(p: MediaPlaceholder, k: number): readonly number[] {
  return p.expansions ? p.expansions[k] : new Array<number>(p.counts[k]).fill(p.tokenId);
}

/** Python's seq.replace(x x, x) on ids: each doubled x, left to right without overlap, becomes one. */
export function collapseDoubled(ids: readonly number[], x: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    out.push(ids[i]);
    if (ids[i] === x && ids[i + 1] === x) i++;
  }
  return out;
}

function mismatch(found: number, p: MediaPlaceholder, what: string): WebvlmError {
  const kind = p.kind ?? "media";
  return bad(`prompt has ${found} ${what} placeholders but ${p.counts.length} ${kind} item(s) were given`, { placeholders: found, items: p.counts.length, kind });
}

function countOf(text: string, token: string): number {
  let n = 0;
  for (let i = text.indexOf(token); i !== -1; i = text.indexOf(token, i + token.length)) n++;
  return n;
}

/**
 * Expands each occurrence of `token` in rendered text, in order: the k-th becomes counts[k] copies
 * (or its expansion, spelled by `contentOf`), then collapses doubled `collapseDoubled` tokens.
 */
export function expandPlaceholderText(text: string, token: string, p: MediaPlaceholder, contentOf: (id: number) => string = () => token): string {
  checkCounts(p);
  const found = countOf(text, token);
  if (found !== p.counts.length) throw mismatch(found, p, token);
  if (found === 0) return text;
  let k = 0;
  const spell = (j: number): string => (p.expansions ? p.expansions[j].map((id) => (id === p.tokenId ? token : contentOf(id))).join("") : token.repeat(p.counts[j]));
  const out = text.split(token).reduce((acc, piece, i) => (i === 0 ? piece : acc + spell(k++) + piece), "");
  if (p.collapseDoubled === undefined) return out;
  const c = contentOf(p.collapseDoubled);
  return out.split(c + c).join(c);
}

/**
 * The same expansion on token ids (one id per placeholder -> n ids), for
 * several placeholder kinds at once. Equivalent to expanding the text first,
 * since placeholders are atomic added tokens, and cheaper: a 2691-token image
 * is not re-scanned by the BPE.
 */
export function expandPlaceholderIds(ids: readonly number[], placeholders: readonly MediaPlaceholder[]): number[] {
  const byId = new Map<number, { p: MediaPlaceholder; next: number }>();
  for (const p of placeholders) {
    checkCounts(p);
    if (byId.has(p.tokenId)) throw bad(`placeholder token ${p.tokenId} given twice`, { tokenId: p.tokenId });
    byId.set(p.tokenId, { p, next: 0 });
  }
  for (const [id, e] of byId) {
    const found = ids.reduce((n, x) => n + (x === id ? 1 : 0), 0);
    if (found !== e.p.counts.length) throw mismatch(found, e.p, `${e.p.kind ?? "media"} (id ${id})`);
  }
  const out: number[] = [];
  for (const id of ids) {
    const e = byId.get(id);
    if (e) for (const x of itemIds(e.p, e.next++)) out.push(x);
    else out.push(id);
  }
  let collapsed = out;
  for (const p of placeholders) if (p.collapseDoubled !== undefined) collapsed = collapseDoubled(collapsed, p.collapseDoubled);
  return collapsed;
}

export interface ChatPrompt {
  /** The rendered prompt with placeholders expanded (for logs and tests). */
  text: string;
  ids: number[];
}

/** Render -> tokenize -> expand: the input_ids the processor would produce. */
export function buildChatPrompt(
  tokenizer: TextTokenizer,
  template: ChatTemplate,
  messages: readonly ChatMessage[],
  media: readonly MediaPlaceholder[] = [],
  opts: RenderOptions = {},
): ChatPrompt {
  const rendered = template.render(messages, { ...opts, variables: { ...tokenizer.templateTokens(), ...opts.variables } });
  const ids = expandPlaceholderIds(tokenizer.encode(rendered, { addSpecialTokens: opts.addSpecialTokens ?? false }), media);
  let text = rendered;
  for (const p of media) {
    const token = tokenizer.addedTokens.get(p.tokenId)?.content;
    if (token === undefined) throw bad(`placeholder id ${p.tokenId} is not an added token of this tokenizer`, { tokenId: p.tokenId });
    text = expandPlaceholderText(text, token, p, (id) => {
      const c = tokenizer.addedTokens.get(id)?.content;
      if (c === undefined) throw bad(`expansion id ${id} is not an added token of this tokenizer`, { tokenId: id });
      return c;
    });
  }
  return { text, ids };
}
