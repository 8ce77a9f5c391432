// A family-neutral wrapper over @huggingface/tokenizers: whatever
// tokenizer.json a checkpoint ships (byte-level BPE as in Qwen and Llama 3,
// sentencepiece-style BPE with byte fallback as in Llama 2 / Mistral / Phi-3;
// the library also runs Unigram and WordPiece models, untested here) plus the
// checkpoint's own facts about it:
// - added and special tokens: tokenizer.json's `added_tokens`, completed by
//   tokenizer_config.json's `added_tokens_decoder` (transformers adds the ids
//   the config names that tokenizer.json lacks; where both name an id the
//   content must agree, and tokenizer.json's flags are kept) and
//   `additional_special_tokens`;
// - bos/eos/pad/unk: tokenizer_config.json's strings (or {content} objects);
//   generation_config.json's eos_token_id (a number or a list), when given,
//   is the stop set, as in transformers' generate();
// - the chat template, resolved as transformers does (chat_template.ts).
// No token is known here by name: a model family looks up the ids it needs
// (tokenToId / requireId), and the ids always come from the loaded files.
// Template rendering and prompt building live in chat_template.ts.
//
// tokenizer.json is untrusted input. Its regexes are checked at load
// (regex_safety.ts: nested quantifiers and the like are refused, since a JS
// RegExp cannot be interrupted once it backtracks), and each encode call
// takes at most maxInputChars characters (DEFAULT_MAX_INPUT_CHARS unless
// raised), which bounds the slow but linear paths too: the BPE of one long
// pretoken runs at about 10 us per character on a slow CPU.
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { WebvlmError } from "../api/errors.ts";
import { findChatTemplate } from "./chat_template.ts";
import { tokenizerRegexes, unsafeRegexReason } from "./regex_safety.ts";

/**
 * Characters per encode call by default: 1M characters is about 250k tokens
 * of English (more for code and CJK), twice the longest context window of the
 * supported families (128k tokens), and about 10 s of encode on a slow CPU.
 */
export const DEFAULT_MAX_INPUT_CHARS = 1_000_000;

export interface TokenizerOptions {
  /** Characters one encode call takes at most (default DEFAULT_MAX_INPUT_CHARS); over it, limit_exceeded. */
  maxInputChars?: number;
}

function checkMaxInputChars(v: unknown): number {
  if (typeof v !== "number" || !(v > 0) || !(Number.isSafeInteger(v) || v === Infinity)) {
    throw new WebvlmError("bad_request", `tokenizer option maxInputChars must be a positive integer (or Infinity)`, { maxInputChars: v });
  }
  return v;
}

type Json = Record<string, unknown>;

/** The checkpoint files the tokenizer reads, parsed (JSON) or as text (Jinja). */
export interface TokenizerFiles {
  /** tokenizer.json (required). */
  tokenizerJson: unknown;
  /** tokenizer_config.json: special tokens, added_tokens_decoder, maybe the chat template. */
  tokenizerConfig?: unknown;
  /** generation_config.json: its eos_token_id, when given, is the stop set. */
  generationConfig?: unknown;
  /** chat_template.json ({"chat_template": "..."}), as processors save it. */
  chatTemplateJson?: unknown;
  /** chat_template.jinja's text, which newer transformers save instead. */
  chatTemplateJinja?: string;
}

export interface EncodeOptions {
  /**
   * Run tokenizer.json's post-processor (BOS/EOS insertion: Llama adds <s> or
   * <|begin_of_text|>, Qwen adds nothing). Default false: chat templates write
   * the BOS themselves, and transformers' apply_chat_template tokenizes
   * without it.
   */
  addSpecialTokens?: boolean;
  /** This call's input limit in characters, over the tokenizer's maxInputChars. */
  maxInputChars?: number;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
  /**
   * transformers' clean_up_tokenization_spaces (" ." -> ".", " n't" -> "n't").
   * Default false whatever tokenizer_config says (Llama 3's says true): the
   * clean-up is lossy and looks across token boundaries, so with it decode
   * would not invert encode and streamed text would not equal decoded text.
   * vLLM and TGI leave it off too.
   */
  cleanUpTokenizationSpaces?: boolean;
}

/** An added token as the checkpoint declares it. */
export interface AddedTokenInfo {
  id: number;
  content: string;
  /** Special tokens are skipped by decode({skipSpecialTokens: true}). */
  special: boolean;
}

/** tokenizer_config.json spells special tokens as strings or {content: ...}. */
function tokenContent(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v !== null && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  return null;
}

const bad = (msg: string, details?: Record<string, unknown>): WebvlmError => new WebvlmError("bad_request", msg, details);
const isObject = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);

/** One tokenizer.json `added_tokens` entry, fields checked (the library trusts them). */
interface AddedTokenJson {
  id: number;
  content: string;
  special: boolean;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
}

function addedTokenEntry(v: unknown, id: unknown, where: string): AddedTokenJson {
  const content = tokenContent(v);
  if (!isObject(v) || content === null || typeof id !== "number" || !Number.isSafeInteger(id) || id < 0) {
    throw bad(`${where}: an added token needs a non-negative integer id and a string content`, { entry: JSON.stringify(v)?.slice(0, 200) });
  }
  const flag = (k: string): boolean | undefined => (typeof v[k] === "boolean" ? (v[k] as boolean) : undefined);
  return {
    id, content, special: flag("special") ?? false,
    single_word: flag("single_word"), lstrip: flag("lstrip"), rstrip: flag("rstrip"), normalized: flag("normalized"),
  };
}

/** Whether tokenizer.json's decoder is (or contains) a given type. */
function hasDecoder(d: unknown, type: string): boolean {
  if (!isObject(d)) return false;
  if (d.type === type) return true;
  return Array.isArray(d.decoders) && d.decoders.some((x) => hasDecoder(x, type));
}

/** GPT-2's bytes_to_unicode, inverted: byte-level BPE alphabet character -> byte. */
let byteLevelTable: Map<string, number> | null = null;
export function byteLevelBytes(): Map<string, number> {
  if (byteLevelTable) return byteLevelTable;
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let extra = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + extra++); }
  byteLevelTable = new Map(bs.map((b, i) => [String.fromCharCode(cs[i]), b]));
  return byteLevelTable;
}

const BYTE_FALLBACK_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/** eos_token_id in generation_config.json / config.json: a number, a list, or absent. */
function idList(v: unknown): number[] | null {
  const ok = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
  if (ok(v)) return [v];
  if (Array.isArray(v)) {
    const ids = v.filter(ok);
    return ids.length ? [...new Set(ids)] : null;
  }
  return null;
}

/**
 * Refuses a tokenizer.json whose normalizer / pre-tokenizer / decoder regexes
 * could backtrack catastrophically (regex_safety.ts), before the library
 * compiles them. The checkpoint's fault, so bad_request, naming the regex.
 */
function checkRegexes(json: Json): void {
  let found;
  try {
    found = tokenizerRegexes(json);
  } catch (e) {
    throw bad(`tokenizer.json: ${(e as Error).message}`, { file: "tokenizer.json" });
  }
  for (const { path, regex } of found) {
    const reason = unsafeRegexReason(regex);
    if (reason !== null) {
      const shown = regex.length > 200 ? `${regex.slice(0, 200)}...` : regex;
      throw bad(`tokenizer.json: the regex ${JSON.stringify(shown)} at ${path} is refused: ${reason}; it could backtrack catastrophically and hang encoding`, {
        file: "tokenizer.json", path, regex, reason,
      });
    }
  }
}

function build(json: Json, cfg: Json): HfTokenizer {
  try {
    return new HfTokenizer(json, cfg);
  } catch (e) {
    throw bad(`tokenizer.json: cannot build the tokenizer (${(e as Error).message})`);
  }
}

export class TextTokenizer {
  private readonly tok: HfTokenizer;
  /** Added tokens by id (tokenizer.json's, then tokenizer_config.json's extra ones). */
  readonly addedTokens: ReadonlyMap<number, AddedTokenInfo>;
  /** Ids skipped by decode with skipSpecialTokens: special added tokens and additional_special_tokens. */
  readonly specialIds: ReadonlySet<number>;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly unkToken: string | null;
  readonly bosTokenId: number | null;
  /** The tokenizer's own eos_token id (tokenizer_config.json). */
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /**
   * Ids that end generation: generation_config.json's eos_token_id when given
   * (Llama 3.1: <|end_of_text|>, <|eom_id|>, <|eot_id|>), else [eosTokenId].
   */
  readonly eosTokenIds: readonly number[];
  /** The checkpoint's chat template (chat_template.jinja > chat_template.json > tokenizer_config.json), or null. */
  readonly chatTemplate: string | null;
  /** tokenizer_config.json's clean_up_tokenization_spaces; decode applies it only when asked (see DecodeOptions). */
  readonly cleanUpTokenizationSpaces: boolean;
  /** Number of ids the tokenizer can produce (base vocab + added tokens). */
  readonly size: number;
  /** How the vocabulary spells raw bytes, for rawBytes(). */
  private readonly byteLevel: boolean;
  private readonly byteFallback: boolean;
  /** Characters one encode call takes at most (TokenizerOptions.maxInputChars). */
  readonly maxInputChars: number;

  /**
   * tokenizerJson and tokenizerConfig as parsed from the checkpoint; `more`
   * carries the other files (see loadTokenizer, which takes them all at once).
   */
  constructor(
    tokenizerJson: unknown,
    tokenizerConfig: unknown = {},
    more: Omit<TokenizerFiles, "tokenizerJson" | "tokenizerConfig"> = {},
    opts: TokenizerOptions = {},
  ) {
    this.maxInputChars = checkMaxInputChars(opts.maxInputChars ?? DEFAULT_MAX_INPUT_CHARS);
    if (!isObject(tokenizerJson) || !isObject(tokenizerJson.model)) throw bad("tokenizer.json: not a tokenizers JSON object (no model)");
    checkRegexes(tokenizerJson);
    if (tokenizerConfig !== undefined && tokenizerConfig !== null && !isObject(tokenizerConfig)) throw bad("tokenizer_config.json: not a JSON object");
    const cfg: Json = { ...(tokenizerConfig ?? {}) };
    // The library reads additional_special_tokens as strings; the config may hold {content} objects.
    const extraSpecial = Array.isArray(cfg.additional_special_tokens)
      ? cfg.additional_special_tokens.map(tokenContent).filter((s): s is string => s !== null)
      : [];
    cfg.additional_special_tokens = extraSpecial;

    const rawAdded = tokenizerJson.added_tokens ?? [];
    if (!Array.isArray(rawAdded)) throw bad("tokenizer.json: added_tokens must be a list");
    const added: AddedTokenJson[] = rawAdded.map((a, i) => addedTokenEntry(a, isObject(a) ? a.id : undefined, `tokenizer.json added_tokens[${i}]`));
    let json: Json = { ...tokenizerJson, added_tokens: added };
    let tok = build(json, cfg);

    // tokenizer_config.json's added_tokens_decoder: ids tokenizer.json does not
    // declare as added are added (transformers does the same on load); an id
    // both declare must agree on its content.
    const declared = new Map(added.map((a) => [a.id, a]));
    const extra: AddedTokenJson[] = [];
    const fromCfg = cfg.added_tokens_decoder;
    if (fromCfg !== undefined && !isObject(fromCfg)) throw bad("tokenizer_config.json: added_tokens_decoder must be an object");
    for (const [key, v] of Object.entries(fromCfg ?? {})) {
      const e = addedTokenEntry(v, /^\d+$/.test(key) ? Number(key) : undefined, `tokenizer_config.json added_tokens_decoder[${JSON.stringify(key)}]`);
      const mine = declared.get(e.id);
      const atId = tok.id_to_token(e.id);
      const idOfContent = tok.token_to_id(e.content);
      const conflict = mine ? mine.content !== e.content : (atId !== undefined && atId !== e.content) || (idOfContent !== undefined && idOfContent !== e.id);
      if (conflict) {
        throw bad(`tokenizer_config.json says id ${e.id} is ${JSON.stringify(e.content)}, tokenizer.json disagrees`, {
          id: e.id, config: e.content, tokenizerJson: mine?.content ?? atId ?? null,
        });
      }
      if (!mine) extra.push(e);
    }
    if (extra.length > 0) {
      json = { ...json, added_tokens: [...added, ...extra] };
      tok = build(json, cfg);
    }
    this.tok = tok;

    const all = [...added, ...extra];
    this.addedTokens = new Map(all.map((a) => [a.id, { id: a.id, content: a.content, special: a.special }]));
    const special = new Set(all.filter((a) => a.special).map((a) => a.id));
    for (const s of extraSpecial) {
      const id = tok.token_to_id(s);
      if (id !== undefined) special.add(id);
    }
    this.specialIds = special;

    let maxId = -1;
    for (const id of tok.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.size = maxId + 1;

    const idOf = (s: string | null): number | null => (s === null ? null : (tok.token_to_id(s) ?? null));
    this.bosToken = tokenContent(cfg.bos_token);
    this.eosToken = tokenContent(cfg.eos_token);
    this.padToken = tokenContent(cfg.pad_token);
    this.unkToken = tokenContent(cfg.unk_token);
    this.bosTokenId = idOf(this.bosToken);
    this.eosTokenId = idOf(this.eosToken);
    this.padTokenId = idOf(this.padToken);
    const gen = more.generationConfig;
    this.eosTokenIds = (isObject(gen) ? idList(gen.eos_token_id) : null) ?? (this.eosTokenId === null ? [] : [this.eosTokenId]);
    this.chatTemplate = findChatTemplate({ chatTemplateJinja: more.chatTemplateJinja, chatTemplateJson: more.chatTemplateJson, tokenizerConfig: cfg });
    this.cleanUpTokenizationSpaces = cfg.clean_up_tokenization_spaces === true;

    const model = tokenizerJson.model as Json;
    this.byteFallback = model.byte_fallback === true;
    this.byteLevel = hasDecoder(tokenizerJson.decoder, "ByteLevel");
  }

  /** The id of an added token by its content (e.g. "<image>"), or undefined. */
  addedTokenId(content: string): number | undefined {
    for (const a of this.addedTokens.values()) if (a.content === content) return a.id;
    return undefined;
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const limit = opts.maxInputChars === undefined ? this.maxInputChars : checkMaxInputChars(opts.maxInputChars);
    if (typeof text !== "string") throw bad("tokenizer: encode takes a string");
    if (text.length > limit) {
      throw new WebvlmError("limit_exceeded",
        `tokenizer: an input of ${text.length} characters is over the limit of ${limit} characters per encode; ` +
        `shorten it, or raise the limit with loadTokenizer(files, { maxInputChars }) or encode(text, { maxInputChars })`,
        { limit, length: text.length, option: "maxInputChars" });
    }
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? false }).ids;
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    // The library rejects an empty list; the text of no tokens is "".
    if (ids.length === 0) return "";
    return this.tok.decode(Array.from(ids), {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: opts.cleanUpTokenizationSpaces ?? false,
    });
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** Id of a token that must exist (a special token a model family relies on). */
  requireId(token: string): number {
    const id = this.tok.token_to_id(token);
    if (id === undefined) throw bad(`tokenizer has no token ${JSON.stringify(token)}`, { token });
    return id;
  }

  /**
   * The exact bytes of a token whose vocabulary entry spells bytes rather
   * than text: any token of a byte-level BPE (GPT-2 alphabet), or a
   * byte-fallback token `<0xHH>`. null for other tokens and for added tokens
   * (those are text: their bytes are their content's UTF-8). Needed where a
   * token holds part of a character and its decoded text is only U+FFFD.
   */
  rawBytes(id: number): number[] | null {
    if (this.addedTokens.has(id)) return null;
    const raw = this.tok.id_to_token(id);
    if (raw === undefined) return null;
    if (this.byteFallback) {
      const m = BYTE_FALLBACK_TOKEN.exec(raw);
      if (m) return [parseInt(m[1], 16)];
    }
    if (!this.byteLevel) return null;
    const table = byteLevelBytes();
    const out: number[] = [];
    for (const ch of raw) {
      const b = table.get(ch);
      if (b === undefined) return null;
      out.push(b);
    }
    return out;
  }

  /** The special-token strings a chat template may reference (transformers passes these too). */
  templateTokens(): Record<string, string> {
    const out: Record<string, string> = {};
    if (this.bosToken !== null) out.bos_token = this.bosToken;
    if (this.eosToken !== null) out.eos_token = this.eosToken;
    if (this.padToken !== null) out.pad_token = this.padToken;
    if (this.unkToken !== null) out.unk_token = this.unkToken;
    return out;
  }
}

/** Builds the tokenizer of a checkpoint from its files (see TokenizerFiles). */
export function loadTokenizer(files: TokenizerFiles, opts: TokenizerOptions = {}): TextTokenizer {
  const { tokenizerJson, tokenizerConfig, ...more } = files;
  return new TextTokenizer(tokenizerJson, tokenizerConfig ?? {}, more, opts);
}
