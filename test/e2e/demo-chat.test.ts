// The built chat demo (npm run build -> dist/, served by a plain static server under a
// sub-path with a strict CSP) end to end in Chromium (WebGPU) with the tiny checkpoint
// the build ships: load with progress, images by file picker, a real drop and a paste,
// streamed multi-turn answers with stats, Stop mid-answer, deleting the stored model;
// screenshots at desktop and phone size. Also: the built embed page (dist/embed.html,
// `import { createEngine } from "./webvlm.js"`) answers a question about its <img>.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { launchChromium, repoRoot } from "./browser.ts";
import { buildSite, embedCsp, serveSite, STRICT_CSP, type ServedSite } from "./site.ts";

const IMAGE = "test/fixtures/vision/resize_src_160x120.png";

let site: ServedSite;
let embedSite: ServedSite;
let browser: Browser;

before(async () => {
  const dist = buildSite();
  site = await serveSite(dist, { "Content-Security-Policy": STRICT_CSP });
  embedSite = await serveSite(dist, { "Content-Security-Policy": embedCsp() });
  browser = await launchChromium();
  mkdirSync(join(repoRoot, "test-results"), { recursive: true });
});
after(async () => {
  await browser?.close();
  await site?.close();
  await embedSite?.close();
});

/** A DataTransfer holding the test image as a PNG file, made in the page. */
async function imageTransfer(page: Page, name: string) {
  const bytes = [...readFileSync(join(repoRoot, IMAGE))];
  return page.evaluateHandle(({ bytes, name }) => {
    const d = new DataTransfer();
    d.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
    return d;
  }, { bytes, name });
}

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
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) errors.push(m.text());
  });
  await page.goto(`${site.url}?${new URLSearchParams({ model: "tiny", quant: "q4" })}`);
  assert.equal(await page.locator("#model").inputValue(), "tiny", "?model=tiny picks the tiny model");
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
  const dt = await imageTransfer(page, "dropped.png");
  await page.dispatchEvent("body", "dragover", { dataTransfer: dt });
  await page.dispatchEvent("body", "drop", { dataTransfer: dt });
  await page.locator("#thumbs .thumb").nth(1).waitFor();
  assert.equal(await page.locator("#thumbs img[alt='dropped.png']").count(), 1, "the dropped image is a thumbnail");
  // Paste: a clipboard event carrying an image file, as Ctrl+V with a copied image sends.
  const clip = await imageTransfer(page, "pasted.png");
  await page.locator("#prompt").evaluate((el, data) => {
    el.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
  }, clip);
  await page.locator("#thumbs .thumb").nth(2).waitFor();
  assert.equal(await page.locator("#thumbs img[alt='pasted.png']").count(), 1, "the pasted image is a thumbnail");
  await page.locator("#thumbs .thumb .remove").nth(2).click();
  assert.equal(await page.locator("#thumbs .thumb").count(), 2);

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
  // Control: the CSP is enforced. Without the script's hash the inline script never runs.
  const blocked = await browser.newPage();
  const violations: string[] = [];
  blocked.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) violations.push(m.text());
  });
  await blocked.goto(`${site.url}embed.html?model=./models/tiny-b-bf16/`);
  await blocked.waitForFunction(() => document.readyState === "complete");
  assert.equal(await blocked.locator("#answer").innerText(), "loading…");
  assert.ok(violations.length > 0, "the browser reports the blocked inline script");
  await blocked.close();

  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // The embed page is the README's snippet: one inline module script importing ./webvlm.js.
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) errors.push(m.text());
  });
  await page.goto(`${embedSite.url}embed.html?${new URLSearchParams({ model: "./models/tiny-b-bf16/" })}`);
  await page.waitForFunction(() => document.getElementById("answer")!.dataset.done, undefined, { timeout: 150_000 });
  const answer = await page.locator("#answer").innerText();
  t.diagnostic(`embed answer: ${JSON.stringify(answer)}`);
  assert.equal(await page.locator("#answer").getAttribute("data-done"), "1", answer);
  assert.ok(answer.length > 0);
  assert.deepEqual(errors, []);
  const scripts = await page.evaluate(() => [...document.scripts].map((s) => s.textContent ?? ""));
  assert.ok(scripts.some((t) => t.includes('import { createEngine } from "./webvlm.js"')), "the page imports the built library");
  await page.close();
});
