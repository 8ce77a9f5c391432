// The chat demo end to end in Chromium (WebGPU) with a tiny checkpoint: load with progress,
// images by file picker and by a real drop, streamed answers with stats, a second turn,
// Stop mid-answer, deleting the stored model; screenshots at desktop and phone size.
// Also: the <script type="module"> embed page answers a question about its <img>.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { StaticServer } from "../util/static_server.ts";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

const IMAGE = "test/fixtures/vision/resize_src_160x120.png";

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-demo-"));
  await makeTinyQwen2VL(join(dir, "tiny-b"), "tiny-b");
  models = await StaticServer.start({ root: dir });
  ({ server: vite, url } = await startViteServer());
  browser = await launchChromium();
  mkdirSync(join(repoRoot, "test-results"), { recursive: true });
});
after(async () => {
  await browser?.close();
  await vite?.close();
  await models?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Sends the prompt with Enter and records every length the newest answer had while streaming. */
async function ask(page: Page, question: string): Promise<void> {
  await page.evaluate(() => {
    const w = window as unknown as { __lengths: number[] };
    w.__lengths = [];
    const obs = new MutationObserver(() => {
      const answers = document.querySelectorAll(".msg.assistant .answer");
      const last = answers[answers.length - 1];
      if (last) w.__lengths.push(last.textContent!.length);
    });
    obs.observe(document.getElementById("transcript")!, { subtree: true, childList: true, characterData: true });
  });
  await page.locator("#prompt").fill(question);
  await page.locator("#prompt").press("Enter");
}

test("chat demo: load, images by picker and drop, streamed multi-turn answers, stop, cache delete", { timeout: 300_000 }, async (t) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${url}/index.html?${new URLSearchParams({ model: models.url("tiny-b"), quant: "q4" })}`);
  assert.equal(await page.locator("#model").inputValue(), "tiny", "?model=<url> picks the tiny model");
  await page.locator("#gpu-status.ok").waitFor({ timeout: 30_000 });

  await page.locator("#load").click();
  await page.locator("#load-status", { hasText: "Ready" }).waitFor({ timeout: 120_000 });
  const phases = await page.locator("#progress .phase").evaluateAll((els) => els.map((e) => [(e as HTMLElement).dataset.phase, e.textContent, (e.querySelector("progress") as HTMLProgressElement).value]));
  t.diagnostic(`progress: ${JSON.stringify(phases)}`);
  assert.ok(phases.some(([p]) => p === "download"), "a download bar");
  assert.ok(phases.some(([p]) => p === "upload"), "an upload bar");
  for (const [, text, v] of phases) {
    assert.match(String(text), /\d.*\/.*\(\d+%\)/, "bytes and percent");
    assert.equal(v, 1, `finished bar ${text}`);
  }
  assert.match(await page.locator("#variant").innerText(), /text q4/);
  assert.equal(JSON.parse((await page.evaluate(() => localStorage.getItem("webvlm-demo")))!).quant, "q4", "the choice is remembered");

  // Images: the file picker (two files, one removed again) and a real drop with a DataTransfer.
  await page.locator("#files").setInputFiles([join(repoRoot, IMAGE), join(repoRoot, IMAGE)]);
  await page.locator("#thumbs .thumb").nth(1).waitFor();
  await page.locator("#thumbs .thumb .remove").nth(1).click();
  assert.equal(await page.locator("#thumbs .thumb").count(), 1);
  const dt = await page.evaluateHandle(async (src) => {
    const bytes = await (await fetch(src)).arrayBuffer();
    const d = new DataTransfer();
    d.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
    return d;
  }, `/${IMAGE}`);
  await page.dispatchEvent("body", "dragover", { dataTransfer: dt });
  await page.dispatchEvent("body", "drop", { dataTransfer: dt });
  await page.locator("#thumbs .thumb").nth(1).waitFor();
  assert.equal(await page.locator("#thumbs img[alt='dropped.png']").count(), 1, "the dropped image is a thumbnail");

  // First question: streamed, then the stats line.
  await page.locator("#max-tokens").fill("12");
  await ask(page, "What is in these pictures?");
  await page.locator(".msg.assistant .stats").first().waitFor({ timeout: 120_000 });
  assert.equal(await page.locator("#thumbs .thumb").count(), 0, "sent images leave the composer");
  assert.equal(await page.locator(".msg.user .msg-images img").count(), 2);
  const first = await page.locator(".msg.assistant .answer").first().innerText();
  const lengths1 = await page.evaluate(() => (window as unknown as { __lengths: number[] }).__lengths);
  const stats1 = await page.locator(".msg.assistant .stats").first().innerText();
  t.diagnostic(`answer 1: ${JSON.stringify(first)}; lengths ${JSON.stringify(lengths1)}; ${stats1}`);
  assert.ok(first.length > 0, "an answer");
  assert.ok(new Set(lengths1.filter((n) => n > 0)).size >= 2, "the answer grew while streaming");
  assert.match(stats1, /prompt \d+ tokens · completion \d+ tokens · prefill [\d.]+ tok\/s · decode [\d.]+ tok\/s · first token \d+ ms/);

  // Second turn in the same chat: the prompt includes the first exchange.
  await ask(page, "And the colours?");
  await page.locator(".msg.assistant .stats").nth(1).waitFor({ timeout: 120_000 });
  assert.equal(await page.locator(".msg.assistant").count(), 2);
  const stats2 = await page.locator(".msg.assistant .stats").nth(1).innerText();
  const prompt1 = Number(/prompt (\d+)/.exec(stats1)![1]);
  const prompt2 = Number(/prompt (\d+)/.exec(stats2)![1]);
  assert.ok(prompt2 > prompt1, `the second prompt (${prompt2}) carries the conversation (first ${prompt1})`);
  await page.screenshot({ path: join(repoRoot, "test-results/demo-chat-desktop.png"), fullPage: true });

  // Stop mid-answer.
  await page.locator("#max-tokens").fill("64");
  await ask(page, "Describe it at length.");
  await page.waitForFunction(() => {
    const a = document.querySelectorAll(".msg.assistant .answer");
    return (a[2]?.textContent?.length ?? 0) > 0;
  }, undefined, { timeout: 120_000 });
  await page.locator("#stop").click();
  await page.locator(".msg.assistant .stats").nth(2).waitFor({ timeout: 60_000 });
  const stats3 = await page.locator(".msg.assistant .stats").nth(2).innerText();
  t.diagnostic(`stopped: ${stats3}`);
  assert.match(stats3, /stopped/);
  const completion3 = /completion (\d+)/.exec(stats3);
  if (completion3) assert.ok(Number(completion3[1]) < 64, "ended before max_tokens");
  assert.equal(await page.locator("#send").isEnabled(), true, "ready for the next question");

  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(repoRoot, "test-results/demo-chat-phone.png"), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scroll at phone width (${overflow}px too wide)`);
  await page.setViewportSize({ width: 1280, height: 860 });

  // The cache panel lists the stored model; deleting it empties the list.
  const item = page.locator("#cache-list .cache-item").first();
  await item.waitFor({ timeout: 30_000 });
  assert.match(await item.innerText(), /\d(\.\d)? (B|kB|MB)/);
  assert.match(await page.locator("#storage").innerText(), /Storage used: .* of /);
  const before = await page.locator("#cache-list .cache-item").count();
  await item.getByRole("button", { name: /Delete/ }).click();
  await page.waitForFunction((n) => document.querySelectorAll("#cache-list .cache-item").length < n, before);

  // New chat clears the transcript.
  await page.locator("#new-chat").click();
  assert.equal(await page.locator(".msg").count(), 0);
  assert.deepEqual(errors, []);
  await page.close();
});

test("the embed page answers a question about its <img>", { timeout: 180_000 }, async (t) => {
  const page = await browser.newPage();
  await page.goto(`${url}/demo/embed.html?${new URLSearchParams({ model: models.url("tiny-b") })}`);
  await page.waitForFunction(() => document.getElementById("answer")!.dataset.done, undefined, { timeout: 150_000 });
  const answer = await page.locator("#answer").innerText();
  t.diagnostic(`embed answer: ${JSON.stringify(answer)}`);
  assert.equal(await page.locator("#answer").getAttribute("data-done"), "1", answer);
  assert.ok(answer.length > 0);
  await page.close();
});
