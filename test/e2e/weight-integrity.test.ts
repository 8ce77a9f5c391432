// Integrity of the IndexedDB weight cache in Chromium (cache_idb.ts): a byte flipped in a
// stored chunk is caught by its SHA-256 and only that chunk is fetched again; a bit flipped in
// a stored q4 matrix makes it be quantized again; a shard changed on the server (same size, new
// ETag) after a complete load is noticed by the next load's one 1-byte request per file and its
// new bytes are used; with the server gone the cached model still loads. Every load answers
// the same greedy question; answers are compared with a cold load of the same bytes.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cp, mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { StaticServer, type RequestLog } from "../util/static_server.ts";
import type { CacheLoadOptions, CacheLoadReport } from "../browser/cache.ts";
import { launchChromium, startViteServer } from "./browser.ts";

const CHUNK = 1 << 20;
const MAX_TOKENS = 3;
const PROBE = 65536; // HttpByteSource's opening read of a shard
const SHARD = "model.safetensors";

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;
let shardSize = 0;
/** The answer of the seed-99 checkpoint, from a cold load (test 1). */
let answer99 = "";

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-integrity-"));
  await makeTinyQwen2VL(join(dir, "base"), "tiny-a", { dtype: "bf16" });
  for (const n of ["chg", "q"]) await cp(join(dir, "base"), join(dir, n), { recursive: true });
  await makeTinyQwen2VL(join(dir, "own", "n"), "tiny-a", { dtype: "bf16", seed: 99 });
  shardSize = (await stat(join(dir, "base", SHARD))).size;
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

async function openPage(): Promise<Page> {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${url}/test/browser/cache.html`);
  await page.waitForFunction(() => window.__cache !== undefined);
  return page;
}
async function reload(page: Page): Promise<void> {
  await page.reload();
  await page.waitForFunction(() => window.__cache !== undefined);
}
function load(page: Page, model: string, extra: Partial<CacheLoadOptions> = {}): Promise<CacheLoadReport> {
  const o: CacheLoadOptions = { model, chunkBytes: CHUNK, maxTokens: MAX_TOKENS, ...extra };
  return page.evaluate((opts) => window.__cache.load(opts), o);
}
const served = (log: RequestLog[]): number => log.reduce((s, l) => s + l.bytes, 0);
const ok = (r: CacheLoadReport): void => assert.equal(r.error, undefined, `${r.errorCode}: ${r.error}`);

test("a flipped byte in a stored chunk: only that chunk is fetched again, same answer; offline the cache still loads", { timeout: 300_000 }, async (t) => {
  const own = await StaticServer.start({ root: join(dir, "own") });
  const model = own.url("n");
  const page = await openPage();
  const mbps = await page.evaluate(() => window.__cache.hashSpeed());
  t.diagnostic(`Chromium crypto.subtle SHA-256: ${mbps.toFixed(0)} MB/s (64 MiB in 1 MiB chunks)`);
  try {
    const cold = await load(page, model);
    ok(cold);
    answer99 = cold.text!;

    await page.evaluate(([k, f]) => window.__cache.corruptChunk(k, f, 3), [model, SHARD] as const);
    await reload(page);
    const mark = own.log.length;
    const healed = await load(page, model);
    ok(healed);
    const shard = own.log.slice(mark).filter((l) => l.path === `/n/${SHARD}`);
    t.diagnostic(`after the flip: ${shard.map((l) => l.range).join(", ")}`);
    assert.equal(healed.text, cold.text, "the same answer as before the flip");
    assert.equal(healed.weightBytes.download, CHUNK, "one chunk downloaded again");
    assert.equal(healed.weightBytes.cache, shardSize - CHUNK, "the rest from the cache");
    assert.deepEqual(shard.map((l) => l.range), ["bytes=0-0", `bytes=0-${PROBE - 1}`, `bytes=${3 * CHUNK}-${4 * CHUNK - 1}`], "revalidation, reopen, the damaged chunk");
    assert.equal(served(shard), 1 + PROBE + CHUNK);

    // Server gone: every revalidation fails with a network error; the cache answers alone.
    await own.close();
    await reload(page);
    const offline = await load(page, model);
    ok(offline);
    assert.equal(offline.text, cold.text, "offline, same answer from the cache");
    assert.equal(offline.weightBytes.download ?? 0, 0);
    assert.equal(offline.weightBytes.cache, shardSize);
  } finally {
    await own.close().catch(() => undefined);
    await page.context().close();
  }
});

test("a flipped bit in a stored q4 matrix: it is quantized again from verified raw bytes, same answer", { timeout: 300_000 }, async (t) => {
  const model = models.url("q");
  const page = await openPage();
  const first = await load(page, model, { quantization: "q4" });
  ok(first);
  const damaged = await page.evaluate((k) => window.__cache.corruptPacked(k), model);
  t.diagnostic(`damaged q4 entry ${damaged}`);
  await reload(page);
  const mark = models.log.length;
  const second = await load(page, model, { quantization: "q4" });
  ok(second);
  assert.ok(second.phases.includes("quantize"), `the damaged entry is quantized again: ${second.phases}`);
  assert.equal(second.text, first.text, "same answer as with the intact entry");
  const shard = models.log.slice(mark).filter((l) => l.path === `/q/${SHARD}`);
  assert.deepEqual(shard.map((l) => l.range), ["bytes=0-0"], "raw bytes from the cache: only the revalidation request");
  await reload(page);
  const third = await load(page, model, { quantization: "q4" });
  ok(third);
  assert.ok(!third.phases.includes("quantize"), `the re-derived entry is stored again: ${third.phases}`);
  await page.context().close();
});

test("a shard changed on the server after a complete load (same size, new ETag): the next load notices and uses the new bytes", { timeout: 300_000 }, async (t) => {
  const model = models.url("chg");
  const page = await openPage();
  const old = await load(page, model);
  ok(old);
  await new Promise((r) => setTimeout(r, 20)); // a later mtime, so a different ETag
  await makeTinyQwen2VL(join(dir, "chg"), "tiny-a", { dtype: "bf16", seed: 99 });
  assert.equal((await stat(join(dir, "chg", SHARD))).size, shardSize, "same size");
  await reload(page);
  const mark = models.log.length;
  const fresh = await load(page, model);
  ok(fresh);
  const reqs = models.log.slice(mark).filter((l) => l.path.startsWith("/chg/"));
  const probes = reqs.filter((l) => l.range === "bytes=0-0").map((l) => l.path);
  t.diagnostic(`${reqs.length} requests; probes: ${probes.join(", ")}`);
  assert.equal(new Set(probes).size, probes.length, "one revalidation request per file");
  assert.ok(probes.includes(`/chg/${SHARD}`) && probes.includes("/chg/config.json"));
  assert.equal(fresh.weightBytes.cache ?? 0, 0, "nothing of the old shard was used");
  assert.equal(fresh.weightBytes.download, shardSize, "the new shard was downloaded");
  if (answer99) assert.equal(fresh.text, answer99, "the answer of the new weights (a cold load of the same bytes)");
  await page.context().close();
});

test("a published SHA-256 (the hub's X-Linked-Etag) is checked once the shard's download completes", { timeout: 300_000 }, async () => {
  const { createHash } = await import("node:crypto");
  const { readFile } = await import("node:fs/promises");
  const sha = createHash("sha256").update(await readFile(join(dir, "base", SHARD))).digest("hex");
  const page = await openPage();
  let published = "0".repeat(64);
  // The hub sends X-Linked-Etag on resolve URLs; the local server does not, so add it here.
  await page.route((u) => u.pathname.endsWith(`/sha/${SHARD}`), async (route) => {
    const response = await route.fetch();
    await route.fulfill({
      response,
      headers: { ...response.headers(), "x-linked-etag": `"${published}"`, "access-control-expose-headers": "Content-Range, Content-Length, ETag, X-Linked-Etag" },
    });
  });
  await cp(join(dir, "base"), join(dir, "sha"), { recursive: true });
  const model = models.url("sha");
  const bad = await load(page, model);
  assert.equal(bad.errorCode, "integrity_failed", `${bad.errorCode}: ${bad.error}`);
  assert.match(bad.error ?? "", /SHA-256/);
  published = sha;
  await reload(page);
  const good = await load(page, model);
  ok(good);
  assert.equal(good.weightBytes.download, shardSize, "the mismatching download was dropped and fetched again");
  const entry = () => page.evaluate(([k, f]) => window.__cache.patchManifest(k, f, {}), [model, SHARD] as const);
  assert.equal((await entry()).verified, true, "checked against the published SHA-256");

  // Complete but never checked against the published hash, with a damaged chunk (as when a chunk
  // goes bad before the download ends): the next load checks the file, drops and refetches the chunk.
  await page.evaluate(([k, f]) => window.__cache.corruptChunk(k, f, 2), [model, SHARD] as const);
  await page.evaluate(([k, f]) => window.__cache.patchManifest(k, f, { verified: false }), [model, SHARD] as const);
  await reload(page);
  const healed = await load(page, model);
  ok(healed);
  assert.equal(healed.weightBytes.download, CHUNK, "only the damaged chunk fetched again");
  assert.equal(healed.text, good.text);
  assert.equal((await entry()).verified, true, "checked again once the chunk was back");
  await page.context().close();
});
