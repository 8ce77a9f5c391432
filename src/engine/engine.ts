// The in-thread engine: load a checkpoint, answer OpenAI-shaped chat requests.
// The worker-backed engine (a later milestone) exposes this same interface.
import { WebvlmError } from "../api/errors.ts";
import { createFetchAdapter } from "../api/fetch.ts";
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChatMessage, Usage } from "../api/types.ts";
import type { GpuContext } from "../gpu/device.ts";
import { acquireGpu } from "../gpu/device.ts";
import type { WeightCacheOptions } from "../loader/cache_idb.ts";
import { openCheckpoint, type Checkpoint, type CheckpointLocation } from "../loader/checkpoint.ts";
import { packedWeightCache } from "../loader/cache_idb.ts";
import type { ProgressEvent } from "../loader/progress.ts";
import { generateStream } from "../generate/loop.ts";
import { generationConfigDefaults } from "../generate/sampler.ts";
import type { GenerateChunk, GenerateParams, GenerateResult, StepModel, StepOptions as GenStepOptions } from "../generate/types.ts";
import type { MediaProcessor, ModelCache, ModelPrefill, OpenedFamily, ModelStep, PreparedMedia, PreprocessDevice, VlmModel } from "../models/family.ts";
import { releaseMedia } from "../vision/gpu_preprocess.ts";
import { resolveFamily } from "../models/registry.ts";
import type { WeightFormat } from "../quant/formats.ts";
import { buildChatPrompt, ChatTemplate, type ChatMessage as TemplateMessage } from "../tokenizer/chat_template.ts";
import { TextTokenizer } from "../tokenizer/tokenizer.ts";
import { collectMedia, generateParams, validateRequest } from "./request.ts";
import { commonPrefix, mediaKeyedIds } from "./prefix.ts";
import { pump } from "./pump.ts";
import { checkEngineLimits, engineLimitError, templateLimits, type EngineLimits } from "./limits.ts";
import { isNode } from "../platform.ts";

export interface EngineOptions {
  /** A device to use; by default one is acquired (navigator.gpu, or Dawn in Node). */
  gpu?: GpuContext;
}

/**
 * Default context length (tokens) when LoadOptions.contextLength is not given, capped by the model's
 * max_position_embeddings and by what one storage binding holds: the KV cache starts small and
 * grows as the chat grows, so a long default costs memory only when it is used.
 */
export const DEFAULT_CONTEXT_TOKENS = 32768;

export interface LoadOptions {
  /** Weight format of the LLM's linear layers (default q4); embeddings/lm_head and the vision tower use `embedding`/`vision`. */
  quantization?: WeightFormat;
  embedding?: WeightFormat;
  vision?: WeightFormat;
  /** Context length in tokens (default DEFAULT_CONTEXT_TOKENS = 32768, at most max_position_embeddings); the KV cache grows to it as needed. */
  contextLength?: number;
  /**
   * KV cache element type (self-attention caches and cross-attention K/V): "f16" (default; packed
   * pairs, half the memory, no shader-f16 needed) or "f32" (exact). When kvCache is not given and
   * the decoder's weights are f32 (quantization and embedding "f32", as `--dtype f32` loads all
   * weights), "f32", so f32 runs stay comparable with references.
   */
  kvCache?: "f16" | "f32";
  onProgress?: (e: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Cache the checkpoint in IndexedDB (default: on in browsers, off in Node); see loader/cache_idb.ts. */
  cache?: boolean | WeightCacheOptions;
  /** Raise the chat template's and the tokenizer's input limits (engine/limits.ts) for a trusted checkpoint or long prompts. */
  limits?: EngineLimits;
  /**
   * Where images are preprocessed (default "gpu"): WGSL kernels bit-identical to the CPU path,
   * the decoded pixels going straight to the GPU; "cpu" runs the TypeScript path. Items the
   * device cannot hold fall back to the CPU either way; usage.preprocess_device says what ran.
   */
  preprocessing?: PreprocessDevice;
}

export interface ModelInfo {
  id: string;
  family: string;
  contextLength: number;
  formats: { textLinear: WeightFormat; embedding: WeightFormat; vision: WeightFormat };
  /** The KV cache's element type (LoadOptions.kvCache). */
  kvCache: "f16" | "f32";
  /** Where images are preprocessed (LoadOptions.preprocessing). */
  preprocessing: PreprocessDevice;
}

/** What the engine holds on the GPU now, in bytes (engine.stats()). */
export interface MemoryStats {
  /** Every GPU buffer webvlm holds: in use plus the pool's free buffers. */
  allocatedBytes: number;
  /** The largest allocatedBytes so far on this device. */
  peakBytes: number;
  /** The loaded model's weights. */
  weightsBytes: number;
  /** The KV cache: allocated (it starts small and grows with the chat) and filled by cached tokens. */
  kvCache: { allocatedBytes: number; usedBytes: number };
  /** Other buffers in use: activations of a running step, normalize tables, pixels awaiting a prefill. */
  activationsBytes: number;
  /** Released buffers the pool keeps for reuse (its slack). */
  poolSlackBytes: number;
}

export interface EngineStats {
  model: ModelInfo | null;
  memory: MemoryStats;
  /** Dispatches recorded and queue submits made on this device so far. */
  gpu: { dispatches: number; submits: number };
}

interface Loaded {
  info: ModelInfo;
  /** GPU bytes of the model's weights (buffers the load left in use). */
  weightsBytes: number;
  checkpoint: Checkpoint;
  model: VlmModel;
  tokenizer: TextTokenizer;
  template: ChatTemplate;
  defaults: GenerateParams;
  eosTokenIds: number[];
  /** generation_config.json's bad_words_ids (never generated). */
  badWordsIds: number[][];
  processor: MediaProcessor;
  /** The family's prompt style (string content as parts, BOS from the tokenizer). */
  prompt: OpenedFamily["prompt"];
  cache: ModelCache;
  /** Token keys (ids, with media content hashes at pad positions) of what the cache holds. */
  cachedKeys: (number | string)[];
}

async function defaultGpu(): Promise<GpuContext> {
  if (isNode) {
    const mod = (await import(/* @vite-ignore */ new URL("../gpu/node.ts", import.meta.url).href)) as typeof import("../gpu/node.ts");
    return mod.acquireNodeGpu();
  }
  return acquireGpu();
}

const newId = (): string => `chatcmpl-${Math.random().toString(36).slice(2, 12)}`;

export class Engine {
  private loaded: Loaded | null = null;
  /** Requests run one at a time, in arrival order. */
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * fetch for the official `openai` client: new OpenAI({ apiKey: "local",
   * baseURL: "http://webvlm.local/v1", fetch: engine.fetch, dangerouslyAllowBrowser: true }).
   */
  readonly fetch: typeof fetch = createFetchAdapter(this);

  private constructor(
    private device: GpuContext,
    /** Whether this engine acquired the device (and so may replace it after a loss). */
    private readonly ownsDevice: boolean,
  ) {}

  static async create(opts: EngineOptions = {}): Promise<Engine> {
    return opts.gpu ? new Engine(opts.gpu, false) : new Engine(await defaultGpu(), true);
  }

  /** The device in use; after a device loss, load() acquires a new one. */
  get gpu(): GpuContext {
    return this.device;
  }

  get model(): ModelInfo | null {
    return this.loaded?.info ?? null;
  }

  /** GPU memory (weights, KV cache allocated / used, activations, pool slack) and work counts. */
  async stats(): Promise<EngineStats> {
    const pool = this.gpu.pool;
    const L = this.loaded;
    const weightsBytes = L?.weightsBytes ?? 0;
    const kvCache = L?.cache.memory?.() ?? { allocatedBytes: 0, usedBytes: 0 };
    return {
      model: L?.info ?? null,
      memory: {
        allocatedBytes: pool.allocatedBytes,
        peakBytes: pool.peakBytes,
        weightsBytes,
        kvCache,
        activationsBytes: Math.max(0, pool.liveBytes - weightsBytes - kvCache.allocatedBytes),
        poolSlackBytes: pool.allocatedBytes - pool.liveBytes,
      },
      gpu: { ...this.gpu.stats },
    };
  }

  /**
   * Loads a checkpoint, replacing the model loaded before. Everything that can fail without the GPU
   * (options, opening the checkpoint, config/family, tokenizer, chat template, preprocessor config)
   * is checked first; a failure there leaves the previous model loaded and usable. The previous
   * model is released only right before the new weights are uploaded (marked below), since both may
   * not fit in GPU memory together; a failure from there on leaves the engine without a model.
   */
  async load(location: CheckpointLocation, opts: LoadOptions = {}): Promise<ModelInfo> {
    const requested = opts.contextLength;
    if (requested !== undefined && (typeof requested !== "number" || !Number.isSafeInteger(requested) || requested < 1)) {
      throw new WebvlmError("bad_request", `contextLength must be an integer >= 1 (tokens), got ${String(requested)}`, { param: "contextLength" });
    }
    if (opts.kvCache !== undefined && opts.kvCache !== "f16" && opts.kvCache !== "f32") {
      throw new WebvlmError("bad_request", `kvCache must be "f16" or "f32", got ${JSON.stringify(opts.kvCache)}`, { param: "kvCache" });
    }
    const limits = checkEngineLimits(opts.limits);
    const preprocessing = opts.preprocessing ?? "gpu";
    if (preprocessing !== "gpu" && preprocessing !== "cpu") {
      throw new WebvlmError("bad_request", `preprocessing must be "gpu" or "cpu", got ${JSON.stringify(preprocessing)}`, { param: "preprocessing" });
    }
    return this.enqueue(async () => {
      const checkpoint = await openCheckpoint(location, { onProgress: opts.onProgress, signal: opts.signal, cache: opts.cache });
      try {
        const family = resolveFamily(checkpoint.config).open(checkpoint.config, checkpoint.generationConfig);
        const tokenizer = new TextTokenizer(checkpoint.tokenizerJson, checkpoint.tokenizerConfig, {}, { maxInputChars: limits.tokenizerInputChars });
        if (!checkpoint.chatTemplate) throw new WebvlmError("bad_request", "the checkpoint has no chat template");
        let template: ChatTemplate;
        try {
          template = new ChatTemplate(checkpoint.chatTemplate, { name: `${checkpoint.description}'s chat template`, limits: templateLimits(limits) });
        } catch (e) {
          throw engineLimitError(e);
        }
        const formats = {
          textLinear: opts.quantization ?? "q4",
          embedding: opts.embedding ?? "f16",
          vision: opts.vision ?? "f16",
        } as const;
        let contextLength = Math.min(requested ?? DEFAULT_CONTEXT_TOKENS, family.maxPositions);
        // f32 weights where the keys and values come from (the decoder's linears and embeddings; the
        // vision format does not change them, and text-only checkpoints have no vision weights).
        const f32Decoder = formats.textLinear === "f32" && formats.embedding === "f32";
        const kvCache = opts.kvCache ?? (f32Decoder ? "f32" : "f16");
        const { sampling, eosTokenIds, badWordsIds } = generationConfigDefaults(checkpoint.generationConfig);
        const processor = family.createProcessor({
          preprocessorConfig: jsonObject(checkpoint.preprocessorConfig),
          processorConfig: jsonObject(checkpoint.processorConfig),
          addedTokenId: (content) => tokenizer.addedTokenId(content),
          // A getter: after a device loss, load() acquires a new device for the next model.
          gpu: preprocessing === "gpu" ? () => this.gpu : undefined,
        });
        if (opts.signal?.aborted) throw new WebvlmError("aborted", "the load was aborted");

        // ---- The previous model is released HERE, just before the new weights go to the GPU (GPU memory);
        // every failure above this line leaves it loaded and usable.
        this.unloadNow();
        if (this.device.lostError) {
          if (!this.ownsDevice) throw this.device.lostError;
          this.device = await defaultGpu();
        }
        const totalBytes = checkpoint.weights.totalBytes;
        let uploadedBytes = 0;
        const liveBefore = this.gpu.pool.liveBytes;
        const model = await family.load(this.gpu, checkpoint.weights, {
          ...formats,
          packedCache: checkpoint.cached ? packedWeightCache(checkpoint.description) : undefined,
          onQuantize: (label, fromCache, bytes) =>
            opts.onProgress?.({ phase: fromCache ? "cache" : "quantize", file: label, loadedBytes: bytes, totalBytes: bytes, fraction: 1 }),
          onProgress: (_done, _total, name) => {
            uploadedBytes += checkpoint.weights.has(name) ? checkpoint.weights.byteSize(name) : 0;
            opts.onProgress?.({ phase: "upload", file: name, loadedBytes: uploadedBytes, totalBytes, fraction: totalBytes ? Math.min(1, uploadedBytes / totalBytes) : 1 });
          },
        });
        // What the load left in use is the weights (its temporaries went back to the pool).
        const weightsBytes = this.gpu.pool.liveBytes - liveBefore;
        let cache: ModelCache;
        try {
          const emit = (done: number, total: number): void =>
            opts.onProgress?.({ phase: "compile", file: "pipelines", loadedBytes: done, totalBytes: total, fraction: total ? done / total : 1 });
          // The cache first (it starts small and grows), so that the warm-up compiles its kvDtype's pipelines.
          try {
            cache = model.createCache(contextLength, { kvDtype: kvCache });
          } catch (e) {
            // Without an explicit contextLength, the default shrinks to what one binding can hold.
            const fit = (e as WebvlmError).details?.maxSeq;
            if (requested !== undefined || (e as WebvlmError).code !== "context_length_exceeded" || typeof fit !== "number" || fit < 1) throw e;
            contextLength = fit;
            cache = model.createCache(contextLength, { kvDtype: kvCache });
          }
          try {
            await model.warmUp(emit);
          } catch (e) {
            cache.dispose();
            throw e;
          }
        } catch (e) {
          model.dispose();
          throw e;
        }
        this.loaded = {
          info: { id: checkpoint.description, family: family.family, contextLength, formats, kvCache, preprocessing },
          weightsBytes,
          checkpoint,
          model,
          tokenizer,
          template,
          defaults: sampling,
          // generation_config.json's eos ids, else config.json's (the family's), else the tokenizer's.
          eosTokenIds: eosTokenIds.length ? eosTokenIds : family.eosTokenIds.length ? [...family.eosTokenIds] : [...tokenizer.eosTokenIds],
          badWordsIds,
          processor,
          prompt: family.prompt,
          cache,
          cachedKeys: [],
        };
        return this.loaded.info;
      } catch (e) {
        await checkpoint.close();
        throw e;
      }
    });
  }

  async unload(): Promise<void> {
    await this.enqueue(async () => this.unloadNow());
  }

  readonly chat = {
    completions: {
      // Validation happens here, before anything is queued or streamed: a bad request rejects create().
      create: ((req: ChatCompletionRequest) => {
        try {
          validateRequest(req);
        } catch (e) {
          return Promise.reject(e);
        }
        return req.stream ? Promise.resolve(this.stream(req)) : this.complete(req);
      }) as {
        (req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
        (req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
        (req: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
      },
    },
  };

  private unloadNow(): void {
    if (!this.loaded) return;
    this.loaded.processor.dispose?.();
    this.loaded.cache.dispose();
    this.loaded.model.dispose();
    void this.loaded.checkpoint.close();
    this.loaded = null;
    // Disposing returns buffers to the pool; free them, so the next model's upload (which never
    // reuses buffers released since the last submit) does not stack on the old one's memory.
    this.gpu.pool.trim();
  }

  private enqueue<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async complete(req: ChatCompletionRequest): Promise<ChatCompletion> {
    let text = "";
    const logprobs: NonNullable<GenerateChunk["logprobs"]> = [];
    let result: RunResult | null = null;
    let model = "";
    await this.run(req, async (chunk) => {
      text += chunk.text;
      if (chunk.logprobs) logprobs.push(...chunk.logprobs);
    }, (r, m) => {
      result = r;
      model = m;
    });
    const r = result as unknown as RunResult;
    return {
      id: newId(),
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model,
      choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: r.finishReason, logprobs: req.logprobs ? { content: logprobs } : null }],
      usage: usageOf(r),
    };
  }

  private stream(req: ChatCompletionRequest): AsyncGenerator<ChatCompletionChunk> {
    const id = newId();
    const created = Math.floor(Date.now() / 1000);
    let first = true;
    // Leaving the iteration early (break, return(), throw) aborts the generation: pump calls
    // cancel, the loop stops before its next model call, and the queue moves on.
    const cancel = new AbortController();
    const signal = req.signal ? anySignal([req.signal, cancel.signal]) : cancel.signal;
    return pump<ChatCompletionChunk>((push) =>
      this.run(
        { ...req, signal },
        (chunk, model) => {
          if (chunk.text.length === 0 && !first) return;
          push({
            id, object: "chat.completion.chunk", created, model,
            choices: [{ index: 0, delta: first ? { role: "assistant", content: chunk.text } : { content: chunk.text }, finish_reason: null, logprobs: req.logprobs && chunk.logprobs ? { content: chunk.logprobs } : null }],
          });
          first = false;
        },
        (r, model) => {
          push({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: {}, finish_reason: r.finishReason, logprobs: null }] });
          if (req.stream_options?.include_usage) push({ id, object: "chat.completion.chunk", created, model, choices: [], usage: usageOf(r) });
        },
      ),
      () => cancel.abort(),
    );
  }

  /** Validates, queues and runs one request, streaming chunks to onChunk. */
  private run(
    req: ChatCompletionRequest,
    onChunk: (c: GenerateChunk, model: string) => void | Promise<void>,
    onDone: (r: RunResult, model: string) => void,
  ): Promise<void> {
    validateRequest(req);
    return this.enqueue(async () => {
      const L = this.loaded;
      if (!L) throw new WebvlmError("model_not_found", "no model loaded: call engine.load() first");
      if (req.signal?.aborted) throw new WebvlmError("aborted", "the request was aborted before it started");
      const t0 = performance.now();
      const media = await L.processor.prepare(collectMedia(req.messages), req.signal);
      try {
        await this.generate(L, req, media, performance.now() - t0, onChunk, onDone);
      } finally {
        releaseMedia(media);
      }
    });
  }

  private async generate(
    L: Loaded,
    req: ChatCompletionRequest,
    media: PreparedMedia[],
    preprocessMs: number,
    onChunk: (c: GenerateChunk, model: string) => void | Promise<void>,
    onDone: (r: RunResult, model: string) => void,
  ): Promise<void> {
    const placeholders = L.processor.placeholders(media);
    let prompt: ReturnType<typeof buildChatPrompt>;
    try {
      const { build, ...style } = L.prompt;
      prompt = build(L.tokenizer, L.template, req.messages as unknown as TemplateMessage[], placeholders,
        { addGenerationPrompt: true, addVisionId: req.add_vision_id ?? false, ...style });
    } catch (e) {
      throw engineLimitError(e);
    }
    if (prompt.ids.length >= L.info.contextLength) {
      throw new WebvlmError("context_length_exceeded", `the prompt has ${prompt.ids.length} tokens; the context holds ${L.info.contextLength}`, {
        promptTokens: prompt.ids.length,
        contextLength: L.info.contextLength,
      });
    }
    const params = generateParams(req, { ...L.defaults, maxTokens: L.info.contextLength - prompt.ids.length });
    const devices = new Set(media.map((m) => m.device ?? "cpu"));
    const stats = {
      cachedTokens: 0,
      preprocessMs,
      preprocessDevice: devices.size === 0 ? undefined : devices.size === 1 ? [...devices][0] : ("mixed" as const),
    };
    const keys = mediaKeyedIds(prompt.ids, media, placeholders);
    const gen = generateStream(this.stepModel(L, prompt.ids, keys, media, stats, prefillProgress(req.on_prefill_progress)), prompt.ids, params, {
      tokenizer: L.tokenizer,
      eosTokenIds: L.eosTokenIds,
      badWordsIds: L.badWordsIds,
      contextLength: L.info.contextLength,
      signal: req.signal,
    });
    for (;;) {
      const r = await gen.next();
      if (r.done) {
        onDone({ ...r.value, ...stats }, L.info.id);
        return;
      }
      await onChunk(r.value, L.info.id);
    }
  }

  /** The model as the generation loop sees it, reusing the cached common prefix of the prompt. */
  private stepModel(
    L: Loaded, ids: number[], keys: (number | string)[], media: PreparedMedia[], stats: { cachedTokens: number },
    onPrefillProgress?: (done: number, total: number) => void,
  ): StepModel {
    const read = (o: GenStepOptions): "logits" | "argmax" => (o.needLogits ? "logits" : "argmax");
    const toStep = (r: ModelStep) => (r.logits ? { logits: r.logits } : { tokenId: r.tokenId as number });
    return {
      prefill: async (_ids, o) => {
        // Keep at least one prompt token to compute, so prefill yields the next distribution.
        const keep = Math.min(commonPrefix(L.cachedKeys, keys), ids.length - 1);
        L.cache.truncate(keep);
        L.cachedKeys = keys.slice(0, keep);
        let r: ModelPrefill;
        try {
          let reported = false;
          const progress = onPrefillProgress && ((done: number, total: number): void => {
            reported = true;
            onPrefillProgress(done, total);
          });
          r = await L.model.prefill(ids, media, L.cache, { read: read(o), signal: o.signal, onPrefillProgress: progress });
          // The end, when chunks were reported (the last chunk's work is done once prefill returns).
          if (reported) onPrefillProgress?.(ids.length - keep, ids.length - keep);
        } finally {
          // The pixels are encoded (or not needed): free their GPU buffers before decoding.
          releaseMedia(media);
        }
        stats.cachedTokens = r.reused;
        L.cachedKeys = keys.slice();
        return toStep(r);
      },
      decode: async (id, o) => {
        const r = await L.model.decode(id, L.cache, { read: read(o), signal: o.signal });
        L.cachedKeys.push(id);
        return toStep(r);
      },
    };
  }
}

/** The request's prefill progress callback: a function, or (through the worker) the MessagePort it became. */
function prefillProgress(p: unknown): ((done: number, total: number) => void) | undefined {
  if (typeof p === "function") return p as (done: number, total: number) => void;
  if (typeof MessagePort !== "undefined" && p instanceof MessagePort) return (done, total) => p.postMessage([done, total]);
  return undefined;
}

/** A JSON file's object, or {} when the file is absent or not an object. */
function jsonObject(v: unknown): Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/** A signal that fires when any of `signals` does (AbortSignal.any where the platform has it). */
function anySignal(signals: AbortSignal[]): AbortSignal {
  const any = (AbortSignal as unknown as { any?: (s: AbortSignal[]) => AbortSignal }).any;
  if (any) return any.call(AbortSignal, signals);
  const c = new AbortController();
  for (const s of signals) {
    if (s.aborted) {
      c.abort(s.reason);
      break;
    }
    s.addEventListener("abort", () => c.abort(s.reason), { once: true });
  }
  return c.signal;
}

/** A generation result plus how many prompt tokens came from the cache and how its media were preprocessed. */
type RunResult = GenerateResult & { cachedTokens: number; preprocessMs: number; preprocessDevice?: PreprocessDevice | "mixed" };

function usageOf(r: RunResult): Usage {
  const computed = r.promptTokens - r.cachedTokens;
  return {
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.promptTokens + r.completionTokens,
    prompt_tokens_details: { cached_tokens: r.cachedTokens },
    prefill_tokens_per_second: r.timings.prefillMs > 0 ? (computed * 1000) / r.timings.prefillMs : 0,
    decode_tokens_per_second: r.timings.decodeTokensPerSecond,
    time_to_first_token_ms: r.timings.ttftMs,
    ...(r.preprocessDevice ? { preprocess_ms: r.preprocessMs, preprocess_device: r.preprocessDevice } : {}),
  };
}

export type { ChatMessage };
