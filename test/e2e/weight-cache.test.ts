// The IndexedDB weight cache in Chromium (real IndexedDB): a reload loads from the cache (one
// 1-byte revalidation request per file, no weight download), an interrupted download resumes with only the missing chunks,
// a shard changed on the server is re-fetched, too little quota fails before any chunk
// download, and deleting a cached model makes the next load download again.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { promisify } from "node:util";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { StaticServer, type RequestLog } from "../util/static_server.ts";
import type { CacheLoadOptions, CacheLoadReport } from "../browser/cache.ts";
import type { CachedModelInfo } from "../../src/loader/cache_idb.ts";
import { launchChromium, startViteServer } from "./browser.ts";

const CHUNK = 1 << 20; // 1 MiB chunks: the tiny shard is ~19 of them
const MAX_TOKENS = 3;
const PROBE = 65536; // HttpByteSource's opening read of a shard (size + ETag)
const NAMES = ["a", "b", "c", "d", "f", "g"];

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;
let shardSize = 0;
let modelBytes = 0;
let answerA = "";

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-cache-"));
  const made = await makeTinyQwen2VL(join(dir, "base"), "tiny-a", { dtype: "bf16" });
  for (const n of NAMES) await cp(join(dir, "base"), join(dir, n), { recursive: true });
  shardSize = (await stat(join(dir, "base", "model.safetensors"))).size;
  for (const f of made.files) modelBytes += (await stat(join(dir, "base", f))).size;
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

const shardPath = (n: string): string => `/${n}/model.safetensors`;
/** Log entries from index `from` on for model `n` (its shard only when `shard`). */
function requests(n: string, from: number, shard = true): RequestLog[] {
  return models.log.slice(from).filter((l) => (shard ? l.path === shardPath(n) : l.path.startsWith(`/${n}/`)));
}
const served = (log: RequestLog[]): number => log.reduce((s, l) => s + l.bytes, 0);

async function openPage(ctx: BrowserContext): Promise<Page> {
  const page = await ctx.newPage();
  await page.goto(`${url}/test/browser/cache.html`);
  await page.waitForFunction(() => window.__cache !== undefined);
  return page;
}
async function reload(page: Page): Promise<void> {
  await page.reload();
  await page.waitForFunction(() => window.__cache !== undefined);
}
function load(page: Page, n: string, extra: Partial<CacheLoadOptions> = {}): Promise<CacheLoadReport> {
  const o: CacheLoadOptions = { model: models.url(n), chunkBytes: CHUNK, maxTokens: MAX_TOKENS, ...extra };
  return page.evaluate((opts) => window.__cache.load(opts), o);
}
const list = (page: Page): Promise<CachedModelInfo[]> => page.evaluate(() => window.__cache.list());
async function shardCached(page: Page, n: string): Promise<number> {
  const m = (await list(page)).find((x) => x.key === models.url(n));
  return m?.files.find((f) => f.file === "model.safetensors")?.cachedBytes ?? 0;
}

/** Cuts the shard's connection at half its size, then refuses it (403) until cleared. */
function breakShardHalfway(n: string): void {
  models.drops.push({ match: shardPath(n), atByte: Math.floor(shardSize / 2), times: 1 });
  models.fails.push({ match: (p) => p === shardPath(n) && models.log.some((l) => l.path === p && l.dropped), status: 403 });
}
function clearFaults(): void {
  models.drops.length = 0;
  models.fails.length = 0;
}

test("(a) a reload loads from IndexedDB with one 1-byte revalidation request per file; (e) list, delete, download again", { timeout: 300_000 }, async (t) => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  let mark = models.log.length;
  const first = await load(page, "a");
  assert.equal(first.error, undefined, String(first.error));
  assert.ok(first.text && first.text.length > 0);
  answerA = first.text;
  const firstReqs = requests("a", mark);
  assert.equal(firstReqs.length, Math.ceil(shardSize / CHUNK) + 1, "one Range request per chunk, plus the opening probe");
  assert.ok(firstReqs.every((l) => l.range !== undefined && l.status === 206), "weights fetched with Range requests");
  assert.equal(served(firstReqs), shardSize + PROBE, "the whole shard was downloaded once");
  assert.equal(first.weightBytes.download, shardSize, "download progress counts the shard");
  t.diagnostic(`first load: ${firstReqs.length} shard requests, ${served(firstReqs)} bytes; answer ${JSON.stringify(first.text)}`);

  await reload(page);
  mark = models.log.length;
  const second = await load(page, "a");
  assert.equal(second.error, undefined, String(second.error));
  // Revalidation: one 1-byte conditional request per cached file, nothing else.
  const cachedFiles = (await list(page)).find((m) => m.key === models.url("a"))!.files.map((f) => `/a/${f.file}`).sort();
  const revalidated = requests("a", mark, false);
  assert.deepEqual(revalidated.map((l) => l.path).sort(), cachedFiles, "one request per cached file after a reload");
  assert.ok(revalidated.every((l) => l.range === "bytes=0-0" && l.bytes <= 1), "each a 1-byte Range probe");
  assert.equal(second.text, first.text, "same greedy answer from the cache");
  assert.equal(second.weightBytes.cache, shardSize, "cache progress covers the shard");
  assert.equal(second.weightBytes.download ?? 0, 0, "no download progress");

  // (e) management API
  const listed = (await list(page)).find((m) => m.key === models.url("a"));
  assert.ok(listed, "listCachedModels shows the model");
  assert.equal(listed.complete, true);
  assert.equal(listed.bytes, modelBytes, "its bytes are the checkpoint's files");
  assert.equal(listed.files.find((f) => f.file === "model.safetensors")?.cachedBytes, shardSize);
  assert.equal(await page.evaluate((k) => window.__cache.remove(k), models.url("a")), true);
  assert.equal((await list(page)).some((m) => m.key === models.url("a")), false, "deleted");
  mark = models.log.length;
  const third = await load(page, "a");
  assert.equal(third.error, undefined, String(third.error));
  assert.ok(served(requests("a", mark)) >= shardSize, "after delete the shard is downloaded again");
  assert.ok(requests("a", mark, false).some((l) => l.path === "/a/config.json"), "and the JSON files too");
  assert.equal(third.text, first.text);
  await ctx.close();
});

test("(b) an interrupted download resumes after a reload with only the missing chunks", { timeout: 300_000 }, async (t) => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  breakShardHalfway("b");
  const failed = await load(page, "b");
  assert.equal(failed.errorCode, "download_failed", `${failed.errorCode}: ${failed.error}`);
  clearFaults();
  // Measured after the reload: chunks still in flight when the load failed may have landed.
  await reload(page);
  const cached = await shardCached(page, "b");
  const missing = shardSize - cached;
  t.diagnostic(`after the cut: ${cached} of ${shardSize} shard bytes cached`);
  assert.ok(cached > 0 && cached < shardSize, `part of the shard is cached (${cached})`);
  const mark = models.log.length;
  const resumed = await load(page, "b");
  assert.equal(resumed.error, undefined, String(resumed.error));
  const bytes = served(requests("b", mark));
  t.diagnostic(`resume fetched ${bytes} bytes (missing ${missing}, probe ${PROBE})`);
  assert.ok(bytes < shardSize, "less than the whole shard");
  assert.equal(bytes, missing + PROBE, "exactly the missing chunks, plus the probe that checks size and ETag");
  assert.equal(resumed.weightBytes.cache, cached);
  assert.equal(resumed.weightBytes.download, missing);
  assert.equal(await shardCached(page, "b"), shardSize, "now complete");
  if (answerA) assert.equal(resumed.text, answerA, "same answer as an uninterrupted load");
  await ctx.close();
});

test("(c) a shard changed on the server (new ETag) drops its cached chunks and is fetched again", { timeout: 300_000 }, async (t) => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  breakShardHalfway("c");
  const failed = await load(page, "c");
  assert.equal(failed.errorCode, "download_failed", String(failed.error));
  assert.ok((await shardCached(page, "c")) > 0);
  clearFaults();
  await new Promise((r) => setTimeout(r, 20)); // a later mtime, so a different ETag
  await makeTinyQwen2VL(join(dir, "c"), "tiny-a", { dtype: "bf16", seed: 99 });
  await reload(page);
  const mark = models.log.length;
  const changed = await load(page, "c");
  assert.equal(changed.error, undefined, String(changed.error));
  const bytes = served(requests("c", mark));
  t.diagnostic(`after the change: fetched ${bytes} shard bytes`);
  assert.ok(bytes >= shardSize, "the whole new shard was fetched");
  assert.equal(changed.weightBytes.cache ?? 0, 0, "nothing of the old shard was served");
  assert.equal(await shardCached(page, "c"), shardSize);

  // The same answer as a cold load of the new checkpoint in a fresh profile.
  const ctx2 = await browser.newContext();
  const fresh = await load(await openPage(ctx2), "c");
  assert.equal(fresh.error, undefined, String(fresh.error));
  assert.equal(changed.text, fresh.text, "answer matches the new weights");
  await ctx2.close();
  await ctx.close();
});

test("(d) too little storage: quota_exceeded before any chunk of the weights is fetched", { timeout: 300_000 }, async () => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  const mark = models.log.length;
  const r = await load(page, "d", { quota: 1_000_000 });
  assert.equal(r.errorCode, "quota_exceeded", `${r.errorCode}: ${r.error}`);
  assert.match(r.error ?? "", new RegExp(`${shardSize} bytes still to download.*1000000`), String(r.error));
  const reqs = requests("d", mark);
  assert.ok(reqs.every((l) => l.range === `bytes=0-${PROBE - 1}`), `only the size probe: ${reqs.map((l) => l.range).join(", ")}`);
  assert.ok(served(reqs) <= PROBE);
  assert.equal(await shardCached(page, "d"), 0);
  await ctx.close();
});

test("(f) IndexedDB running out of space mid-download: quota_exceeded, the cache stays consistent and resumes", { timeout: 300_000 }, async (t) => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  // A real quota for the page's origin (IndexedDB writes then fail with QuotaExceededError);
  // the estimate hook claims plenty of room so the early check lets the download start.
  const cdp = await ctx.newCDPSession(page);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: url, quotaSize: 16 * 1024 * 1024 });
  const failed = await load(page, "f", { quota: 1e12 });
  assert.equal(failed.errorCode, "quota_exceeded", `${failed.errorCode}: ${failed.error}`);
  t.diagnostic(failed.error ?? "");
  await cdp.send("Storage.overrideQuotaForOrigin", { origin: url });
  await reload(page);
  const key = models.url("f");
  const stored = await page.evaluate(([k, f]) => window.__cache.storedChunks(k, f), [key, "model.safetensors"] as const);
  const cached = await shardCached(page, "f");
  t.diagnostic(`${stored.length} chunks stored, manifest says ${cached} bytes`);
  assert.ok(cached < shardSize, "the shard did not fit");
  assert.equal(cached, stored.length * CHUNK, "the manifest lists exactly the chunks that are stored");
  const mark = models.log.length;
  const resumed = await load(page, "f");
  assert.equal(resumed.error, undefined, String(resumed.error));
  assert.equal(served(requests("f", mark)), shardSize - cached + PROBE, "only the chunks that were not stored");
  if (answerA) assert.equal(resumed.text, answerA);
  await ctx.close();
});

test("(g) quantized weights are kept too: a reload uploads the stored q4 bytes without quantizing", { timeout: 300_000 }, async () => {
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  const first = await load(page, "g", { quantization: "q4" });
  assert.equal(first.error, undefined, String(first.error));
  assert.ok(first.phases.includes("quantize"), `first load quantizes: ${first.phases}`);
  await reload(page);
  const second = await load(page, "g", { quantization: "q4" });
  assert.equal(second.error, undefined, String(second.error));
  assert.ok(!second.phases.includes("quantize"), `second load does not quantize: ${second.phases}`);
  assert.equal(second.text, first.text, "same answer from the stored q4 weights");
  // Every quantized matrix came from IndexedDB: a miss would have quantized (and reported it).
  assert.equal(await page.evaluate((k) => window.__cache.remove(k), models.url("g")), true);
  await ctx.close();
});

test("(h) webvlm's pre-quantized format over HTTP: no quantizing; a reload loads it from IndexedDB with zero requests", { timeout: 300_000 }, async () => {
  // `webvlm quantize` (Dawn in Node) writes the q4 directory the static server then serves.
  const cli = new URL("../../scripts/cli.mjs", import.meta.url).pathname;
  await promisify(execFile)(process.execPath, [cli, "quantize", "--model", join(dir, "base"), "--dtype", "q4", "--out", join(dir, "h")], { maxBuffer: 1 << 24 });
  const files = await readdir(join(dir, "h"));
  const shard = (await stat(join(dir, "h", "model.safetensors"))).size;
  const ctx = await browser.newContext();
  const page = await openPage(ctx);
  let mark = models.log.length;
  const first = await load(page, "h", { revalidate: false });
  assert.equal(first.error, undefined, String(first.error));
  assert.ok(first.text && first.text.length > 0);
  assert.ok(!first.phases.includes("quantize"), `the packed blocks load as stored: ${first.phases}`);
  assert.equal(first.weightBytes.download, shard, "the quantized shard was downloaded");
  assert.ok(requests("h", mark).length > 0);
  await reload(page);
  mark = models.log.length;
  const second = await load(page, "h", { revalidate: false });
  assert.equal(second.error, undefined, String(second.error));
  assert.deepEqual(requests("h", mark, false), [], "no request at all: every file came from IndexedDB");
  assert.ok(!second.phases.includes("quantize"), `no quantizing: ${second.phases}`);
  assert.equal(second.weightBytes.cache, shard);
  assert.equal(second.weightBytes.download ?? 0, 0);
  assert.equal(second.text, first.text);
  const listed = (await list(page)).find((m) => m.key === models.url("h"));
  assert.ok(listed?.complete && listed.files.filter((f) => f.cachedBytes > 0).every((f) => files.includes(f.file)));
  assert.equal(await page.evaluate((k) => window.__cache.remove(k), models.url("h")), true);
  await ctx.close();
});
