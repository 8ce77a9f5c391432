// The `webvlm` CLI end to end: `run --request` prints an OpenAI chat.completion whose text is
// the independent reference model's greedy answer; `chat` streams the same text; bad input
// gives a typed error and exit code 1.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { decodeImageNode } from "../../src/vision/decode_node.ts";
import { preprocessImage } from "../../src/models/qwen2_vl/image_processor.ts";
import { buildChatPrompt, ChatTemplate } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { visionTokenCount } from "../../src/models/qwen2_vl/vision.ts";
import { greedyGenerate, loadReferenceModel } from "../reference/qwen2vl_reference.ts";

const run = promisify(execFile);
const repo = new URL("../../", import.meta.url).pathname;
const cli = join(repo, "scripts/cli.mjs");
const IMAGE = join(repo, "test/fixtures/vision/resize_src_160x120.png");
const QUESTION = "Describe the picture.";
const MAX_TOKENS = 6;

let dir = "";
let model = "";
let expectedText = "";
let expectedPromptTokens = 0;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-cli-"));
  model = join(dir, "tiny-b");
  await makeTinyQwen2VL(model, "tiny-b");
  // The expected answer, computed without the runtime's model code: the reference forward pass
  // over the processor's ids and pixels (both checked against Python elsewhere).
  const tok = new TextTokenizer(JSON.parse(await readFile(join(model, "tokenizer.json"), "utf8")), JSON.parse(await readFile(join(model, "tokenizer_config.json"), "utf8")));
  const template = new ChatTemplate(JSON.parse(await readFile(join(model, "chat_template.json"), "utf8")).chat_template);
  const img = await decodeImageNode(new Uint8Array(await readFile(IMAGE)));
  const pre = preprocessImage(img.rgb, img.width, img.height);
  const prompt = buildChatPrompt(tok, template, [{ role: "user", content: [{ type: "image" }, { type: "text", text: QUESTION }] }], [{ kind: "image", tokenId: 151655, counts: [visionTokenCount([pre.grid], 2)] }], { addGenerationPrompt: true });
  expectedPromptTokens = prompt.ids.length;
  const ref = greedyGenerate(loadReferenceModel(model), prompt.ids, pre.pixelValues, [pre.grid], MAX_TOKENS, [151645, 151643]);
  expectedText = tok.decode(ref.tokens.filter((t) => t !== 151645 && t !== 151643), { skipSpecialTokens: true });
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("webvlm run --request prints the chat.completion with the reference's greedy answer", { timeout: 600_000 }, async () => {
  const req = join(dir, "req.json");
  await writeFile(req, JSON.stringify({
    model,
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: IMAGE } }, { type: "text", text: QUESTION }] }],
    max_tokens: MAX_TOKENS,
    temperature: 0,
  }));
  const { stdout } = await run(process.execPath, [cli, "run", "--request", req, "--dtype", "f32"], { maxBuffer: 1 << 24 });
  const completion = JSON.parse(stdout);
  assert.equal(completion.object, "chat.completion");
  assert.equal(completion.choices.length, 1);
  assert.equal(completion.choices[0].message.role, "assistant");
  assert.equal(completion.choices[0].message.content, expectedText);
  assert.ok(["stop", "length"].includes(completion.choices[0].finish_reason));
  assert.equal(completion.usage.prompt_tokens, expectedPromptTokens);
  assert.ok(completion.usage.completion_tokens >= 1 && completion.usage.completion_tokens <= MAX_TOKENS);
  assert.ok(completion.usage.decode_tokens_per_second >= 0);
});

test("webvlm chat streams the same answer", { timeout: 600_000 }, async () => {
  const { stdout, stderr } = await run(process.execPath, [cli, "chat", "--model", model, "--image", IMAGE, "--dtype", "f32", "--max-tokens", String(MAX_TOKENS), "--temperature", "0", QUESTION], { maxBuffer: 1 << 24 });
  assert.equal(stdout.replace(/\n$/, ""), expectedText);
  assert.match(stderr, /prompt \+ \d+ completion tokens/);
});

test("a missing model is a typed error with exit code 1", async () => {
  await assert.rejects(
    run(process.execPath, [cli, "chat", "--model", join(dir, "no-such-model"), "hello"]),
    (e: { code?: number; stderr?: string }) => e.code === 1 && /model_not_found/.test(e.stderr ?? ""),
  );
});

test("webvlm run --request with a video given as frames, an image and a second turn: the reference's greedy answer", { timeout: 600_000 }, async () => {
  // Five 150x90 frames (qwen_vl_utils 0.0.8: each fetched at 140x84, padded to six; pixel values
  // checked against numpy in test/vision/video_frames.test.ts), then an image in a later turn.
  const { checkpointPreprocess, prepareMedia } = await import("../../src/models/qwen2_vl/media.ts");
  const frameDir = join(repo, "test/fixtures/vision/frames");
  const frames = [0, 1, 2, 3, 4].map((i) => join(frameDir, `five_${i}.png`));
  const messages = [
    { role: "user", content: [{ type: "video", video: frames }, { type: "text", text: "What happens?" }] },
    { role: "assistant", content: "Colours change." },
    { role: "user", content: [{ type: "image_url", image_url: { url: IMAGE } }, { type: "text", text: "And here?" }] },
  ];
  const tok = new TextTokenizer(JSON.parse(await readFile(join(model, "tokenizer.json"), "utf8")), JSON.parse(await readFile(join(model, "tokenizer_config.json"), "utf8")));
  const template = new ChatTemplate(JSON.parse(await readFile(join(model, "chat_template.json"), "utf8")).chat_template);
  const vc = { patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2, inChannels: 3 } as Parameters<typeof prepareMedia>[2];
  const [video, image] = await prepareMedia(
    [{ kind: "video", source: frames, options: {} }, { kind: "image", source: IMAGE, options: {} }], checkpointPreprocess({}), vc,
  );
  assert.deepEqual(video.payload.grid, [3, 6, 10]);
  const prompt = buildChatPrompt(tok, template, [
    { role: "user", content: [{ type: "video" }, { type: "text", text: "What happens?" }] },
    { role: "assistant", content: "Colours change." },
    { role: "user", content: [{ type: "image" }, { type: "text", text: "And here?" }] },
  ], [
    { kind: "image", tokenId: 151655, counts: [image.tokens] },
    { kind: "video", tokenId: 151656, counts: [video.tokens] },
  ], { addGenerationPrompt: true });
  const ref = greedyGenerate(loadReferenceModel(model), prompt.ids, image.payload.pixelValues as Float32Array, [image.payload.grid], MAX_TOKENS, [151645, 151643], {
    videoPixelValues: video.payload.pixelValues as Float32Array, videoGrids: [video.payload.grid],
  });
  const want = tok.decode(ref.tokens.filter((t) => t !== 151645 && t !== 151643), { skipSpecialTokens: true });

  const req = join(dir, "req-video.json");
  await writeFile(req, JSON.stringify({ model, messages, max_tokens: MAX_TOKENS, temperature: 0 }));
  const { stdout } = await run(process.execPath, [cli, "run", "--request", req, "--dtype", "f32"], { maxBuffer: 1 << 24 });
  const completion = JSON.parse(stdout);
  assert.equal(completion.usage.prompt_tokens, prompt.ids.length);
  assert.equal(completion.choices[0].message.content, want);
});
