// The worker-backed engine in a page: streamed answer, the openai client through engine.fetch,
// a typed error crossing the worker boundary, an abort mid-stream, and leaving a stream with
// `break`; results go to Playwright.
import OpenAI from "openai";
import { createEngine } from "../../src/engine/create.ts";
import { isWebvlmError } from "../../src/api/errors.ts";
import type { ChatCompletionChunk } from "../../src/api/types.ts";

/**
 * Chunks the worker sent, read off the message ports as they arrive. A stream the page left with
 * `break` yields nothing more, but its last chunks (finish reason, usage) still cross the port:
 * this is how the page sees whether the worker really stopped generating.
 */
const sniffed: ChatCompletionChunk[] = [];
function sniff(data: unknown, depth = 0): void {
  if (depth > 8 || data === null || typeof data !== "object") return;
  if ((data as { object?: unknown }).object === "chat.completion.chunk") {
    sniffed.push(data as ChatCompletionChunk);
    return;
  }
  for (const v of Array.isArray(data) ? data : Object.values(data)) sniff(v, depth + 1);
}
for (const proto of [MessagePort.prototype, Worker.prototype] as EventTarget[]) {
  const add = proto.addEventListener;
  proto.addEventListener = function (this: EventTarget, type: string, listener: EventListenerOrEventListenerObject | null, opts?: boolean | AddEventListenerOptions) {
    if (type !== "message" || typeof listener !== "function") return add.call(this, type, listener, opts);
    return add.call(this, type, function (this: EventTarget, ev: Event) {
      sniff((ev as MessageEvent).data);
      return listener.call(this, ev);
    }, opts);
  };
}

export interface WorkerReport {
  streamed?: string;
  viaOpenAI?: string;
  errorCode?: string;
  abortFinish?: string | null;
  afterAbort?: string;
  progressPhases?: string[];
  missingModelCode?: string;
  /** load() with an already aborted signal. */
  loadAbortCode?: string;
  /** A chat past the KV cache's first allocation, then a context overflow, then a request. */
  longContext?: { promptTokens: number; cachedTokens: number; kvBefore: number; kvAfter: number; prefillDone: number[]; overflowCode: string; afterOverflow: string };
  /** Three requests sent at once, answers in send order. */
  queued?: string[];
  /** Left with `break` after its first token: how the worker ended it, and its token count. */
  breakFinish?: string | null;
  breakTokens?: number;
  /** In order: "break returned", then the next request's "next done". */
  breakEvents?: string[];
  afterBreak?: string;
  error?: string;
}

declare global {
  interface Window {
    __workerDone?: (r: WorkerReport) => Promise<void>;
  }
}

const params = new URLSearchParams(location.search);

async function main(): Promise<WorkerReport> {
  const engine = await createEngine({ worker: true });
  let missingModelCode = "";
  try {
    await engine.load(new URL("/no-such-model/", params.get("model")!).href, { cache: false });
  } catch (e) {
    missingModelCode = isWebvlmError(e) ? e.code : `not a WebvlmError: ${String(e)}`;
  }
  // A load's signal reaches the worker: an aborted load is "aborted", and the next load works.
  let loadAbortCode = "";
  const loadAbort = new AbortController();
  loadAbort.abort();
  try {
    await engine.load({ baseUrl: params.get("model")! }, { quantization: "f32", embedding: "f32", vision: "f32", signal: loadAbort.signal });
    loadAbortCode = "loaded";
  } catch (e) {
    loadAbortCode = isWebvlmError(e) ? e.code : `not a WebvlmError: ${String(e)}`;
  }
  const phases = new Set<string>();
  // limits cross to the worker with the other load options.
  await engine.load({ baseUrl: params.get("model")! }, {
    quantization: "f32", embedding: "f32", vision: "f32", onProgress: (e) => phases.add(e.phase), limits: { tokenizerInputChars: 200_000 },
  });
  const image = params.get("image")!;
  const q = params.get("q")!;
  const max = Number(params.get("max"));
  const messages = [{ role: "user" as const, content: [{ type: "image_url" as const, image_url: { url: new URL(image, location.href).href } }, { type: "text" as const, text: q }] }];

  let streamed = "";
  for await (const c of await engine.chat.completions.create({ messages, max_tokens: max, temperature: 0, stream: true })) {
    streamed += c.choices[0]?.delta.content ?? "";
  }

  const client = new OpenAI({ apiKey: "local", baseURL: "http://webvlm.local/v1", fetch: engine.fetch, dangerouslyAllowBrowser: true, maxRetries: 0 });
  let viaOpenAI = "";
  const s = await client.chat.completions.create({ model: "tiny", messages, max_tokens: max, temperature: 0, stream: true });
  for await (const c of s) viaOpenAI += c.choices[0]?.delta?.content ?? "";

  let errorCode = "";
  try {
    await engine.chat.completions.create({ messages: [{ role: "user", content: [{ type: "image", image: new Blob([new Uint8Array([1, 2, 3])]) }] }], max_tokens: 2 });
  } catch (e) {
    errorCode = isWebvlmError(e) ? e.code : `not a WebvlmError: ${String(e)}`;
  }

  const ac = new AbortController();
  let abortFinish: string | null = null;
  let n = 0;
  for await (const c of await engine.chat.completions.create({ messages, max_tokens: 40, temperature: 0, stream: true, signal: ac.signal })) {
    if (c.choices[0]?.delta.content && ++n === 1) ac.abort();
    abortFinish = c.choices[0]?.finish_reason ?? abortFinish;
  }
  // An <img> element cannot be cloned to the worker: it goes over as a transferred ImageBitmap.
  const img = document.createElement("img");
  img.src = image;
  await img.decode();
  const imgMessages = [{ role: "user" as const, content: [{ type: "image" as const, image: img }, { type: "text" as const, text: q }] }];
  let afterAbort = "";
  for await (const c of await engine.chat.completions.create({ messages: imgMessages, max_tokens: max, temperature: 0, stream: true })) {
    afterAbort += c.choices[0]?.delta.content ?? "";
  }
  // Leaving a stream with break: the worker stops generating (finish "abort" after a token or two of
  // 40); the for-await's return() waits for that, so the next request runs right after it.
  const breakEvents: string[] = [];
  let brokenId = "";
  const seenBefore = sniffed.length;
  const long = { messages, max_tokens: 40, temperature: 0, stream: true as const, stream_options: { include_usage: true } };
  for await (const c of await engine.chat.completions.create(long)) {
    brokenId = c.id;
    if (c.choices[0]?.delta.content) break;
  }
  breakEvents.push("break returned");
  const ended = sniffed.slice(seenBefore).filter((c) => c.id === brokenId);
  const breakFinish = ended.map((c) => c.choices[0]?.finish_reason).find((f) => f) ?? null;
  const breakTokens = ended.find((c) => c.usage)?.usage?.completion_tokens ?? -1;
  let afterBreak = "";
  for await (const c of await engine.chat.completions.create({ messages, max_tokens: max, temperature: 0, stream: true })) {
    afterBreak += c.choices[0]?.delta.content ?? "";
  }
  breakEvents.push("next done");

  const queued = await Promise.all(["One?", "Two?", q].map(async (text, i) =>
    (await engine.chat.completions.create({ messages: i === 2 ? messages : [{ role: "user", content: text }], max_tokens: max, temperature: 0 })).choices[0].message.content));
  // Long context through the worker: a chat past the KV cache's first 1024 rows (it grows; prefill
  // progress comes back per chunk), then with a small context a prompt that overflows it (typed),
  // then a request that works.
  const longText = Array.from({ length: 165 }, (_, i) => `item ${i} is`).join(", ");
  const kvBefore = (await engine.stats()).memory.kvCache.allocatedBytes;
  const prefillDone: number[] = [];
  const grown = await engine.chat.completions.create({
    messages: [{ role: "user", content: longText }], max_tokens: 2, temperature: 0, on_prefill_progress: (done) => prefillDone.push(done),
  });
  const kvAfter = (await engine.stats()).memory.kvCache.allocatedBytes;
  await engine.load({ baseUrl: params.get("model")! }, { quantization: "f32", embedding: "f32", vision: "f32", contextLength: 1000 });
  let overflowCode = "";
  try {
    await engine.chat.completions.create({ messages: [{ role: "user", content: longText }], max_tokens: 2 });
  } catch (e) {
    overflowCode = isWebvlmError(e) ? e.code : `not a WebvlmError: ${String(e)}`;
  }
  const afterOverflow = (await engine.chat.completions.create({ messages, max_tokens: max, temperature: 0 })).choices[0].message.content;
  const longContext = { promptTokens: grown.usage.prompt_tokens, cachedTokens: grown.usage.prompt_tokens_details?.cached_tokens ?? 0, kvBefore, kvAfter, prefillDone, overflowCode, afterOverflow };
  await engine.terminate();
  return { streamed, viaOpenAI, errorCode, abortFinish, afterAbort, progressPhases: [...phases], missingModelCode, queued, breakFinish, breakTokens, breakEvents, afterBreak, loadAbortCode, longContext };
}

main().then(
  (r) => window.__workerDone?.(r),
  (e: unknown) => window.__workerDone?.({ error: String((e as Error).stack ?? e) }),
);
