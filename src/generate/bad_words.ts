// generation_config.json's bad_words_ids, as HF's NoBadWordsLogitsProcessor applies them: a
// one-id entry bans that id at every step; a longer entry bans its last id whenever the sequence
// so far (prompt + generated) ends with its other ids. Entries that are a single eos id are
// dropped (HF does the same, so that a banned eos cannot make generation endless). Banning
// changes the choice only: reported logprobs stay those of the raw logits.
import { WebvlmError } from "../api/errors.ts";

/** Parses bad_words_ids: a list of non-empty lists of token ids (bad_request naming the file otherwise). */
export function parseBadWordsIds(v: unknown): number[][] {
  if (v === undefined || v === null) return [];
  const ok = Array.isArray(v) && v.every((s) => Array.isArray(s) && s.length > 0 && s.every((x) => Number.isSafeInteger(x) && (x as number) >= 0));
  if (!ok) {
    throw new WebvlmError("bad_request", `generation_config.json: bad_words_ids must be a list of non-empty lists of token ids, got ${JSON.stringify(v)?.slice(0, 80)}`, {
      field: "bad_words_ids",
    });
  }
  return (v as number[][]).map((s) => [...s]);
}

/** Tracks the sequence's tail and says which ids are banned at the next step. */
export class BadWords {
  private readonly always: number[];
  private readonly sequences: number[][];
  /** The last (longest prefix) ids of prompt + generated. */
  private tail: number[];
  private readonly keep: number;

  constructor(badWordsIds: readonly (readonly number[])[], eosTokenIds: readonly number[], promptIds: ArrayLike<number> = []) {
    const entries = badWordsIds.filter((s) => !(s.length === 1 && eosTokenIds.includes(s[0])));
    this.always = [...new Set(entries.filter((s) => s.length === 1).map((s) => s[0]))];
    this.sequences = entries.filter((s) => s.length > 1).map((s) => [...s]);
    this.keep = Math.max(0, ...this.sequences.map((s) => s.length - 1));
    const from = Math.max(0, promptIds.length - this.keep);
    this.tail = Array.from({ length: promptIds.length - from }, (_, i) => promptIds[from + i]);
  }

  /** Whether any id can ever be banned (the loop then asks the model for full logits). */
  get active(): boolean {
    return this.always.length > 0 || this.sequences.length > 0;
  }

  /** Records a generated token. */
  accept(id: number): void {
    if (this.keep === 0) return;
    this.tail.push(id);
    if (this.tail.length > this.keep) this.tail.splice(0, this.tail.length - this.keep);
  }

  /** Ids banned at the next step. */
  banned(): number[] {
    const out = [...this.always];
    const t = this.tail;
    for (const s of this.sequences) {
      const n = s.length - 1;
      if (t.length < n) continue;
      let match = true;
      for (let i = 0; i < n && match; i++) match = t[t.length - n + i] === s[i];
      if (match) out.push(s[n]);
    }
    return out;
  }
}
