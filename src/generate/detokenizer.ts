// Streaming detokenizer: turns generated ids into text pieces that are whole
// characters, such that the concatenation of the pieces (plus flush()) equals
// tokenizer.decode(allIds) (with standaloneStart, decode(generated ids) at
// the start, as transformers decodes a completion).
//
// Prefix-offset technique (HF text-generation-inference, vLLM): each step
// decodes a short window of ids, ids[prefixOffset:], and emits what it adds
// beyond the text of ids[prefixOffset:readOffset]. Decoding a window, not the
// lone token, keeps decoder-dependent context right (SentencePiece's leading
// space, byte-level BPE pieces of one character spread over tokens).
//
// A byte-level BPE token can end in the middle of a UTF-8 sequence (a piece of
// an emoji or a CJK character); the tokenizer then decodes the tail as U+FFFD.
// Text up to the trailing U+FFFD run is stable and is emitted at once; the run
// is held until a later token completes it. If the stable text stops growing
// for `maxStallTokens` tokens while a run is held, the bytes cannot be
// completing a character (UTF-8 needs at most 3 continuation bytes and every
// token carries at least one byte), so the U+FFFDs are real and are emitted.
// Special tokens are skipped (skipSpecialTokens, default true).
import type { TokenDecoder } from "./types.ts";

const REPLACEMENT = 0xfffd;

export interface DetokenizerOptions {
  skipSpecialTokens?: boolean;
  /**
   * Ids that precede the generated ones (the tail of the prompt): decoded as
   * context for the first tokens, never emitted. Ignored when its text ends
   * in U+FFFD (a prompt cut inside a character).
   */
  context?: readonly number[];
  /** Tokens without progress before a held U+FFFD run is taken as real; default 8. */
  maxStallTokens?: number;
  /**
   * Start the text as decode(generated ids) starts, as transformers' decode of a completion does:
   * a space the context gives the first piece is dropped when the generated ids decoded alone
   * begin without it (SentencePiece-style decoders strip one leading space). Default false.
   */
  standaloneStart?: boolean;
}

export class StreamingDetokenizer {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  /** Characters of decode(ids[prefixOffset:]) past the prefix text already emitted (partial release). */
  private extra = 0;
  private prefixText: string | null = "";
  private stall = 0;
  private emitted = "";
  private readonly skip: boolean;
  private readonly maxStall: number;
  /** Index in ids of the first generated id, while the start still needs the standalone check. */
  private standaloneFrom: number | null = null;

  constructor(private readonly tokenizer: TokenDecoder, opts: DetokenizerOptions = {}) {
    this.skip = opts.skipSpecialTokens ?? true;
    this.maxStall = opts.maxStallTokens ?? 8;
    const ctx = opts.context ?? [];
    if (ctx.length > 0) {
      const t = this.decode(ctx);
      if (t.length === 0 || t.charCodeAt(t.length - 1) !== REPLACEMENT) {
        this.ids.push(...ctx);
        this.readOffset = ctx.length;
        this.prefixText = t;
      }
    }
    if (opts.standaloneStart) this.standaloneFrom = this.readOffset;
  }

  /** Everything emitted so far. */
  get text(): string {
    return this.emitted;
  }

  /** Adds one generated id; returns the text it completes ("" when held). */
  push(id: number): string {
    this.ids.push(id);
    return this.step(false);
  }

  /** Emits whatever is held (an incomplete character shows as U+FFFD, as decode() does). */
  flush(): string {
    return this.step(true);
  }

  private decode(ids: readonly number[]): string {
    return this.tokenizer.decode(ids, { skipSpecialTokens: this.skip });
  }

  private step(final: boolean): string {
    if (this.prefixText === null) this.prefixText = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const prefix = this.prefixText;
    const full = this.decode(this.ids.slice(this.prefixOffset));
    let end = full.length;
    if (!final) while (end > prefix.length && full.charCodeAt(end - 1) === REPLACEMENT) end--;
    const start = prefix.length + this.extra;
    let held = end < full.length;
    if (held) {
      this.stall = end > start ? 0 : this.stall + 1;
      if (this.stall > this.maxStall) { end = full.length; held = false; }
    } else this.stall = 0;
    let out = end > start ? full.slice(start, end) : "";
    if (this.standaloneFrom !== null && out.length > 0) {
      // The completion's first text: keep a leading space only if decoding the generated ids alone keeps it.
      if (out.startsWith(" ") && !this.decode(this.ids.slice(this.standaloneFrom)).startsWith(" ")) out = out.slice(1);
      this.standaloneFrom = null;
    }
    if (!held && full.length > prefix.length) {
      // The window is complete text: slide it forward.
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.prefixText = null;
      this.extra = 0;
    } else if (end > start) this.extra = end - prefix.length;
    this.emitted += out;
    return out;
  }
}
