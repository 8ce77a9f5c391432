// A tiny Qwen2-VL checkpoint, served over HTTP with Range requests, answers an image question
// inside Chromium (WebGPU) exactly as the Node engine answers the same greedy request.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";
import { StaticServer } from "../util/static_server.ts";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

const QUESTION = "What is in this picture?";
const IMAGE = "test/fixtures/vision/resize_src_160x120.png";
const MAX_TOKENS = 8;

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;
let expected = "";

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-e2e-"));
  await makeTinyQwen2VL(join(dir, "tiny-b"), "tiny-b");
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

test("tiny model answers an image question in Chromium exactly as in Node; survives device loss", { timeout: 900_000 }, async (t) => {
  // The Node engine's greedy answer for the same request (same checkpoint over HTTP), its image
  // preprocessed on the CPU: the browser preprocesses on the GPU (the default), so equal answers
  // also check the WGSL preprocessing in Chromium against the TypeScript path.
  const engine = await Engine.create();
  await engine.load(models.url("tiny-b"), { quantization: "f32", embedding: "f32", vision: "f32", preprocessing: "cpu" });
  const nodeAnswer = await engine.chat.completions.create({
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: join(repoRoot, IMAGE) } }, { type: "text", text: QUESTION }] }],
    max_tokens: MAX_TOKENS,
    temperature: 0,
  });
  await engine.unload();
  engine.gpu.destroy();
  expected = nodeAnswer.choices[0].message.content;
  assert.ok(expected.length > 0, "the Node engine produced text");

  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  let finish!: (r: { text?: string; chunks?: number; finish?: string | null; usage?: unknown; lostCode?: string; afterReload?: string; error?: string }) => void;
  const done = new Promise<Parameters<typeof finish>[0]>((r) => (finish = r));
  await page.exposeFunction("__engineDone", (r: Parameters<typeof finish>[0]) => finish(r));
  const q = new URLSearchParams({ model: models.url("tiny-b"), image: `/${IMAGE}`, q: QUESTION, max: String(MAX_TOKENS) });
  await page.goto(`${url}/test/browser/engine.html?${q}`);
  const r = await done;
  await page.close();
  assert.equal(r.error, undefined, `${r.error}\n${errors.join("\n")}`);
  t.diagnostic(`answer: ${JSON.stringify(r.text)} in ${r.chunks} chunks, finish ${r.finish}, usage ${JSON.stringify(r.usage)}`);
  assert.equal(r.text, expected, "the browser's streamed answer equals the Node engine's");
  assert.equal((r.usage as { preprocess_device?: string } | undefined)?.preprocess_device, "gpu", "the browser preprocessed the image on the GPU");
  assert.ok((r.chunks ?? 0) >= 1);
  assert.equal(r.finish, nodeAnswer.choices[0].finish_reason);
  assert.equal(r.lostCode, "device_lost", "after device.destroy() a request fails with device_lost");
  assert.equal(r.afterReload, expected, "after a reload on a new device the engine answers the same");
  const weightRequests = models.log.filter((l) => l.path.endsWith(".safetensors"));
  assert.ok(weightRequests.every((l) => l.range !== undefined), "weights were read with Range requests");
});

test("the worker-backed engine: same answer, openai client via engine.fetch, typed errors, abort, break", { timeout: 900_000 }, async (t) => {
  assert.ok(expected.length > 0, "runs after the Node answer is known");
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  type Report = import("../browser/worker-engine.ts").WorkerReport;
  let finish!: (r: Report) => void;
  const done = new Promise<Report>((r) => (finish = r));
  await page.exposeFunction("__workerDone", (r: Report) => finish(r));
  const q = new URLSearchParams({ model: models.url("tiny-b"), image: `/${IMAGE}`, q: QUESTION, max: String(MAX_TOKENS) });
  await page.goto(`${url}/test/browser/worker-engine.html?${q}`);
  const r = await done;
  await page.close();
  assert.equal(r.error, undefined, `${r.error}\n${errors.join("\n")}`);
  t.diagnostic(JSON.stringify(r));
  assert.equal(r.streamed, expected, "streamed from the worker equals the Node answer");
  assert.equal(r.viaOpenAI, expected, "the openai client streams the same answer through engine.fetch");
  assert.equal(r.errorCode, "image_decode_failed", "the typed error crossed the worker boundary");
  assert.equal(r.abortFinish, "abort");
  assert.equal(r.afterAbort, expected, "after an abort, a question about an <img> element gets the same answer");
  assert.ok(r.progressPhases?.includes("upload") && r.progressPhases?.includes("compile"), `progress phases: ${r.progressPhases}`);
  assert.equal(r.queued?.length, 3, "three requests at once all answered");
  assert.equal(r.queued?.[2], expected, "the third queued request is answered as if alone");
  assert.equal(r.missingModelCode, "model_not_found", "a 404 model URL is model_not_found, and the engine loads afterwards");
  // break out of a worker stream: the worker ended that generation as aborted, well short of its 40 tokens,
  // before break's return() resolved; the next request then ran and answered as before.
  assert.equal(r.breakFinish, "abort", "the worker ended the abandoned stream as aborted");
  assert.ok(r.breakTokens !== undefined && r.breakTokens >= 1 && r.breakTokens < 20, `the abandoned stream generated ${r.breakTokens} of 40 tokens`);
  assert.deepEqual(r.breakEvents, ["break returned", "next done"]);
  assert.equal(r.afterBreak, expected, "the request after a break answers as before");
  assert.equal(r.loadAbortCode, "aborted", "load()'s signal reaches the worker");
  const lc = r.longContext!;
  assert.ok(lc.promptTokens > 1024, `${lc.promptTokens} prompt tokens`);
  assert.ok(lc.kvAfter >= 2 * lc.kvBefore, `the worker's KV cache grew: ${lc.kvBefore} -> ${lc.kvAfter} bytes`);
  // Progress counts the tokens computed (the chat template's shared prefix comes from the cache).
  assert.deepEqual(lc.prefillDone, [512, 1024, lc.promptTokens - lc.cachedTokens], "prefill progress per chunk, then the end");
  assert.equal(lc.overflowCode, "context_length_exceeded");
  assert.equal(lc.afterOverflow, expected, "after an overflow the engine answers as before");
});
