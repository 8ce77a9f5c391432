// Types shared by the generation layer (src/generate/): the contract with a
// model that produces next-token logits (StepModel), the sampling/stop
// parameters (camelCase; the api layer maps OpenAI's snake_case onto them),
// and what the loop streams and returns. Model-agnostic and CPU-side.

/**
 * One forward step's output. `logits` is the full next-token distribution
 * (length = the model's vocab, e.g. 151936 for Qwen2-VL; the array may be
 * reused by the model after the next step, the generation layer never keeps
 * it). `tokenId` is the model's own argmax (e.g. computed on the GPU), allowed
 * only when the step was asked for with `needLogits: false`; ties must resolve
 * to the lowest id, like torch.argmax and our CPU greedy path.
 */
export type StepResult = { logits: Float32Array } | { tokenId: number };

export interface StepOptions {
  /**
   * True when the generation layer needs the full logits (sampling,
   * penalties, logprobs). False: plain greedy, a `{ tokenId }` result is
   * enough (and `{ logits }` is still accepted).
   */
  needLogits: boolean;
  /** The request's abort signal; a model may use it to give up between kernels (throw WebvlmError "aborted"). */
  signal?: AbortSignal;
}

export interface StepModel {
  /** Runs the whole prompt; returns the distribution of the first generated token. */
  prefill(ids: number[], opts: StepOptions): Promise<StepResult>;
  /** Appends one token (the previously generated one); returns the next distribution. */
  decode(id: number, opts: StepOptions): Promise<StepResult>;
}

/** What the detokenizer and logprobs need from a tokenizer; TextTokenizer satisfies it. */
export interface TokenDecoder {
  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string;
  /** Raw vocab string (byte-level BPE alphabet for Qwen); used for logprobs' `bytes` of partial-character tokens. */
  idToToken?(id: number): string | undefined;
  /**
   * The bytes a token stands for when its vocab entry spells bytes (byte-level BPE, or a
   * byte-fallback `<0xHH>` token), else null; preferred to idToToken for logprobs' `bytes`,
   * since `<0xF0>` read through the byte-level alphabet would be the six bytes "<0xF0>".
   */
  rawBytes?(id: number): number[] | null;
}

/**
 * Sampling parameters. Defaults (when a field is absent) are the neutral ones:
 * temperature 1, topP 1, topK 0 (off), minP 0, penalties off. The api layer
 * decides whether the checkpoint's generation_config or OpenAI's defaults
 * apply (see generationConfigDefaults in sampler.ts).
 */
export interface SamplingParams {
  /** 0 = greedy (argmax after penalties). */
  temperature?: number;
  /** Nucleus: keep the smallest most-probable set whose mass reaches topP; (0, 1]. */
  topP?: number;
  /** Keep the topK highest logits (ties at the k-th value kept, as HF); 0 or -1 = off. topK 1 = greedy. */
  topK?: number;
  /** Drop tokens whose probability is below minP * (max probability); [0, 1]. */
  minP?: number;
  /** HF repetition_penalty over prompt + generated ids; > 0, 1 = off. */
  repetitionPenalty?: number;
  /** OpenAI frequency_penalty over generated ids; [-2, 2]. */
  frequencyPenalty?: number;
  /** OpenAI presence_penalty over generated ids; [-2, 2]. */
  presencePenalty?: number;
  /** PRNG seed (any safe integer) for reproducible sampling; absent = random seed. */
  seed?: number;
}

export interface GenerateParams extends SamplingParams {
  /** Upper bound on generated tokens (the eos token counts). */
  maxTokens?: number;
  /** OpenAI `stop`: up to 4 non-empty strings; matched on the streamed text, cut before the match. */
  stop?: string | string[];
  /** Extra stop token ids (besides the checkpoint's eos ids). */
  stopTokenIds?: number[];
  /** Return each generated token's logprob (OpenAI `logprobs: true`). */
  logprobs?: boolean;
  /** Number of most likely alternatives per position, 0..20 (needs logprobs). */
  topLogprobs?: number;
}

export interface GenerateOptions {
  tokenizer: TokenDecoder;
  /** The checkpoint's eos ids (Qwen2-VL generation_config: [151645, 151643]). Not emitted as text. */
  eosTokenIds: readonly number[];
  /** Model context length: generation stops with "length" when prompt + generated reaches it. */
  contextLength?: number;
  /** generation_config.json's bad_words_ids (bad_words.ts): ids never chosen (their logprobs are still reported raw). */
  badWordsIds?: readonly (readonly number[])[];
  signal?: AbortSignal;
  /** Receives each chunk as it is ready; a returned promise is awaited (back-pressure). */
  onChunk?: (chunk: GenerateChunk) => void | Promise<void>;
}

/** OpenAI logprobs entry for an alternative token. */
export interface TopLogprob {
  token: string;
  logprob: number;
  /** The token's UTF-8 bytes (exact even when the token is part of a character). */
  bytes: number[] | null;
}

/** OpenAI logprobs.content[] entry for a generated token. */
export interface TokenLogprob extends TopLogprob {
  top_logprobs: TopLogprob[];
}

/**
 * A piece of the stream. Concatenating every chunk's `text` gives the final
 * text; concatenating every chunk's `tokenIds` gives every generated id (eos
 * and stop-string tokens included). A token's id travels in the chunk that
 * releases its text, so ids whose text is held back (a partial character, a
 * possible stop-string prefix) arrive with a later chunk.
 */
export interface GenerateChunk {
  text: string;
  tokenIds: number[];
  /** One entry per id in tokenIds, when logprobs were requested. */
  logprobs?: TokenLogprob[];
}

/** "abort": the signal fired; the loop returns normally with what it had (no throw). */
export type FinishReason = "stop" | "length" | "abort";

export interface GenerateTimings {
  /** prefill() wall time. */
  prefillMs: number;
  /** From the first token to the end: decode steps, sampling, detokenizing, and time spent in onChunk / by the stream's consumer. */
  decodeMs: number;
  /** From generate() start to the first generated token being sampled. */
  ttftMs: number;
  prefillTokensPerSecond: number;
  /** (completionTokens - 1) / decodeMs: the first token comes from prefill. */
  decodeTokensPerSecond: number;
}

export interface GenerateResult {
  finishReason: FinishReason;
  /** The stop string or stop/eos token id that ended generation (like vLLM's stop_reason); null otherwise. */
  stopReason: string | number | null;
  text: string;
  tokenIds: number[];
  logprobs?: TokenLogprob[];
  completionTokens: number;
  promptTokens: number;
  /** The PRNG seed used (the given one, or the random one drawn); null for greedy runs. */
  seed: number | null;
  timings: GenerateTimings;
}
