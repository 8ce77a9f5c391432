// The built demo page (dist/, static server, strict CSP) reports the WebGPU adapter in
// Chromium; without WebGPU it explains what to do instead of showing a blank page (and
// keeps Load disabled). The build's files and declarations are checked as a consumer
// would use them. On the dev server, the embed page's ./webvlm.js maps to the sources.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";
import { buildSite, serveSite, STRICT_CSP, type ServedSite } from "./site.ts";

let server: ViteDevServer;
let url: string;
let dist: string;
let site: ServedSite;
const browsers: Browser[] = [];

before(async () => {
  dist = buildSite();
  site = await serveSite(dist, { "Content-Security-Policy": STRICT_CSP });
  ({ server, url } = await startViteServer());
});
after(async () => {
  for (const b of browsers) await b.close();
  await server?.close();
  await site?.close();
});

test("npm run build: demo, library + worker chunk, declarations, embed page; no bare imports, no eval", async () => {
  for (const f of ["index.html", "embed.html", "embed-example.png", "webvlm.js", "webvlm.d.ts", "models/tiny-b-bf16/config.json"]) {
    assert.ok(existsSync(join(dist, f)), `dist/${f}`);
  }
  const lib = readFileSync(join(dist, "webvlm.js"), "utf8");
  const worker = /new URL\("(assets\/webvlm-worker-[\w-]+\.js)", import\.meta\.url\)/.exec(lib);
  assert.ok(worker, "webvlm.js loads its worker chunk relative to itself");
  assert.ok(existsSync(join(dist, worker[1]!)), worker[1]);
  const html = readFileSync(join(dist, "index.html"), "utf8");
  assert.doesNotMatch(html, /(src|href)="\/(?!\/)/, "no root-absolute asset paths in the demo");
  const scripts = readdirSync(join(dist, "assets")).filter((f) => f.endsWith(".js")).map((f) => join(dist, "assets", f));
  for (const file of [join(dist, "webvlm.js"), ...scripts]) {
    const code = readFileSync(file, "utf8");
    assert.doesNotMatch(code, /\bnew Function\(|\beval\(/, `${file}: no eval (strict CSP)`);
    assert.doesNotMatch(code, /(?:^|[;}\n])\s*import\s*[\w{*][^;]*?from\s*["'](?![./])/, `${file}: no bare module imports`);
  }
  // The declarations type-check from a consumer's project (strict, no lib check skipped).
  const dir = await mkdtemp(join(tmpdir(), "webvlm-consumer-"));
  try {
    await writeFile(join(dir, "main.ts"), [
      `import { createEngine, isWebvlmError, type ChatCompletionChunk } from ${JSON.stringify(join(dist, "webvlm.js"))};`,
      `const engine = await createEngine();`,
      `await engine.load({ hub: "Qwen/Qwen2-VL-2B-Instruct" }, { quantization: "q4", onProgress: (p) => console.log(p.phase) });`,
      `const stream = await engine.chat.completions.create({ messages: [{ role: "user", content: "hi" }], stream: true });`,
      `try { for await (const c of stream) { const x: ChatCompletionChunk = c; console.log(x.choices[0]?.delta.content); } }`,
      `catch (e) { if (isWebvlmError(e)) console.log(e.code); }`,
      "",
    ].join("\n"));
    await writeFile(join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: {
        target: "ES2022", module: "ESNext", moduleResolution: "bundler", strict: true, noEmit: true,
        lib: ["ES2022", "DOM", "DOM.Iterable"], types: [], skipLibCheck: false,
      },
      files: ["main.ts"],
    }));
    execFileSync(process.execPath, [join(repoRoot, "node_modules/typescript/bin/tsc"), "-p", dir], { stdio: "pipe" });
  } catch (e) {
    const out = (e as { stdout?: Buffer }).stdout?.toString() ?? "";
    assert.fail(`consumer type-check failed:\n${out || String(e)}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("demo page finds the adapter, lists it, and enables Load", async () => {
  const browser = await launchChromium();
  browsers.push(browser);
  const page = await browser.newPage();
  await page.goto(site.url);
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
  await page.goto(site.url);
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

test("dev server: the embed page's ./webvlm.js is the library from the sources", async () => {
  const browser = await launchChromium();
  browsers.push(browser);
  const page = await browser.newPage();
  await page.goto(`${url}/embed.html?model=./no-such-model/`);
  const exported = await page.evaluate(async () => Object.keys(await import("/webvlm.js" as string)).sort());
  for (const name of ["createEngine", "Engine", "WebvlmError", "listCachedModels"]) assert.ok(exported.includes(name), name);
  // The page itself runs: a model URL that does not exist ends in a clear error, not a hang.
  await page.waitForFunction(() => document.getElementById("answer")!.dataset.done, undefined, { timeout: 60_000 });
  assert.match(await page.locator("#answer").innerText(), /^error: .*(not found|404)/i);
});
