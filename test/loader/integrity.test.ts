// The loader's integrity pieces that run in Node: SHA-256 (Web Crypto one-shot and the
// incremental one used for whole-file checks) against node:crypto, their speed on 64 MiB
// (printed as MB/s), the validators read from a response (the hub's X-Linked-Etag), the
// one-byte revalidation probe, and a local directory honouring the AbortSignal.
import assert from "node:assert/strict";
import { createHash, randomFillSync } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { openCheckpoint } from "../../src/loader/checkpoint.ts";
import { probeFile, validatorsOf } from "../../src/loader/http.ts";
import { Sha256, sha256Hex } from "../../src/loader/sha256.ts";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { StaticServer } from "../util/static_server.ts";

let dir = "";
let server: StaticServer;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-integrity-"));
  await makeTinyQwen2VL(join(dir, "m"), "tiny-a", { dtype: "bf16" });
  server = await StaticServer.start({ root: dir });
});
after(async () => {
  await server?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const nodeSha = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

test("SHA-256: Web Crypto and the incremental implementation agree with node:crypto", async () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 65536 + 7]) {
    const b = randomFillSync(new Uint8Array(n));
    const want = nodeSha(b);
    assert.equal(await sha256Hex(b), want, `web crypto, ${n} bytes`);
    const h = new Sha256();
    // Awkward split points: across and inside blocks.
    for (let p = 0; p < n; ) {
      const step = 1 + ((p * 7919) % 97);
      h.update(b.subarray(p, Math.min(n, p + step)));
      p += step;
    }
    assert.equal(h.hex(), want, `incremental, ${n} bytes`);
  }
  assert.equal(await sha256Hex(new TextEncoder().encode("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});

test("SHA-256 speed on 64 MiB of 1 MiB chunks (Node)", async (t) => {
  const chunk = randomFillSync(new Uint8Array(1 << 20));
  const chunks = 64;
  let t0 = performance.now();
  for (let i = 0; i < chunks; i++) await sha256Hex(chunk);
  const web = chunks / ((performance.now() - t0) / 1000);
  t0 = performance.now();
  const h = new Sha256();
  for (let i = 0; i < 16; i++) h.update(chunk);
  h.hex();
  const inc = 16 / ((performance.now() - t0) / 1000);
  const msg = `Node ${process.version}: crypto.subtle SHA-256 ${(web * 1.048576).toFixed(0)} MB/s (64 MiB in 1 MiB chunks); incremental JS SHA-256 ${(inc * 1.048576).toFixed(0)} MB/s (16 MiB)`;
  t.diagnostic(msg);
  assert.ok(web > 20, "hashing is far faster than any download");
});

test("validators: the hub's X-Linked-Etag is the file's SHA-256; a 64-hex ETag only on hub URLs", () => {
  const sha = "a".repeat(64);
  const linked = new Response("", { headers: { etag: '"abc"', "x-linked-etag": `"${sha}"`, "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT" } });
  assert.deepEqual(validatorsOf(linked), { etag: '"abc"', lastModified: "Mon, 01 Jan 2024 00:00:00 GMT", sha256: sha });
  const plain = new Response("", { headers: { etag: `"${sha}"` } });
  assert.equal(validatorsOf(plain).sha256, undefined);
  assert.equal(validatorsOf(plain, true).sha256, sha);
  assert.equal(validatorsOf(new Response("", { headers: { etag: `W/"${sha}"` } }), true).sha256, undefined, "a weak ETag is no content hash");
});

test("probeFile: one 1-byte Range request yields size and ETag; a dead server fails fast", async () => {
  const mark = server.log.length;
  const v = await probeFile(server.url("m") + "model.safetensors");
  const reqs = server.log.slice(mark);
  assert.equal(reqs.length, 1);
  assert.equal(reqs[0].range, "bytes=0-0");
  assert.equal(reqs[0].bytes, 1);
  assert.ok(v.size && v.size > 1000 && v.etag);
  const dead = await StaticServer.start({ root: dir });
  const deadUrl = dead.url("m") + "model.safetensors";
  await dead.close();
  const t0 = performance.now();
  await assert.rejects(probeFile(deadUrl), (e: unknown) => e instanceof WebvlmError && e.code === "download_failed");
  assert.ok(performance.now() - t0 < 2000, "no retries with backoff");
});

test("a local directory honours the AbortSignal: before opening, and between tensor reads", async () => {
  const path = join(dir, "m");
  const pre = new AbortController();
  pre.abort();
  await assert.rejects(openCheckpoint(path, { signal: pre.signal }), (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
  const ac = new AbortController();
  const ckpt = await openCheckpoint(path, { signal: ac.signal });
  try {
    const [first, second] = ckpt.weights.names();
    assert.ok((await ckpt.weights.read(first)).length > 0, "reads while not aborted");
    ac.abort();
    await assert.rejects(ckpt.weights.read(second), (e: unknown) => e instanceof WebvlmError && e.code === "aborted" && /aborted/.test(e.message));
    await assert.rejects(ckpt.weights.readBytes(first), (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
  } finally {
    await ckpt.close();
  }
});
