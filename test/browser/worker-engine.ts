// The worker-backed engine in a page: streamed answer, the openai client through engine.fetch,
// a typed error crossing the worker boundary, and an abort mid-stream; results go to Playwright.
import OpenAI from "openai";
import { createEngine } from "../../src/engine/create.ts";
import { isWebvlmError } from "../../src/api/errors.ts";

export interface WorkerReport {
  streamed?: string;
  viaOpenAI?: string;
  errorCode?: string;
  abortFinish?: string | null;
  afterAbort?: string;
  progressPhases?: string[];
  missingModelCode?: string;
  /** Three requests sent at once, answers in send order. */
  queued?: string[];
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
  const phases = new Set<string>();
  await engine.load({ baseUrl: params.get("model")! }, { quantization: "f32", embedding: "f32", vision: "f32", onProgress: (e) => phases.add(e.phase) });
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
  const queued = await Promise.all(["One?", "Two?", q].map(async (text, i) =>
    (await engine.chat.completions.create({ messages: i === 2 ? messages : [{ role: "user", content: text }], max_tokens: max, temperature: 0 })).choices[0].message.content));
  await engine.terminate();
  return { streamed, viaOpenAI, errorCode, abortFinish, afterAbort, progressPhases: [...phases], missingModelCode, queued };
}

main().then(
  (r) => window.__workerDone?.(r),
  (e: unknown) => window.__workerDone?.({ error: String((e as Error).stack ?? e) }),
);
