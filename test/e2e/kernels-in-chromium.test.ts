// The same kernel suite as test/ops/kernels.test.ts, run inside Chromium's WebGPU.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { launchChromium, startViteServer } from "./browser.ts";

let browser: Browser;
let server: ViteDevServer;
let url: string;

before(async () => {
  ({ server, url } = await startViteServer());
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

// Every case file runs; within a file every EVERY-th case (WEBVLM_BROWSER_CASES_EVERY, default 3; 1
// runs them all). Node's kernel test runs every case.
const EVERY = Math.max(1, Number(process.env.WEBVLM_BROWSER_CASES_EVERY ?? 3) || 1);

test("every kernel's cases (every third by default) pass in Chromium with WebGPU", { timeout: 900_000 }, async (t) => {
  const filter = process.env.WEBVLM_CASES;
  const expectedFiles = readdirSync(new URL("../ops/", import.meta.url)).filter(
    (f) => f.endsWith(".cases.ts") && (!filter || f.includes(filter)),
  ).length;
  const page = await browser.newPage();
  const consoleErrors: string[] = [];
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  const results: { file: string; name: string; ok: boolean; detail: string }[] = [];
  let finish!: (s: { files: number; adapter: string; error?: string }) => void;
  const done = new Promise<{ files: number; adapter: string; error?: string }>((r) => (finish = r));
  await page.exposeFunction("__report", (r: (typeof results)[number]) => {
    results.push(r);
    t.diagnostic(`${r.ok ? "ok  " : "FAIL"} ${r.file.replace("../ops/", "")} ${r.name} ${r.ok ? r.detail : ""}`);
  });
  await page.exposeFunction("__done", (s: { files: number; adapter: string; error?: string }) => finish(s));
  const query = new URLSearchParams({ every: String(EVERY), ...(filter ? { cases: filter } : {}) });
  await page.goto(`${url}/test/browser/kernels.html?${query}`);
  const summary = await done;
  await page.close();
  if (summary.error) {
    assert.fail(
      `kernel suite could not start in Chromium: ${summary.error}\n` +
        "WebGPU needs Chromium with --enable-unsafe-webgpu (on machines without a GPU, Debian's chromium " +
        `ships SwiftShader). Console: ${consoleErrors.join("\n")}`,
    );
  }
  t.diagnostic(`adapter: ${summary.adapter}`);
  assert.equal(summary.files, expectedFiles, "every case file ran in the browser");
  assert.ok(results.length > 0, "cases ran");
  const failures = results.filter((r) => !r.ok);
  assert.deepEqual(failures.map((f) => `${f.file} ${f.name}: ${f.detail}`), []);
});
