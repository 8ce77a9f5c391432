// Hostile input through engine.fetch with the official `openai` client: streaming requests that
// fail validation answer 4xx with the OpenAI error body (BadRequestError, status 400, code and
// param), as non-streaming ones do; null parts and bad fields are bad_request, not 500 internal;
// and the engine answers the next request correctly.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";

let dir = "";
let engine: Engine;
let client: OpenAI;
let reference = "";

const HELLO: OpenAI.Chat.ChatCompletionMessageParam[] = [{ role: "user", content: "Hello there" }];
const ask = async (): Promise<string> =>
  (await client.chat.completions.create({ model: "tiny-b", messages: HELLO, max_tokens: 4, temperature: 0 })).choices[0].message.content ?? "";

async function expect400(p: Promise<unknown>, param: string | null, message?: RegExp, code = "bad_request"): Promise<void> {
  let caught: unknown = null;
  try {
    const r = await p;
    // A stream that was answered 200 would only fail here, while iterating.
    if (r && typeof r === "object" && Symbol.asyncIterator in r) for await (const _ of r as AsyncIterable<unknown>) void _;
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof OpenAI.BadRequestError, `expected BadRequestError, got ${String(caught)}`);
  const e = caught as InstanceType<typeof OpenAI.BadRequestError>;
  assert.equal(e.status, 400);
  assert.equal(e.code, code);
  assert.equal(e.param, param);
  if (message) assert.match(e.message, message);
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-openai-hostile-"));
  await makeTinyQwen2VL(join(dir, "tiny-b"), "tiny-b");
  engine = await Engine.create();
  await engine.load(join(dir, "tiny-b"), { quantization: "f32", embedding: "f32", vision: "f32", contextLength: 256 });
  client = new OpenAI({ apiKey: "local", baseURL: "http://webvlm.local/v1", fetch: engine.fetch, maxRetries: 0 });
  reference = await ask();
  assert.ok(reference.length > 0);
});
after(async () => {
  await engine?.unload();
  engine?.gpu.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("openai client: a streaming request that fails validation is a 400 BadRequestError", { timeout: 600_000 }, async () => {
  const base = { model: "tiny-b", messages: HELLO, max_tokens: 4, temperature: 0 };
  await expect400(client.chat.completions.create({ ...base, stream: true, n: 2 }), "n", /not supported/);
  await expect400(client.chat.completions.create({ ...base, stream: true, n: 0 }), "n", /positive integer/);
  await expect400(client.chat.completions.create({ ...base, stream: true, stop: 5 as never }), "stop");
  await expect400(client.chat.completions.create({ ...base, stream: true, temperature: -1 }), "temperature", />= 0/);
  await expect400(client.chat.completions.create({ ...base, stream: true, messages: [{ role: "user", content: [null as never] }] }), "messages");
  // Found in the queue, before the first chunk: still a status, not an error event.
  const corrupt = `data:image/png;base64,${Buffer.from("\x89PNG\r\n\x1a\nnot really a png").toString("base64")}`;
  await expect400(client.chat.completions.create({ ...base, stream: true, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: corrupt } }] }] }), null, undefined, "image_decode_failed");
  // The same checks without streaming.
  await expect400(client.chat.completions.create({ ...base, n: 0 }), "n");
  await expect400(client.chat.completions.create({ ...base, stop: 5 as never }), "stop");

  // The engine streams the next request as it answers it.
  const stream = await client.chat.completions.create({ ...base, stream: true });
  let text = "";
  for await (const c of stream) text += c.choices[0]?.delta?.content ?? "";
  assert.equal(text, reference);
});

test("openai client: null request parts and bad fields are 400 bad_request with param, not 500", { timeout: 600_000 }, async () => {
  const base = { model: "tiny-b", messages: HELLO, max_tokens: 4, temperature: 0 };
  await expect400(client.chat.completions.create({ ...base, messages: [{ role: "user", content: [null as never] }] }), "messages", /content\[0\] must be a content part object/);
  await expect400(client.chat.completions.create({ ...base, messages: [null as never] }), "messages");
  const one = await client.chat.completions.create({ ...base, n: null });
  assert.equal(one.choices[0].message.content, reference, "n: null is one choice");
  await expect400(client.chat.completions.create({ ...base, n: 1.5 }), "n");
  await expect400(client.chat.completions.create({ ...base, max_tokens: 0 }), "max_tokens", /integer >= 1/);
  await expect400(client.chat.completions.create({ ...base, top_p: 2 }), "top_p");
  await expect400(client.chat.completions.create({ ...base, frequency_penalty: 9 }), "frequency_penalty", /between -2 and 2/);
  // A body that is JSON null.
  const r = await engine.fetch("http://webvlm.local/v1/chat/completions", { method: "POST", body: "null", headers: { "content-type": "application/json" } });
  assert.equal(r.status, 400);
  const body = (await r.json()) as { error: { code: string; param: string | null } };
  assert.equal(body.error.code, "bad_request");
  assert.equal(body.error.param, "messages");
  assert.equal(await ask(), reference);
});
