// The in-thread engine on a tiny checkpoint: OpenAI-shaped requests end to end, KV reuse across
// turns (checked against a fresh engine), logprobs, stop strings, abort, queueing, and typed
// errors for bad input after which the engine still answers correctly.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encode as encodePng } from "fast-png";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import type { ChatCompletionRequest, ChatMessage } from "../../src/api/types.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import type { GpuContext } from "../../src/gpu/device.ts";

const F32 = { quantization: "f32", embedding: "f32", vision: "f32" } as const;
let dir = "";
let model = "";
let gpu: GpuContext;
let engine: Engine;

function pngDataUrl(w: number, h: number, seed: number): string {
  const data = new Uint8Array(w * h * 3);
  let s = seed;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = s >>> 24;
  }
  const png = encodePng({ width: w, height: h, data, channels: 3, depth: 8 });
  return `data:image/png;base64,${Buffer.from(png).toString("base64")}`;
}

const IMG = pngDataUrl(56, 56, 7);
const ask = (text: string, image = IMG): ChatMessage => ({
  role: "user",
  content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text }],
});
const greedy = (messages: ChatMessage[], extra: Partial<ChatCompletionRequest> = {}): ChatCompletionRequest & { stream?: false } => ({
  messages, max_tokens: 5, temperature: 0, ...extra, stream: false,
});

async function expectCode(p: Promise<unknown>, code: WebvlmErrorCode): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof WebvlmError && e.code === code);
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-engine-"));
  model = join(dir, "tiny-b");
  await makeTinyQwen2VL(model, "tiny-b");
  gpu = await acquireNodeGpu();
  engine = await Engine.create({ gpu });
  await engine.load(model, { ...F32, contextLength: 256 });
});
after(async () => {
  await engine?.unload();
  gpu?.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("a second turn reuses the cached prefix and answers as a fresh engine does", { timeout: 600_000 }, async () => {
  const first = await engine.chat.completions.create(greedy([ask("What is this?")]));
  assert.equal(first.object, "chat.completion");
  assert.equal(first.usage.prompt_tokens_details?.cached_tokens, 0);
  const turn2 = [ask("What is this?"), { role: "assistant" as const, content: first.choices[0].message.content }, { role: "user" as const, content: "And the colors?" }];
  const second = await engine.chat.completions.create(greedy(turn2));
  const cached = second.usage.prompt_tokens_details?.cached_tokens ?? 0;
  assert.ok(cached >= first.usage.prompt_tokens - 1, `cached ${cached} of the first turn's ${first.usage.prompt_tokens} prompt tokens`);

  const fresh = await Engine.create({ gpu });
  await fresh.load(model, { ...F32, contextLength: 256 });
  const expected = await fresh.chat.completions.create(greedy(turn2));
  assert.equal(expected.usage.prompt_tokens_details?.cached_tokens, 0);
  assert.equal(second.choices[0].message.content, expected.choices[0].message.content);
  assert.equal(second.usage.completion_tokens, expected.usage.completion_tokens);

  // A different image of the same size gives the same pad tokens; its cache must not be reused.
  const otherImage = pngDataUrl(56, 56, 99);
  const other = await engine.chat.completions.create(greedy([ask("What is this?", otherImage)]));
  const otherCached = other.usage.prompt_tokens_details?.cached_tokens ?? 0;
  assert.ok(otherCached > 0 && otherCached < other.usage.prompt_tokens - 10, `only the text before the image is reused (${otherCached})`);
  await fresh.unload();
  const fresh2 = await Engine.create({ gpu });
  await fresh2.load(model, { ...F32, contextLength: 256 });
  const otherExpected = await fresh2.chat.completions.create(greedy([ask("What is this?", otherImage)]));
  await fresh2.unload();
  assert.equal(other.choices[0].message.content, otherExpected.choices[0].message.content);
});

test("streaming: role first, content deltas, finish reason, usage chunk", { timeout: 600_000 }, async () => {
  const stream = await engine.chat.completions.create({ ...greedy([ask("Describe.")]), stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
  assert.equal(finish.length, 1);
  const usage = chunks[chunks.length - 1];
  assert.equal(usage.choices.length, 0);
  assert.ok(usage.usage && usage.usage.completion_tokens > 0);
  const text = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
  const whole = await engine.chat.completions.create(greedy([ask("Describe.")]));
  assert.equal(text, whole.choices[0].message.content);
});

test("logprobs and top_logprobs per generated token", { timeout: 600_000 }, async () => {
  const r = await engine.chat.completions.create(greedy([ask("Hi")], { logprobs: true, top_logprobs: 3 }));
  const lp = r.choices[0].logprobs?.content ?? [];
  assert.equal(lp.length, r.usage.completion_tokens);
  for (const t of lp) {
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 3);
    for (let i = 1; i < 3; i++) assert.ok(t.top_logprobs[i - 1].logprob >= t.top_logprobs[i].logprob);
    assert.equal(t.logprob, t.top_logprobs[0].logprob, "greedy picks the most likely token");
  }
});

test("a stop string cuts the answer before it", { timeout: 600_000 }, async () => {
  const full = (await engine.chat.completions.create(greedy([ask("Hi")], { max_tokens: 8 }))).choices[0].message.content;
  assert.ok(full.length >= 4, `answer long enough to cut: ${JSON.stringify(full)}`);
  const at = Math.floor(full.length / 2);
  const stop = full.slice(at, at + 2);
  const cut = await engine.chat.completions.create(greedy([ask("Hi")], { max_tokens: 8, stop }));
  assert.equal(cut.choices[0].finish_reason, "stop");
  assert.equal(cut.choices[0].message.content, full.slice(0, full.indexOf(stop)));
});

test("abort mid-stream, then three queued requests answer in order", { timeout: 600_000 }, async () => {
  const ac = new AbortController();
  const stream = await engine.chat.completions.create({ ...greedy([ask("Long answer please")], { max_tokens: 30 }), stream: true, signal: ac.signal });
  let finish: string | null = null;
  let n = 0;
  for await (const c of stream) {
    if (c.choices[0]?.delta.content) n++;
    if (n === 1) ac.abort();
    finish = c.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(finish, "abort");
  const alone = await Promise.all(["A?", "B?", "C?"].map(async (q) => (await engine.chat.completions.create(greedy([{ role: "user", content: q }]))).choices[0].message.content));
  const again = [];
  for (const q of ["A?", "B?", "C?"]) again.push((await engine.chat.completions.create(greedy([{ role: "user", content: q }]))).choices[0].message.content);
  assert.deepEqual(alone, again);
  const pre = new AbortController();
  pre.abort();
  await expectCode(engine.chat.completions.create({ ...greedy([{ role: "user", content: "x" }]), signal: pre.signal }), "aborted");
});

test("bad input gets a typed error and the engine keeps answering", { timeout: 600_000 }, async () => {
  const good = (await engine.chat.completions.create(greedy([ask("What is this?")]))).choices[0].message.content;
  const corrupt = `data:image/png;base64,${Buffer.from("\x89PNG\r\n\x1a\nnot really a png").toString("base64")}`;
  await expectCode(engine.chat.completions.create(greedy([ask("?", corrupt)])), "image_decode_failed");
  await expectCode(engine.chat.completions.create(greedy([ask("?", pngDataUrl(20, 20, 1))])), "image_too_small");
  await expectCode(engine.chat.completions.create(greedy([ask("?", pngDataUrl(30, 6400, 1))])), "aspect_ratio_too_large");
  await expectCode(engine.chat.completions.create(greedy([ask("?")], { n: 2 })), "bad_request");
  await expectCode(engine.chat.completions.create(greedy([])), "bad_request");
  // 256-token context: a 448x448 image alone needs 256 tokens.
  await expectCode(engine.chat.completions.create(greedy([ask("?", pngDataUrl(448, 448, 3))])), "context_length_exceeded");
  const after = (await engine.chat.completions.create(greedy([ask("What is this?")]))).choices[0].message.content;
  assert.equal(after, good);
});

test("a video given as frames is answered as the reference model answers it", { timeout: 600_000 }, async () => {
  const { greedyGenerate, loadReferenceModel } = await import("../reference/qwen2vl_reference.ts");
  const { decodeImageNode } = await import("../../src/vision/decode_node.ts");
  const { normalizeRgb8ToChw } = await import("../../src/vision/normalize.ts");
  const { patchify } = await import("../../src/models/qwen2_vl/patchify.ts");
  const { buildChatPrompt, ChatTemplate } = await import("../../src/tokenizer/chat_template.ts");
  const { TextTokenizer } = await import("../../src/tokenizer/tokenizer.ts");
  const { readFile } = await import("node:fs/promises");
  // Three 56x56 frames: an odd count, so the last frame is repeated to make t = 2.
  const frames = [pngDataUrl(56, 56, 11), pngDataUrl(56, 56, 12), pngDataUrl(56, 56, 13)];
  const question = "What happens?";
  const r = await engine.chat.completions.create(greedy([{
    role: "user",
    content: [{ type: "video", video: frames, min_pixels: 3136, max_pixels: 3136 }, { type: "text", text: question }],
  }]));

  // Expected: frames decoded and patchified by hand (56x56 needs no resize), prompt from the
  // template, answer from the independent reference.
  const chw = [];
  for (const f of [...frames, frames[2]]) {
    const img = await decodeImageNode(new Uint8Array(Buffer.from(f.split(",")[1], "base64")));
    chw.push(normalizeRgb8ToChw(img.rgb, img.width, img.height));
  }
  const { pixelValues, grid } = patchify(chw, 56, 56);
  assert.deepEqual(grid, [2, 4, 4]);
  const tok = new TextTokenizer(JSON.parse(await readFile(join(model, "tokenizer.json"), "utf8")), JSON.parse(await readFile(join(model, "tokenizer_config.json"), "utf8")));
  const template = new ChatTemplate(JSON.parse(await readFile(join(model, "chat_template.json"), "utf8")).chat_template);
  const prompt = buildChatPrompt(tok, template, [{ role: "user", content: [{ type: "video" }, { type: "text", text: question }] }], [{ kind: "video", tokenId: 151656, counts: [(grid[0] * grid[1] * grid[2]) / 4] }], { addGenerationPrompt: true });
  assert.equal(r.usage.prompt_tokens, prompt.ids.length);
  const ref = greedyGenerate(loadReferenceModel(model), prompt.ids, null, [], 5, [151645, 151643], { videoPixelValues: pixelValues, videoGrids: [grid] });
  const expected = tok.decode(ref.tokens.filter((t) => t !== 151645 && t !== 151643), { skipSpecialTokens: true });
  assert.equal(r.choices[0].message.content, expected);
});

test("a chat grows the KV cache past its first allocation; prefill progress per chunk; stats() accounts for it; an overflow is typed and the next request works", { timeout: 600_000 }, async (t) => {
  const fresh = await Engine.create({ gpu });
  try {
    // The default context is the model's own (32768 here, capped at DEFAULT_CONTEXT_TOKENS), the cache
    // starting at 1024 rows; f16 K/V by default with q8 weights.
    const info = await fresh.load(model, { quantization: "q8", embedding: "f32", vision: "f32" });
    assert.equal(info.contextLength, 32768);
    assert.equal(info.kvCache, "f16");
    const s0 = await fresh.stats();
    assert.ok(s0.memory.weightsBytes > 0, "weights counted");
    assert.equal(s0.memory.kvCache.usedBytes, 0);
    const first = s0.memory.kvCache.allocatedBytes;
    assert.ok(first > 0);
    // A prompt past the first 1024 rows (about 1100 tokens of text).
    const long = Array.from({ length: 165 }, (_, i) => `item ${i} is`).join(", ");
    const progress: [number, number][] = [];
    const r = await fresh.chat.completions.create(greedy([{ role: "user", content: long }], {
      max_tokens: 3, on_prefill_progress: (done, total) => progress.push([done, total]),
    }));
    assert.ok(r.usage.prompt_tokens > 1024, `${r.usage.prompt_tokens} prompt tokens`);
    // Prefill progress after each 512-token chunk, then the end.
    const n = r.usage.prompt_tokens;
    const chunks = Array.from({ length: Math.ceil(n / 512) - 1 }, (_, i) => [512 * (i + 1), n]);
    assert.deepEqual(progress, [...chunks, [n, n]]);
    const s1 = await fresh.stats();
    assert.ok(s1.memory.kvCache.allocatedBytes >= 2 * first, `the cache grew: ${first} -> ${s1.memory.kvCache.allocatedBytes} bytes`);
    assert.ok(s1.memory.kvCache.usedBytes > first && s1.memory.kvCache.usedBytes <= s1.memory.kvCache.allocatedBytes);
    assert.equal(s1.memory.allocatedBytes, s1.memory.weightsBytes + s1.memory.kvCache.allocatedBytes + s1.memory.activationsBytes + s1.memory.poolSlackBytes);
    t.diagnostic(`${r.usage.prompt_tokens} tokens: KV ${first} -> ${s1.memory.kvCache.allocatedBytes} bytes allocated, ${s1.memory.kvCache.usedBytes} used; weights ${s1.memory.weightsBytes}`);

    // A context that a prompt overflows: context_length_exceeded with the numbers; then a request works.
    await fresh.load(model, { quantization: "q8", embedding: "f32", vision: "f32", contextLength: 64 });
    await assert.rejects(fresh.chat.completions.create(greedy([{ role: "user", content: long }])), (e: unknown) =>
      e instanceof WebvlmError && e.code === "context_length_exceeded" && /tokens; the context holds 64/.test(e.message));
    const ok = await fresh.chat.completions.create(greedy([{ role: "user", content: "Hi" }], { max_tokens: 2 }));
    assert.ok(ok.usage.completion_tokens > 0);
  } finally {
    await fresh.unload();
  }
});
