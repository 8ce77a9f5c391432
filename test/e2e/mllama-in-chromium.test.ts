// A tiny Llama 3.2 Vision checkpoint (tiled ViT, gated cross-attention decoder layers), served over
// HTTP, answers an image question inside Chromium through the worker engine (weights through the
// IndexedDB cache, chat_template.json, tiles and aspect-ratio ids) with
// the same tokens and logprobs as the Node engine gives for the same request.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyMllama } from "../../scripts/make_tiny_mllama.ts";
import { Engine } from "../../src/engine/engine.ts";
import { StaticServer } from "../util/static_server.ts";
import type { WorkerAnswer } from "../browser/worker-answer.ts";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

const QUESTION = "What is in this picture?";
const IMAGE = "test/fixtures/vision/resize_src_160x120.png";
const MAX_TOKENS = 8;

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-mllama-e2e-"));
  await makeTinyMllama("tiny-a", join(dir, "tiny-a"));
  models = await StaticServer.start({ root: dir });
  ({ server: vite, url } = await startViteServer());
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await vite?.close();
  await models?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("tiny Llama 3.2 Vision answers an image question in Chromium through the worker engine as in Node", { timeout: 900_000 }, async (t) => {
  const engine = await Engine.create();
  let expected: { text: string; logprobs: number[]; finish: string | null };
  try {
    const info = await engine.load(models.url("tiny-a"), { quantization: "f32", embedding: "f32", vision: "f32" });
    assert.equal(info.family, "mllama");
    const r = await engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: join(repoRoot, IMAGE) } }, { type: "text", text: QUESTION }] }],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      logprobs: true,
    });
    expected = {
      text: r.choices[0].message.content,
      logprobs: (r.choices[0].logprobs?.content ?? []).map((l) => l.logprob),
      finish: r.choices[0].finish_reason,
    };
  } finally {
    await engine.unload();
    engine.gpu.destroy();
  }
  assert.ok(expected.logprobs.length > 0, "the Node engine generated tokens");

  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  let finish!: (r: WorkerAnswer) => void;
  const done = new Promise<WorkerAnswer>((r) => (finish = r));
  await page.exposeFunction("__answerDone", (r: WorkerAnswer) => finish(r));
  const q = new URLSearchParams({ model: models.url("tiny-a"), image: `/${IMAGE}`, q: QUESTION, max: String(MAX_TOKENS) });
  await page.goto(`${url}/test/browser/worker-answer.html?${q}`);
  const r = await done;
  await page.close();
  assert.equal(r.error, undefined, `${r.error}\n${errors.join("\n")}`);
  t.diagnostic(`answer: ${JSON.stringify(r.streamed)}, ${r.tokens} tokens, finish ${r.finish}`);
  assert.equal(r.family, "mllama");
  assert.equal(r.streamed, expected.text, "the worker's streamed answer equals the Node engine's");
  assert.equal(r.finish, expected.finish);
  assert.equal(r.logprobs?.length, expected.logprobs.length, "same number of tokens");
  r.logprobs!.forEach((lp, i) => assert.ok(Math.abs(lp - expected.logprobs[i]) <= 1e-3, `token ${i}: logprob ${lp} in Chromium, ${expected.logprobs[i]} in Node`));
});
