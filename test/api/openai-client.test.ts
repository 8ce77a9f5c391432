// The official `openai` npm client, unchanged, talking to the engine through engine.fetch.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";

const IMAGE = new URL("../fixtures/vision/resize_src_160x120.png", import.meta.url).pathname;
let dir = "";
let engine: Engine;
let client: OpenAI;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-openai-"));
  await makeTinyQwen2VL(join(dir, "tiny-b"), "tiny-b");
  engine = await Engine.create();
  await engine.load(join(dir, "tiny-b"), { quantization: "f32", embedding: "f32", vision: "f32" });
  client = new OpenAI({ apiKey: "local", baseURL: "http://webvlm.local/v1", fetch: engine.fetch, maxRetries: 0 });
});
after(async () => {
  await engine?.unload();
  engine?.gpu.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
  { role: "user", content: [{ type: "image_url", image_url: { url: IMAGE } }, { type: "text", text: "What is in the image?" }] },
];

test("openai client: a completion, then the same answer streamed", { timeout: 600_000 }, async () => {
  const completion = await client.chat.completions.create({ model: "tiny-b", messages, max_tokens: 5, temperature: 0 });
  assert.equal(completion.object, "chat.completion");
  const text = completion.choices[0].message.content ?? "";
  assert.ok(text.length > 0);
  assert.ok(completion.usage && completion.usage.completion_tokens > 0);

  const direct = await engine.chat.completions.create({ messages: messages as never, max_tokens: 5, temperature: 0, stream: false });
  assert.equal(text, direct.choices[0].message.content, "the client sees what the engine answers");

  const stream = await client.chat.completions.create({ model: "tiny-b", messages, max_tokens: 5, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let streamed = "";
  let usage: OpenAI.CompletionUsage | undefined;
  let finish: string | null = null;
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(streamed, text);
  assert.equal(finish, completion.choices[0].finish_reason);
  assert.equal(usage?.completion_tokens, completion.usage?.completion_tokens);
});

test("openai client: models list and typed errors as API errors", { timeout: 600_000 }, async () => {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  await assert.rejects(
    client.chat.completions.create({ model: "tiny-b", messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }] }], max_tokens: 2 }),
    (e: unknown) => e instanceof OpenAI.BadRequestError && (e as InstanceType<typeof OpenAI.APIError>).code === "image_decode_failed",
  );
  await assert.rejects(
    client.chat.completions.create({ model: "tiny-b", messages, max_tokens: 2, n: 2 }),
    (e: unknown) => e instanceof OpenAI.BadRequestError && (e as InstanceType<typeof OpenAI.APIError>).code === "bad_request",
  );
  const after = await client.chat.completions.create({ model: "tiny-b", messages: [{ role: "user", content: "Hello" }], max_tokens: 3, temperature: 0 });
  assert.ok((after.choices[0].message.content ?? "").length > 0, "the engine answers after errors");
});
