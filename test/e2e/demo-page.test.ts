// The demo page reports the WebGPU adapter in Chromium; without WebGPU it explains
// what to do instead of showing a blank page (and keeps Load disabled).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { launchChromium, startViteServer } from "./browser.ts";

let server: ViteDevServer;
let url: string;
const browsers: Browser[] = [];

before(async () => {
  ({ server, url } = await startViteServer());
});
after(async () => {
  for (const b of browsers) await b.close();
  await server?.close();
});

test("demo page finds the adapter, lists it, and enables Load", async () => {
  const browser = await launchChromium();
  browsers.push(browser);
  const page = await browser.newPage();
  await page.goto(`${url}/index.html`);
  await page.locator("#gpu-status.ok").waitFor({ timeout: 30_000 });
  assert.match(await page.locator("#gpu-status").innerText(), /WebGPU ready/);
  assert.match(await page.locator("#adapter").textContent() ?? "", /maxStorageBufferBindingSize/);
  assert.equal(await page.locator("#load").isEnabled(), true);
  assert.equal(await page.locator("#model").inputValue(), "2b", "the 2B model is the default");
  assert.equal(await page.locator("#quant").inputValue(), "q4", "q4 is the default");
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
  await page.waitForFunction(() => !document.getElementById("gpu-status")!.textContent!.includes("Checking"));
  const text = await page.locator("#gpu-status").innerText();
  assert.match(text, /no WebGPU/i);
  assert.match(text, /Chrome|Chromium/);
  assert.equal(await page.locator("#load").isDisabled(), true, "nothing to load without WebGPU");
});

test("answers render **bold**, `code` and newlines with DOM nodes; HTML in model text stays text", async () => {
  const browser = await launchChromium();
  browsers.push(browser);
  const page = await browser.newPage();
  await page.goto(`${url}/index.html`);
  const html = await page.evaluate(async (path) => {
    const m = (await import(path)) as typeof import("../../demo/markdown.ts");
    const d = document.createElement("div");
    m.renderMarkdown(d, "**bold** and `<img src=x onerror=alert(1)>`\n<b>raw</b> **<i>x</i>**");
    return d.innerHTML;
  }, "/demo/markdown.ts");
  assert.equal(
    html,
    "<strong>bold</strong> and <code>&lt;img src=x onerror=alert(1)&gt;</code><br>&lt;b&gt;raw&lt;/b&gt; <strong>&lt;i&gt;x&lt;/i&gt;</strong>",
  );
});
