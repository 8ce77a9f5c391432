// Video files in Chromium (test/browser/video.ts measures; the expectations are here): short
// MP4 and WebM clips written in the page with mediabunny over WebCodecs' encoders, 20 frames at
// 10 fps of 64x48, frame i a solid colour (colourOf). Sampled by qwen_vl_utils' video-file rules
// (counts, indices, timestamps, sizes for several option sets), each sampled frame equal byte for
// byte to the decoder's own frame (all frames decoded in order), progress and abort between
// frames, then one question about the WebM answered through the worker engine by the tiny
// Qwen2-VL, equal to the Node engine's answer for the same frames given as a frame list (PNG).
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";
import { StaticServer } from "../util/static_server.ts";
import type { VideoResult } from "../browser/video.ts";
import { launchChromium, startViteServer } from "./browser.ts";

const QUESTION = "What happens in this video?";
const MAX_TOKENS = 8;

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-video-"));
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

// 20 frames at 10 fps (timestamps i/10). Expected by qwen_vl_utils fetch_video (see video_sampling.test.ts).
const EXPECTED: { indices: number[] | null; size?: [number, number]; total?: number; first?: number; error?: RegExp }[] = [
  { indices: [0, 6, 13, 19], size: [280, 392] }, // 2 s * 2 fps = 4; 48x64 (h x w) raised to min_pixels 128*28*28
  { indices: [0, 4, 8, 11, 15, 19] }, // nframes 6: linspace(0, 19, 6) = 0, 3.8, 7.6, 11.4, 15.2, 19
  { indices: [0, 4, 8, 11, 15, 19] }, // fps 4 -> 8, max_frames 6
  { indices: [0, 2, 4, 6, 8, 11, 13, 15, 17, 19] }, // min_frames 10
  { indices: [0, 3, 6, 9], total: 10, first: 10 }, // video_start 1 s: frames 10..19
  { indices: [0, 6, 13, 19], size: [56, 56] }, // resized_height/width 56
  { indices: null, error: /^bad_request: nframes should be in the interval \[2, 20\]/ },
];

let webmBase64 = "";

test("video files in Chromium: sampled as qwen_vl_utils says, frames equal to the decoder's, abort, one answer like Node's", { timeout: 300_000 }, async (t) => {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  let finish!: (r: VideoResult) => void;
  const done = new Promise<VideoResult>((r) => (finish = r));
  await page.exposeFunction("__videoDone", (r: VideoResult) => finish(r));
  const q = new URLSearchParams({ model: models.url("tiny-b"), q: QUESTION, max: String(MAX_TOKENS) });
  await page.goto(`${url}/test/browser/video.html?${q}`);
  const r = await done;
  await page.close();
  assert.equal(r.error, undefined, `${r.error}\n${errors.join("\n")}`);
  t.diagnostic(`page times (ms): ${JSON.stringify(r.times)}`);
  t.diagnostic(`encoders: ${JSON.stringify(r.encoders)}; files: ${r.files?.map((f) => `${f.name} ${f.bytes} B`).join(", ")}`);

  t.diagnostic(`decoders: ${JSON.stringify(r.decoders)}`);
  webmBase64 = r.webmBase64 ?? "";
  assert.deepEqual(r.otherSources, { url: [0, 6, 13, 19], element: [0, 6, 13, 19] }, "a blob: URL string and a <video> element are read like the Blob");
  assert.ok(r.files?.some((f) => f.name.startsWith("webm")), "a WebM was written and read");
  assert.ok(r.files?.some((f) => f.name.startsWith("mp4")), "an MP4 was written and read");
  for (const f of r.files!) {
    f.cases.forEach((c, k) => {
      const e = EXPECTED[k];
      const what = `${f.name} ${JSON.stringify(c.options)}`;
      if (e.error) {
        assert.match(c.error ?? "", e.error, what);
        return;
      }
      assert.equal(c.error, undefined, what);
      const first = e.first ?? 0;
      assert.equal(c.totalFrames, e.total ?? 20, what);
      assert.ok(Math.abs((c.videoFps ?? 0) - 10) < 1e-6, `${what}: fps ${c.videoFps}`);
      assert.deepEqual(c.indices, e.indices, what);
      assert.equal(c.nframes, e.indices!.length, what);
      assert.deepEqual(c.timestamps?.map((s) => Math.round(s * 1000)), e.indices!.map((i) => (first + i) * 100), `${what}: timestamps`);
      assert.deepEqual(c.colourIndex, e.indices!.map((i) => first + i), `${what}: each sampled frame shows the right frame's colour`);
      assert.equal(c.equalToDecoder, true, `${what}: max difference to the decoder's frame ${c.maxDiffToDecoder}`);
      if (e.size) assert.deepEqual(c.size, e.size, what);
      assert.deepEqual(c.progress, e.indices!.map((_, i) => [i + 1, e.indices!.length]), `${what}: progress`);
    });
  }
  assert.equal(r.abort?.code, "aborted", "an abort in the first progress callback stops before the next frame");
  assert.deepEqual(r.abort?.progress, [[1, 8]]);

  const a = r.answer!;
  assert.equal(a.error, undefined, String(a.error));
  assert.equal(a.framesPng?.length, 4);
  assert.deepEqual(a.progress, [[1, 4], [2, 4], [3, 4], [4, 4]], "progress crossed back from the worker");
  // The Node engine, the same sampled frames as a frame list with the same size options.
  const frames: string[] = [];
  for (const [i, d] of a.framesPng!.entries()) {
    const p = join(dir, `frame${i}.png`);
    await writeFile(p, Buffer.from(d.slice(d.indexOf(",") + 1), "base64"));
    frames.push(p);
  }
  const engine = await Engine.create();
  await engine.load(models.url("tiny-b"), { quantization: "f32", embedding: "f32", vision: "f32", preprocessing: "cpu" });
  const nodeAnswer = await engine.chat.completions.create({
    messages: [{ role: "user", content: [{ type: "video", video: frames, resized_height: 56, resized_width: 56 }, { type: "text", text: QUESTION }] }],
    max_tokens: MAX_TOKENS, temperature: 0,
  });
  await engine.unload();
  engine.gpu.destroy();
  t.diagnostic(`answer: ${JSON.stringify(a.text)} (preprocessed on ${a.preprocessDevice}); Node: ${JSON.stringify(nodeAnswer.choices[0].message.content)}`);
  assert.ok((a.text ?? "").length > 0);
  assert.equal(a.text, nodeAnswer.choices[0].message.content, "the worker's answer about the WebM equals Node's for its sampled frames");
  const wa = r.workerAbort!;
  assert.equal(wa.code, "aborted", "a worker request aborted from its progress callback fails with aborted");
  assert.ok(wa.progress.length >= 1 && wa.progress.length < 8, `progress before the abort: ${JSON.stringify(wa.progress)}`);
  assert.equal(wa.after, a.text, "a <video> element (its src) gives the same answer as the Blob");
});

test("the demo previews a dropped video's sampled frames", { timeout: 120_000 }, async () => {
  assert.ok(webmBase64.length > 0, "runs after the page wrote a WebM");
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${url}/`);
  const dt = await page.evaluateHandle((b64) => {
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const d = new DataTransfer();
    d.items.add(new File([bytes], "clip.webm", { type: "video/webm" }));
    return d;
  }, webmBase64);
  await page.dispatchEvent("body", "dragover", { dataTransfer: dt });
  await page.dispatchEvent("body", "drop", { dataTransfer: dt });
  const cap = page.locator("#thumbs .thumb.video figcaption");
  await cap.filter({ hasText: "4 of 20 frames" }).waitFor({ timeout: 60_000 });
  assert.match(await cap.textContent() ?? "", /clip\.webm: 4 of 20 frames \(1\.9 s, 10\.0 fps, vp8\)/);
  assert.equal(await page.locator("#thumbs .thumb.video .frames img").count(), 4, "one thumbnail per sampled frame");
  await page.locator("#thumbs .thumb.video .remove").click();
  assert.equal(await page.locator("#thumbs .thumb").count(), 0);
  await page.close();
  assert.deepEqual(errors, []);
});
