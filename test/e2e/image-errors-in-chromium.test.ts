// Image input failures in Chromium (test/browser/image-errors.ts): a cross-origin URL or
// <img> without CORS is a typed bad_request naming the image and the fix, bombs are refused
// from the header, endless bodies stop at maxBytes or on abort, CMYK JPEGs decode.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { deflateSync } from "node:zlib";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

let browser: Browser;
let vite: ViteDevServer;
let url: string;
let other: Server;
let otherUrl: string;
let endlessClosed = 0;

const fixture = (f: string) => readFileSync(`${repoRoot}test/fixtures/vision/${f}`);

function bombPng(): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, "latin1");
    return Buffer.concat([head, data, Buffer.alloc(4)]); // CRC unchecked: the header check comes first
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(40000, 0);
  ihdr.writeUInt32BE(40000, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(Buffer.alloc(1000))), chunk("IEND", Buffer.alloc(0))]);
}

before(async () => {
  const files: Record<string, [Buffer, string]> = {
    "good.png": [fixture("tiny_40x30.png"), "image/png"],
    "bomb.png": [bombPng(), "image/png"],
    "cmyk.jpg": [fixture("cmyk_53x37.jpg"), "image/jpeg"],
    "cmyk.rgb": [fixture("cmyk_53x37.rgb"), "application/octet-stream"],
  };
  // Another origin (a different port): /cors/* allows any origin, /nocors/* sends no CORS headers.
  other = createServer((req, res) => {
    const [, mode, name] = (req.url ?? "").split("?")[0].split("/");
    const headers: Record<string, string> = mode === "cors" ? { "access-control-allow-origin": "*" } : {};
    if (name === "endless") {
      res.writeHead(200, { ...headers, "content-type": "image/png" });
      const started = Date.now();
      const block = Buffer.alloc(64 * 1024, 0x89);
      res.on("close", () => endlessClosed++);
      const pump = () => {
        if (res.destroyed) return;
        if (Date.now() - started > 20000) return void res.end(); // stops by itself
        if (res.write(block)) setImmediate(pump);
        else res.once("drain", pump);
      };
      return pump();
    }
    const f = files[name ?? ""];
    if (!f) return void res.writeHead(404, headers).end();
    res.writeHead(200, { ...headers, "content-type": f[1] }).end(f[0]);
  });
  await new Promise<void>((r) => other.listen(0, "127.0.0.1", r));
  otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
  ({ server: vite, url } = await startViteServer());
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await vite?.close();
  other?.closeAllConnections();
  other?.close();
});

test("image input errors in Chromium are typed and name the image and the fix", { timeout: 300_000 }, async (t) => {
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  let finish!: (r: { name: string; ok: boolean; detail: string }[]) => void;
  const done = new Promise<{ name: string; ok: boolean; detail: string }[]>((r) => (finish = r));
  await page.exposeFunction("__imageErrorsDone", (r: { name: string; ok: boolean; detail: string }[]) => finish(r));
  await page.goto(`${url}/test/browser/image-errors.html?x=${encodeURIComponent(otherUrl)}`);
  const results = await done;
  await page.close();
  for (const r of results) t.diagnostic(`${r.ok ? "ok  " : "FAIL"} ${r.name}: ${r.detail}`);
  assert.deepEqual(pageErrors, []);
  assert.ok(results.length >= 13, `every case ran (${results.length})`);
  assert.deepEqual(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.detail}`), []);
  for (let i = 0; i < 100 && endlessClosed < 2; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(endlessClosed >= 2, "both endless downloads were cancelled");
});
