// OpenAI-shaped logprobs from logits.
//
// Decision: logprobs are the log-softmax of the RAW logits, i.e. the model's
// own distribution at temperature 1, before penalties, temperature, top-k /
// top-p / min-p. This is vLLM's default (logprobs_mode "raw_logprobs") and
// matches what OpenAI's API is observed to return (logprobs do not change with
// temperature); it also makes them meaningful for greedy requests and
// independent of sampling settings. top_logprobs are the N most likely tokens
// under that distribution, most likely first (ties: lower id first), whether
// or not the sampled token is among them.
//
// `token` is the token decoded on its own (special tokens kept, a token that
// holds part of a character shows U+FFFD); `bytes` are the token's exact
// UTF-8 bytes, recovered through the tokenizer's rawBytes (byte-level BPE
// alphabet, or a byte-fallback <0xHH> token) when the token is part of a
// character.
import { byteLevelBytes } from "../tokenizer/tokenizer.ts";
import { WebvlmError } from "../api/errors.ts";
import type { TokenDecoder, TokenLogprob, TopLogprob } from "./types.ts";

/** OpenAI's limit on top_logprobs. */
export const MAX_TOP_LOGPROBS = 20;

/** log(sum(exp(logits))), in float64, NaN treated as -Infinity. */
export function logSumExp(logits: ArrayLike<number>): number {
  let mx = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > mx) mx = logits[i];
  if (mx === -Infinity) throw new WebvlmError("internal", "logprobs: every logit is -Infinity or NaN");
  let s = 0;
  for (let i = 0; i < logits.length; i++) if (logits[i] > -Infinity) s += Math.exp(logits[i] - mx);
  return mx + Math.log(s);
}

/**
 * Ids of the n largest logits, largest first, lower id first on ties.
 * One pass with a small sorted buffer: O(V) when n is small (<= 20 here).
 */
export function topNIds(logits: ArrayLike<number>, n: number): number[] {
  const k = Math.min(n, logits.length);
  if (k <= 0) return [];
  const ids: number[] = [];
  const vals: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (v !== v) continue; // NaN
    if (ids.length === k && !(v > vals[k - 1])) continue; // strict: an equal later id loses the tie
    let j = ids.length;
    while (j > 0 && vals[j - 1] < v) j--;
    ids.splice(j, 0, i); vals.splice(j, 0, v);
    if (ids.length > k) { ids.pop(); vals.pop(); }
  }
  return ids;
}

/** Token text and bytes for logprobs, cached per id. */
export class TokenInfo {
  private readonly cache = new Map<number, TopLogprob>();
  private readonly enc = new TextEncoder();
  constructor(private readonly tokenizer: TokenDecoder) {}

  /** { token, bytes } with logprob left 0 (callers fill it in). */
  get(id: number): { token: string; bytes: number[] | null } {
    let e = this.cache.get(id);
    if (!e) {
      const token = this.tokenizer.decode([id]);
      e = { token, logprob: 0, bytes: this.bytesOf(id, token) };
      this.cache.set(id, e);
    }
    return { token: e.token, bytes: e.bytes === null ? null : e.bytes.slice() };
  }

  private bytesOf(id: number, text: string): number[] {
    // A complete-text token: its UTF-8 is exact. Only partial characters
    // (decoded as U+FFFD) need the raw vocab string.
    if (!text.includes("\uFFFD")) return Array.from(this.enc.encode(text));
    const own = this.tokenizer.rawBytes?.(id);
    if (own) return own.slice();
    const raw = this.tokenizer.idToToken?.(id);
    if (raw !== undefined) {
      const dec = byteLevelBytes();
      const out: number[] = [];
      for (const ch of raw) {
        const b = dec.get(ch);
        if (b === undefined) return Array.from(this.enc.encode(text)); // not byte-level BPE
        out.push(b);
      }
      return out;
    }
    return Array.from(this.enc.encode(text));
  }
}

/**
 * The logprobs entry for `chosen` given the raw logits of its position.
 * `lse` may be passed when already computed.
 */
export function tokenLogprob(logits: Float32Array, chosen: number, topN: number, info: TokenInfo, lse = logSumExp(logits)): TokenLogprob {
  if (!Number.isInteger(topN) || topN < 0 || topN > MAX_TOP_LOGPROBS) {
    throw new WebvlmError("bad_request", `top_logprobs must be an integer in [0, ${MAX_TOP_LOGPROBS}], got ${topN}`, { param: "top_logprobs" });
  }
  const lp = (id: number): number => {
    const v = logits[id];
    return v > -Infinity ? v - lse : -Infinity;
  };
  const top: TopLogprob[] = topNIds(logits, topN).map((id) => ({ ...info.get(id), logprob: lp(id) }));
  return { ...info.get(chosen), logprob: lp(chosen), top_logprobs: top };
}
