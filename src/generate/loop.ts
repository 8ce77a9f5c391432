// The generation loop: prefill, then sample -> stop checks -> detokenize ->
// stream -> decode, until eos, a stop string, max_tokens / the context
// length, or abort.
//
// Decisions:
// - Abort is a finish reason, not an error: when the signal fires the loop
//   stops before its next model call (a call in flight is not raced: the
//   model's KV cache must stay consistent; a model may watch opts.signal and
//   throw WebvlmError "aborted", which is treated the same), flushes the text
//   it has and returns finishReason "abort". The api layer may map it to an
//   error if it wants one.
// - The token that ends generation (eos, stop id, the token completing a stop
//   string, the max_tokens-th token) is never fed back through decode().
// - eos / stop ids count as completion tokens and appear in tokenIds (and in
//   logprobs), never in text. Tokens of a stop string likewise.
// - Full logits are requested from the model only when sampling, penalties,
//   bad_words_ids or logprobs need them; plain greedy accepts the model's own
//   argmax id. Logprobs are always those of the raw logits.
// - finish "stop" wins over "length" when the last allowed token completes a
//   stop condition (vLLM's order).
import { WebvlmError } from "../api/errors.ts";
import { StreamingDetokenizer } from "./detokenizer.ts";
import { MAX_TOP_LOGPROBS, TokenInfo, tokenLogprob } from "./logprobs.ts";
import { BadWords } from "./bad_words.ts";
import { Sampler } from "./sampler.ts";
import { StopStringMatcher, normalizeStop, stopTokenSet } from "./stop.ts";
import type {
  FinishReason,
  GenerateChunk,
  GenerateOptions,
  GenerateParams,
  GenerateResult,
  StepModel,
  StepOptions,
  StepResult,
  TokenLogprob,
} from "./types.ts";

/** Prompt ids decoded as detokenizer context (vLLM's initial prefix offset). */
const CONTEXT_IDS = 5;

const now = (): number => performance.now();

function isAbortError(e: unknown): boolean {
  return (e instanceof WebvlmError && e.code === "aborted") || (e instanceof Error && e.name === "AbortError");
}

function resolveLimit(params: GenerateParams, promptTokens: number, contextLength: number | undefined): number {
  const mt = params.maxTokens;
  if (mt !== undefined && (!Number.isInteger(mt) || mt < 1)) {
    throw new WebvlmError("bad_request", `max_tokens must be a positive integer, got ${mt}`, { param: "max_tokens" });
  }
  let limit = mt ?? Infinity;
  if (contextLength !== undefined) {
    if (promptTokens >= contextLength) {
      throw new WebvlmError("context_length_exceeded", `prompt has ${promptTokens} tokens; the context length is ${contextLength}`, {
        promptTokens, contextLength,
      });
    }
    limit = Math.min(limit, contextLength - promptTokens);
  }
  if (!Number.isFinite(limit)) {
    throw new WebvlmError("bad_request", "max_tokens is required when the context length is unknown", { param: "max_tokens" });
  }
  return limit;
}

/**
 * Streams the completion of `promptIds` as chunks; the generator's return
 * value is the result. Validation errors are thrown before the model is called.
 */
export async function* generateStream(
  model: StepModel,
  promptIds: readonly number[],
  params: GenerateParams,
  opts: Omit<GenerateOptions, "onChunk">,
): AsyncGenerator<GenerateChunk, GenerateResult, void> {
  const tStart = now();
  if (promptIds.length === 0) throw new WebvlmError("bad_request", "the prompt is empty");
  const limit = resolveLimit(params, promptIds.length, opts.contextLength);
  const stops = normalizeStop(params.stop);
  const stopIds = stopTokenSet(opts.eosTokenIds, params.stopTokenIds);
  const wantLogprobs = params.logprobs === true;
  const topN = params.topLogprobs ?? 0;
  if (!Number.isInteger(topN) || topN < 0 || topN > MAX_TOP_LOGPROBS) {
    throw new WebvlmError("bad_request", `top_logprobs must be an integer in [0, ${MAX_TOP_LOGPROBS}], got ${topN}`, { param: "top_logprobs" });
  }
  if (topN > 0 && !wantLogprobs) throw new WebvlmError("bad_request", "top_logprobs requires logprobs: true", { param: "top_logprobs" });
  const sampler = new Sampler(params, promptIds);
  const badWords = new BadWords(opts.badWordsIds ?? [], opts.eosTokenIds, promptIds);
  const signal = opts.signal;
  // Bad words need the logits: the model's own argmax may be a banned id.
  const stepOpts: StepOptions = { needLogits: sampler.needsLogits || wantLogprobs || badWords.active, signal };

  const detok = new StreamingDetokenizer(opts.tokenizer, { context: promptIds.slice(-CONTEXT_IDS), standaloneStart: true });
  const matcher = new StopStringMatcher(stops);
  const info = wantLogprobs ? new TokenInfo(opts.tokenizer) : null;

  const tokenIds: number[] = [];
  const allLogprobs: TokenLogprob[] = [];
  let pendingIds: number[] = [];
  let pendingLp: TokenLogprob[] = [];
  let text = "";
  let finish: FinishReason | null = null;
  let stopReason: string | number | null = null;
  let prefillMs = 0, tFirst = -1, prefilled = false;

  const chunk = (t: string): GenerateChunk => {
    const c: GenerateChunk = { text: t, tokenIds: pendingIds };
    if (wantLogprobs) c.logprobs = pendingLp;
    pendingIds = [];
    pendingLp = [];
    text += t;
    return c;
  };
  // Model calls: an abort surfacing from inside the model ends the loop like a fired signal.
  const step = async (call: () => Promise<StepResult>): Promise<StepResult | null> => {
    try {
      return await call();
    } catch (e) {
      if (signal?.aborted && isAbortError(e)) return null;
      throw e;
    }
  };
  const pick = (res: StepResult): number => {
    let id: number;
    if ("logits" in res) {
      id = sampler.sample(res.logits, badWords.banned());
      if (info) {
        const lp = tokenLogprob(res.logits, id, topN, info);
        pendingLp.push(lp);
        allLogprobs.push(lp);
      }
    } else {
      if (stepOpts.needLogits) throw new WebvlmError("internal", "the model returned a token id where full logits were requested");
      id = res.tokenId;
    }
    if (!Number.isInteger(id) || id < 0) throw new WebvlmError("internal", `the model produced an invalid token id ${id}`);
    return id;
  };

  let res: StepResult | null = null;
  if (!signal?.aborted) {
    const t = now();
    res = await step(() => model.prefill(Array.from(promptIds), stepOpts));
    prefillMs = now() - t;
    prefilled = res !== null;
  }
  let released = "";
  while (res !== null && !signal?.aborted) {
    const id = pick(res);
    if (tFirst < 0) tFirst = now();
    tokenIds.push(id);
    pendingIds.push(id);
    sampler.accept(id);
    badWords.accept(id);
    if (stopIds.has(id)) { finish = "stop"; stopReason = id; break; }
    const r = matcher.push(detok.push(id));
    if (r.stopped !== null) { released = r.text; finish = "stop"; stopReason = r.stopped; break; }
    if (r.text.length > 0) yield chunk(r.text);
    if (tokenIds.length >= limit) { finish = "length"; break; }
    if (signal?.aborted) break;
    res = await step(() => model.decode(id, stepOpts));
  }
  if (finish === null) finish = "abort";

  if (stopReason === null || typeof stopReason === "number") {
    // No stop string cut the text: release what the detokenizer and matcher hold.
    const r = matcher.push(detok.flush());
    released += r.text;
    if (r.stopped !== null) { finish = "stop"; stopReason = r.stopped; } else released += matcher.flush();
  }
  if (released.length > 0 || pendingIds.length > 0) yield chunk(released);

  const tEnd = now();
  const completionTokens = tokenIds.length;
  const decodeMs = tFirst < 0 ? 0 : tEnd - tFirst;
  const result: GenerateResult = {
    finishReason: finish,
    stopReason,
    text,
    tokenIds,
    completionTokens,
    promptTokens: promptIds.length,
    seed: sampler.seed,
    timings: {
      prefillMs,
      decodeMs,
      ttftMs: tFirst < 0 ? 0 : tFirst - tStart,
      prefillTokensPerSecond: prefillMs > 0 && prefilled ? (promptIds.length * 1000) / prefillMs : 0,
      decodeTokensPerSecond: decodeMs > 0 && completionTokens > 1 ? ((completionTokens - 1) * 1000) / decodeMs : 0,
    },
  };
  if (wantLogprobs) result.logprobs = allLogprobs;
  return result;
}

/**
 * Runs generation to the end, handing each chunk to opts.onChunk (awaited
 * when it returns a promise), and returns the result.
 */
export async function generate(
  model: StepModel,
  promptIds: readonly number[],
  params: GenerateParams,
  opts: GenerateOptions,
): Promise<GenerateResult> {
  const { onChunk, ...rest } = opts;
  const it = generateStream(model, promptIds, params, rest);
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
    if (onChunk) await onChunk(r.value);
  }
}
