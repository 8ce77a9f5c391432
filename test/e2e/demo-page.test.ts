// The demo page reports the adapter and passes its self-check in Chromium;
// without WebGPU it explains what to do instead of showing a blank page.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

let server: ViteDevServer;
let url: string;
const browsers: Browser[] = [];

before(async () => {
  ({ server, url } = await startViteServer());
  mkdirSync(`${repoRoot}/test-results`, { recursive: true });
});
after(async () => {
  for (const b of browsers) await b.close();
  await server?.close();
});

test("demo page lists the adapter and its kernel self-check passes", async () => {
  const browser = await launchChromium();
  browsers.push(browser);
  const page = await browser.newPage();
  await page.goto(`${url}/index.html`);
  await page.locator("#checks tbody tr").first().waitFor({ timeout: 60_000 });
  const adapter = await page.locator("#adapter").innerText();
  assert.match(adapter, /maxStorageBufferBindingSize/);
  const rows = await page.locator("#checks tbody tr").allInnerTexts();
  assert.ok(rows.length > 0);
  for (const r of rows) assert.match(r, /\bok\b/, r);
  await page.screenshot({ path: `${repoRoot}/test-results/demo-desktop.png`, fullPage: true });
});

test("without WebGPU the page says so and what to do", async () => {
  const browser = await launchChromium(["--disable-webgpu", "--disable-features=WebGPU"]);
  browsers.push(browser);
  const page = await browser.newPage();
  await page.addInitScript(() => {
    // Chromium builds differ in which flag removes WebGPU; removing the entry point is what a browser without it looks like.
    Object.defineProperty(Navigator.prototype, "gpu", { value: undefined, configurable: true });
    delete (Navigator.prototype as { gpu?: unknown }).gpu;
  });
  await page.goto(`${url}/index.html`);
  await page.waitForFunction(() => !document.getElementById("adapter")!.textContent!.includes("Checking"));
  const text = await page.locator("#adapter").innerText();
  assert.match(text, /no WebGPU/i);
  assert.match(text, /Chrome|Chromium/);
});
