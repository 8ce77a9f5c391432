// Hostile input against the in-thread engine: leaving a stream early cancels its generation,
// field rules of the request (n, stop, numbers, null request / parts) give typed bad_request
// errors naming the parameter, and a failed load() keeps the model loaded before. After each,
// a following good request still answers as before.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, readFile, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import type { ChatCompletionRequest, ChatMessage } from "../../src/api/types.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { StaticServer } from "../util/static_server.ts";
import { setPrefillChunkTokens } from "../../src/models/common/step.ts";

const F32 = { quantization: "f32", embedding: "f32", vision: "f32" } as const;
let dir = "";
let model = "";
let gpu: GpuContext;
let engine: Engine;
/** Greedy answer to HELLO with max_tokens 4, computed right after the first load. */
let reference = "";

const HELLO: ChatMessage[] = [{ role: "user", content: "Hello there" }];
const greedy = (messages: ChatMessage[], extra: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest & { stream?: false } => ({
  messages, max_tokens: 4, temperature: 0, ...extra, stream: false,
});
const answer = async (): Promise<string> => (await engine.chat.completions.create(greedy(HELLO))).choices[0].message.content;

async function expectError(p: Promise<unknown> | (() => unknown), code: WebvlmErrorCode, param?: string, message?: RegExp): Promise<WebvlmError> {
  let caught: unknown = null;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof WebvlmError, `expected a WebvlmError ${code}, got ${String(caught)}`);
  const e = caught as WebvlmError;
  assert.equal(e.code, code, e.message);
  if (param !== undefined) assert.equal(e.details?.param, param, e.message);
  if (message) assert.match(e.message, message);
  return e;
}

/** Counts the model's decode calls (one per generated token after the first). */
function countDecodes(e: Engine): { count: number } {
  const counter = { count: 0 };
  const m = (e as unknown as { loaded: { model: { decode: (...a: unknown[]) => Promise<unknown> } } }).loaded.model;
  const decode = m.decode.bind(m);
  m.decode = (...a: unknown[]) => {
    counter.count++;
    return decode(...a);
  };
  return counter;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-hostile-"));
  model = join(dir, "tiny-b");
  await makeTinyQwen2VL(model, "tiny-b");
  gpu = await acquireNodeGpu();
  engine = await Engine.create({ gpu });
  await engine.load(model, { ...F32, contextLength: 256 });
  reference = await answer();
  assert.ok(reference.length > 0);
});
after(async () => {
  await engine?.unload();
  gpu?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("break out of an in-thread stream aborts its generation within one decode step", { timeout: 600_000 }, async () => {
  const decodes = countDecodes(engine);
  const LONG = 40;
  const long = greedy([{ role: "user", content: "Tell me a long story" }], { max_tokens: LONG });
  // Precondition: this request really runs LONG tokens when left alone (no early eos), so the test can fail.
  const whole = await engine.chat.completions.create(long);
  assert.equal(whole.usage.completion_tokens, LONG, "the uncancelled request generates max_tokens tokens");

  const start = decodes.count;
  const stream = await engine.chat.completions.create({ ...long, stream: true });
  let atBreak = -1;
  let chunks = 0;
  for await (const c of stream) {
    chunks++;
    if (c.choices[0]?.delta.content !== undefined && chunks >= 2) {
      atBreak = decodes.count;
      break;
    }
  }
  // The for-await's return() waited for the generation to stop: at most the step in flight ran on.
  const abandoned = decodes.count - atBreak;
  assert.ok(atBreak >= 0 && abandoned <= 1, `decode steps after break: ${abandoned}`);
  assert.ok(decodes.count - start < LONG / 2, `the abandoned stream ran ${decodes.count - start} decode steps of ${LONG}`);

  // The next request runs right away and answers as before (the KV cache is consistent).
  const before = decodes.count;
  assert.equal(await answer(), reference);
  assert.ok(decodes.count - before <= 4, "the next request ran only its own steps");

  // return() called by hand, and return() before the first next(), behave the same.
  const s2 = await engine.chat.completions.create({ ...long, stream: true });
  const it = s2[Symbol.asyncIterator]();
  await it.next();
  const mark = decodes.count;
  await it.return?.();
  assert.ok(decodes.count - mark <= 1);
  const s3 = await engine.chat.completions.create({ ...long, stream: true });
  await s3[Symbol.asyncIterator]().return?.();
  assert.equal(await answer(), reference);
});

test("an abort during a multi-chunk prefill stops it between chunks; the cache stays consistent and the next request answers", { timeout: 600_000 }, async () => {
  const loaded = (engine as unknown as { loaded: { cache: { length: number }; cachedKeys: unknown[] } }).loaded;
  const long = greedy([{ role: "user", content: "Please read this long prompt, word after word, and then answer it briefly in one line." }], { max_tokens: 4 });
  setPrefillChunkTokens(8);
  const queue = gpu.device.queue as GPUQueue & { submit: GPUQueue["submit"] };
  const original = queue.submit;
  try {
    // Precondition: this prompt needs several chunks (the request runs more than 2 submits before its first token).
    let submits = 0;
    queue.submit = function (this: GPUQueue, b: Iterable<GPUCommandBuffer>) {
      submits++;
      return original.call(this, b);
    };
    const whole = await engine.chat.completions.create(long);
    assert.ok(whole.usage.prompt_tokens > 3 * 8, `prompt of ${whole.usage.prompt_tokens} tokens spans several chunks`);
    assert.ok(submits >= Math.ceil(whole.usage.prompt_tokens / 8), `${submits} submits`);
    await engine.chat.completions.create(greedy(HELLO)); // the cache now holds another prompt

    // The abort fires during the first chunk's submit: no further chunk runs, no token is produced.
    const ac = new AbortController();
    submits = 0;
    queue.submit = function (this: GPUQueue, b: Iterable<GPUCommandBuffer>) {
      if (++submits === 1) ac.abort();
      return original.call(this, b);
    };
    const aborted = await engine.chat.completions.create({ ...long, signal: ac.signal });
    assert.equal(aborted.choices[0].finish_reason, "abort");
    assert.equal(aborted.usage.completion_tokens, 0);
    assert.equal(submits, 1, "no chunk after the abort");
    assert.equal(loaded.cache.length, loaded.cachedKeys.length, "the cache holds exactly what the engine thinks it holds");
    queue.submit = original;

    // Streaming: the same abort ends the stream with finish_reason "abort" and no content.
    const ac2 = new AbortController();
    submits = 0;
    queue.submit = function (this: GPUQueue, b: Iterable<GPUCommandBuffer>) {
      if (++submits === 1) ac2.abort();
      return original.call(this, b);
    };
    let finish: string | null = null;
    let content = "";
    for await (const c of await engine.chat.completions.create({ ...long, stream: true, signal: ac2.signal })) {
      content += c.choices[0]?.delta.content ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    queue.submit = original;
    assert.equal(finish, "abort");
    assert.equal(content, "");
    assert.equal(submits, 1);

    // Next requests on the same engine: the right answers (chunked prefill included).
    assert.equal((await engine.chat.completions.create(long)).choices[0].message.content, whole.choices[0].message.content);
  } finally {
    queue.submit = original;
    setPrefillChunkTokens();
  }
  assert.equal(await answer(), reference);
});

test("n, stop and number fields follow OpenAI's rules with typed errors", { timeout: 600_000 }, async () => {
  const create = (extra: Record<string, unknown>) => engine.chat.completions.create(greedy(HELLO, extra as Partial<ChatCompletionRequest>));
  // n: null / 1 are one choice; 0, negative, fractional, non-numbers are bad; > 1 unsupported (bad_request).
  assert.equal((await create({ n: null })).choices[0].message.content, reference);
  assert.equal((await create({ n: 1 })).choices[0].message.content, reference);
  await expectError(create({ n: 0 }), "bad_request", "n", /n must be a positive integer, got 0/);
  await expectError(create({ n: -1 }), "bad_request", "n", /positive integer/);
  await expectError(create({ n: 1.5 }), "bad_request", "n", /positive integer/);
  await expectError(create({ n: "2" }), "bad_request", "n", /positive integer/);
  await expectError(create({ n: 3 }), "bad_request", "n", /not supported/);
  // stop: string, up to 4 strings, or null.
  assert.equal((await create({ stop: null })).choices[0].message.content, reference);
  await expectError(create({ stop: 5 }), "bad_request", "stop", /stop must be a string, an array of up to 4 strings, or null/);
  await expectError(create({ stop: { a: 1 } }), "bad_request", "stop");
  await expectError(create({ stop: ["a", 5] }), "bad_request", "stop", /stop\[1\] must be a string/);
  await expectError(create({ stop: ["a", "b", "c", "d", "e"] }), "bad_request", "stop", /at most 4/);
  await expectError(create({ stop: "" }), "bad_request", "stop");
  // Numbers: the message prints the real bound.
  await expectError(create({ max_tokens: 0 }), "bad_request", "max_tokens", /integer >= 1/);
  await expectError(create({ max_tokens: 2.5 }), "bad_request", "max_tokens");
  await expectError(create({ max_tokens: "10" }), "bad_request", "max_tokens");
  await expectError(create({ max_completion_tokens: -3 }), "bad_request", "max_completion_tokens");
  const t = await expectError(create({ temperature: -1 }), "bad_request", "temperature", />= 0/);
  assert.doesNotMatch(t.message, /e\+?308|1\.79/);
  await expectError(create({ temperature: "hot" }), "bad_request", "temperature");
  await expectError(create({ top_p: 0 }), "bad_request", "top_p", /greater than 0 and at most 1/);
  await expectError(create({ top_p: 1.5 }), "bad_request", "top_p");
  await expectError(create({ top_k: 1.5 }), "bad_request", "top_k");
  await expectError(create({ min_p: 2 }), "bad_request", "min_p", /between 0 and 1/);
  const rp = await expectError(create({ repetition_penalty: 0 }), "bad_request", "repetition_penalty", /greater than 0/);
  assert.doesNotMatch(rp.message, /e\+?308|1\.79/);
  await expectError(create({ frequency_penalty: 3 }), "bad_request", "frequency_penalty", /between -2 and 2/);
  await expectError(create({ presence_penalty: -2.5 }), "bad_request", "presence_penalty", /between -2 and 2/);
  await expectError(create({ seed: 1.5 }), "bad_request", "seed");
  await expectError(create({ logprobs: "yes" }), "bad_request", "logprobs");
  await expectError(create({ top_logprobs: 21, logprobs: true }), "bad_request", "top_logprobs", /between 0 and 20/);
  await expectError(create({ top_logprobs: 2 }), "bad_request", "top_logprobs", /requires logprobs/);
  await expectError(create({ stream_options: 3 }), "bad_request", "stream_options");
  // null everywhere it is allowed means "default".
  const nulls = await create({ temperature: null, top_p: null, max_completion_tokens: null, seed: null, logprobs: null, top_logprobs: null, frequency_penalty: null, presence_penalty: null });
  assert.equal(nulls.choices[0].message.content, reference);
  assert.equal(await answer(), reference);
});

test("a null request, message or content part is a bad_request naming messages", { timeout: 600_000 }, async () => {
  const create = engine.chat.completions.create as (r: unknown) => Promise<unknown>;
  await expectError(create(null), "bad_request", "messages");
  await expectError(create(undefined), "bad_request", "messages");
  await expectError(create({ messages: [null] }), "bad_request", "messages", /messages\[0\] must be an object/);
  await expectError(create({ messages: [{ role: "user", content: [null] }] }), "bad_request", "messages", /messages\[0\]\.content\[0\] must be a content part object, got null/);
  await expectError(create({ messages: [{ role: "user", content: [{ type: "text", text: null }] }] }), "bad_request", "messages", /text must be a string/);
  await expectError(create({ messages: [{ role: "user", content: [{ type: "image_url", image_url: null }] }] }), "bad_request", "messages", /image_url\.url/);
  await expectError(create({ messages: [{ role: "user", content: [{ text: "no type" }] }] }), "bad_request", "messages", /type must be a string/);
  // Streaming requests are validated before the stream exists: create() itself rejects.
  await expectError(create({ messages: [{ role: "user", content: [null] }], stream: true }), "bad_request", "messages");
  await expectError(create({ messages: HELLO, stream: true, stop: 5 }), "bad_request", "stop");
  assert.equal(await answer(), reference);
});

test("template and tokenizer limits are raised by load({ limits }); the limit_exceeded messages name the option", { timeout: 600_000 }, async () => {
  // A checkpoint whose chat template loops 3 x 300000 times before rendering the real prompt (~2M steps).
  const slow = join(dir, "slow-template");
  await cp(model, slow, { recursive: true });
  const tj = JSON.parse(await readFile(join(slow, "chat_template.json"), "utf8")) as { chat_template: string };
  await writeFile(join(slow, "chat_template.json"), JSON.stringify({ chat_template: `${"{% for i in range(300000) %}{% endfor %}".repeat(3)}${tj.chat_template}` }));
  await engine.load(slow, { ...F32, contextLength: 256 });
  const refused = await expectError(engine.chat.completions.create(greedy(HELLO)), "limit_exceeded", undefined, /limits: \{ templateSteps/);
  assert.doesNotMatch(refused.message, /new ChatTemplate/);
  assert.equal(refused.details?.option, "limits.templateSteps");
  await engine.load(slow, { ...F32, contextLength: 256, limits: { templateSteps: 20_000_000 } });
  assert.equal(await answer(), reference, "the raised limit lets the same template render the same prompt");

  // The tokenizer's input limit: lowered, a prompt is refused naming tokenizerInputChars; raised again, it passes.
  await engine.load(model, { ...F32, contextLength: 256, limits: { tokenizerInputChars: 40 } });
  const tooLong = await expectError(engine.chat.completions.create(greedy(HELLO)), "limit_exceeded", undefined, /limits: \{ tokenizerInputChars/);
  assert.equal(tooLong.details?.option, "limits.tokenizerInputChars");
  await engine.load(model, { ...F32, contextLength: 256, limits: { tokenizerInputChars: 100_000 } });
  assert.equal(await answer(), reference);

  // Bad values are refused before anything loads, naming the option; the model stays loaded.
  for (const limits of [{ templateSteps: 0 }, { tokenizerInputChars: 1.5 }, { templateOutputChars: "many" }, { steps: 5 }]) {
    await expectError(engine.load(model, { ...F32, limits: limits as never }), "bad_request", `limits.${Object.keys(limits)[0]}`);
  }
  assert.equal(await answer(), reference);
});

test("a failed load() keeps the model loaded before, usable", { timeout: 600_000 }, async () => {
  const info = engine.model;
  assert.ok(info);
  const variant = async (name: string, change: (d: string) => Promise<void>): Promise<string> => {
    const d = join(dir, name);
    await cp(model, d, { recursive: true });
    await change(d);
    return d;
  };
  const expectKept = async (p: Promise<unknown>, code: WebvlmErrorCode, param?: string, message?: RegExp): Promise<void> => {
    await expectError(p, code, param, message);
    assert.deepEqual(engine.model, info, "the previous model is still the loaded one");
    assert.equal(await answer(), reference, "and it still answers");
  };
  // Nothing at the location: a directory that does not exist, a URL that answers 404.
  await expectKept(engine.load(join(dir, "does-not-exist"), F32), "model_not_found");
  const server = await StaticServer.start({ root: dir });
  try {
    await expectKept(engine.load(server.url("does-not-exist/"), F32), "model_not_found");
  } finally {
    await server.close();
  }
  // No config.json.
  await expectKept(engine.load(await variant("no-config", (d) => unlink(join(d, "config.json"))), F32), "model_not_found");
  // An unknown architecture.
  await expectKept(engine.load(await variant("bad-arch", async (d) => {
    const cfg = JSON.parse(await readFile(join(d, "config.json"), "utf8"));
    await writeFile(join(d, "config.json"), JSON.stringify({ ...cfg, architectures: ["GPT2LMHeadModel"], model_type: "gpt2" }));
  }), F32), "unsupported_architecture");
  // No tokenizer.json, and a tokenizer.json that is not a tokenizer.
  await expectKept(engine.load(await variant("no-tokenizer", (d) => unlink(join(d, "tokenizer.json"))), F32), "model_not_found");
  await expectKept(engine.load(await variant("bad-tokenizer", (d) => writeFile(join(d, "tokenizer.json"), JSON.stringify({ version: "1.0" }))), F32),
    "bad_request", undefined, /tokenizer\.json/);
  // No chat template anywhere.
  await expectKept(engine.load(await variant("no-template", async (d) => {
    await unlink(join(d, "chat_template.json"));
    const tc = JSON.parse(await readFile(join(d, "tokenizer_config.json"), "utf8"));
    delete tc.chat_template;
    await writeFile(join(d, "tokenizer_config.json"), JSON.stringify(tc));
  }), F32), "bad_request", undefined, /chat template/);
  // A bad generation_config.json is named as such (not "config.json:").
  await expectKept(engine.load(await variant("bad-genconfig", (d) => writeFile(join(d, "generation_config.json"), JSON.stringify({ eos_token_id: "x" }))), F32),
    "bad_request", undefined, /^generation_config\.json: eos_token_id/);
  // contextLength 0 / -1 / 1.5 / NaN: rejected at the start, naming contextLength.
  for (const contextLength of [0, -1, 1.5, Number.NaN]) {
    await expectKept(engine.load(model, { ...F32, contextLength }), "bad_request", "contextLength", /contextLength must be an integer >= 1/);
  }
  // A good load after all that replaces the model and answers the same.
  await engine.load(model, { ...F32, contextLength: 256 });
  assert.equal(await answer(), reference);
});
