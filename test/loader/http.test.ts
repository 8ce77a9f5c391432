// HTTP range reader and whole-file fetch against the local static server:
// byte-exact ranges, the prefix, servers ignoring Range, status mapping,
// retries with resume after a cut connection, short reads, changed files,
// abort, and hub URL building.
import assert from "node:assert/strict";
import { mkdtemp, rm, truncate, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import {
  fetchFile,
  getHubBaseUrl,
  HttpByteSource,
  hubFileUrl,
  parseHubId,
  setHubBaseUrl,
  staticFileUrl,
} from "../../src/loader/http.ts";
import { StaticServer } from "../util/static_server.ts";

const SIZE = 3 * 1024 * 1024 + 123;
let dir: string;
let server: StaticServer;
let data: Uint8Array;
const FAST = { retryDelayMs: 1, maxRetryDelayMs: 5 };

function pseudoRandom(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function rejectsWith(p: Promise<unknown>, code: WebvlmErrorCode, text?: string): Promise<WebvlmError> {
  let err: WebvlmError | undefined;
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (text) assert.ok(e.message.includes(text), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(text)}`);
    err = e;
    return true;
  });
  return err!;
}

const blobUrl = (): string => `${server.url()}blob.bin`;
const blobLog = () => server.log.filter((e) => e.path === "/blob.bin");

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-http-"));
  data = pseudoRandom(SIZE, 7);
  await writeFile(join(dir, "blob.bin"), data);
  await writeFile(join(dir, "small.json"), JSON.stringify({ hello: "world" }));
  server = await StaticServer.start({ root: dir, repos: { "org/model": dir } });
});

after(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  server.resetLog();
  server.drops = [];
  server.fails = [];
  server.notFound = [];
  server.ignoreRange = false;
});

test("open learns size and ETag from one prefix Range request; reads are byte-exact ranges", async () => {
  const src = await HttpByteSource.open(blobUrl(), { prefixBytes: 4096 });
  assert.equal(src.size, SIZE);
  assert.ok(src.etag);
  assert.equal(blobLog().length, 1);
  assert.equal(blobLog()[0].range, "bytes=0-4095");
  assert.equal(blobLog()[0].status, 206);
  assert.equal(blobLog()[0].bytes, 4096);

  // Inside the prefix: no request.
  assert.deepEqual(await src.read(100, 200), data.subarray(100, 300));
  assert.equal(blobLog().length, 1);

  const cases: [number, number][] = [[4000, 200], [1_000_000, 1], [SIZE - 17, 17], [5, SIZE - 5]];
  for (const [off, len] of cases) {
    server.resetLog();
    let reported = 0;
    const got = await src.read(off, len, (n) => (reported += n));
    assert.equal(got.length, len);
    assert.ok(Buffer.from(got).equals(Buffer.from(data.subarray(off, off + len))), `bytes at ${off}+${len}`);
    assert.equal(reported, len);
    assert.equal(blobLog().length, 1);
    assert.equal(blobLog()[0].range, `bytes=${off}-${off + len - 1}`);
    assert.equal(blobLog()[0].bytes, len, "server sent exactly the range");
  }
});

test("small file: prefix covers it, size is the file's", async () => {
  const text = JSON.stringify({ hello: "world" });
  const src = await HttpByteSource.open(`${server.url()}small.json`);
  assert.equal(src.size, text.length);
  assert.equal(new TextDecoder().decode(await src.read(0, text.length)), text);
  await rejectsWith(src.read(10, 10), "integrity_failed", "wanted 10 bytes at offset 10");
  assert.equal(server.log.length, 1, "the short read was refused without a request");
});

test("a server that ignores Range: correct bytes, body cancelled once the needed bytes arrived", async () => {
  server.ignoreRange = true;
  const src = await HttpByteSource.open(blobUrl(), { prefixBytes: 1024 });
  assert.equal(src.rangeSupported, false);
  assert.equal(src.size, SIZE);
  assert.deepEqual(await src.read(600, 100), data.subarray(600, 700));
  const got = await src.read(200_000, 1000);
  assert.ok(Buffer.from(got).equals(Buffer.from(data.subarray(200_000, 201_000))));
  const log = blobLog();
  assert.equal(log.length, 2);
  assert.ok(log.every((e) => e.status === 200));
  // Each answer was the whole 3 MB file; the client stopped reading early, so the server sent far less.
  for (const e of log) assert.ok(e.bytes < SIZE / 2, `server sent ${e.bytes} of ${SIZE} bytes`);
  console.log(`# ignore-Range server sent ${log.map((e) => e.bytes).join(", ")} of ${SIZE} bytes per request`);
});

test("404 -> model_not_found naming the URL; optional fetchFile -> undefined", async () => {
  const url = `${server.url()}missing.bin`;
  await rejectsWith(HttpByteSource.open(url, FAST), "model_not_found", url);
  await rejectsWith(fetchFile(url, FAST), "model_not_found", url);
  assert.equal(await fetchFile(url, FAST, true), undefined);
  assert.equal(server.log.length, 3, "404 is not retried");
});

test("hub 401 RepoNotFound -> model_not_found; 403 -> download_failed with status, not retried", async () => {
  server.fails = [{ match: "/blob.bin", status: 401, times: 1, headers: { "X-Error-Code": "RepoNotFound" } }];
  await rejectsWith(HttpByteSource.open(blobUrl(), FAST), "model_not_found");
  server.resetLog();
  server.fails = [{ match: "/blob.bin", status: 403 }];
  const e = await rejectsWith(HttpByteSource.open(blobUrl(), FAST), "download_failed", "403");
  assert.equal(e.details?.status, 403);
  assert.equal(blobLog().length, 1);
});

test("transient 503s are retried; a persistent 503 gives download_failed after maxRetries + 1 attempts", async () => {
  server.fails = [{ match: "/blob.bin", status: 503, times: 2 }];
  const src = await HttpByteSource.open(blobUrl(), { ...FAST, maxRetries: 3, prefixBytes: 16 });
  assert.equal(src.size, SIZE);
  assert.deepEqual(blobLog().map((e) => e.status), [503, 503, 206]);

  server.resetLog();
  server.fails = [{ match: "/blob.bin", status: 503 }];
  const e = await rejectsWith(src.read(1000, 10), "download_failed", "503");
  assert.equal(e.details?.status, 503);
  assert.equal(blobLog().length, 4);

  server.resetLog();
  server.fails = [{ match: "/blob.bin", status: 500 }];
  await rejectsWith(fetchFile(blobUrl(), { ...FAST, maxRetries: 1 }), "download_failed", "500");
  assert.equal(blobLog().length, 2);
});

test("a connection cut mid-body resumes from the last byte received", async () => {
  const src = await HttpByteSource.open(blobUrl(), { ...FAST, prefixBytes: 16 });
  server.resetLog();
  server.drops = [{ match: "/blob.bin", atByte: 1_500_000 }];
  const got = await src.read(100_000, 2_000_000);
  assert.ok(Buffer.from(got).equals(Buffer.from(data.subarray(100_000, 2_100_000))));
  const log = blobLog();
  assert.equal(log.length, 2);
  assert.equal(log[0].dropped, true);
  assert.equal(log[0].bytes, 1_400_000);
  assert.equal(log[1].range, `bytes=1500000-${2_100_000 - 1}`, "resumed, not restarted");
  assert.equal(log[1].bytes, 600_000);
});

test("cuts that keep making progress do not exhaust the retry budget", async () => {
  const src = await HttpByteSource.open(blobUrl(), { ...FAST, maxRetries: 1, prefixBytes: 16 });
  server.resetLog();
  server.drops = [300_000, 600_000, 900_000, 1_200_000].map((atByte) => ({ match: "/blob.bin", atByte }));
  const got = await src.read(0, 1_500_000);
  assert.ok(Buffer.from(got).equals(Buffer.from(data.subarray(0, 1_500_000))));
  assert.equal(blobLog().length, 5);
});

test("whole-file fetch retries a cut body from the start and reports monotone progress", async () => {
  server.drops = [{ match: "/blob.bin", atByte: 1_000_000 }];
  const seen: [number, number | undefined][] = [];
  const got = await fetchFile(blobUrl(), { ...FAST, onProgress: (l, t) => seen.push([l, t]) });
  assert.ok(got && Buffer.from(got).equals(Buffer.from(data)));
  assert.equal(blobLog().length, 2);
  assert.deepEqual(seen.at(-1), [SIZE, SIZE]);
  // Within each attempt loaded only grows; the retry starts again from 0.
  const restarts = seen.filter((s, i) => i > 0 && s[0] < seen[i - 1][0]).length;
  assert.equal(restarts, 1);
});

test("file shorter than the read (416 / short body) -> integrity_failed", async () => {
  const path = join(dir, "shrinks.bin");
  await writeFile(path, data.subarray(0, 100_000));
  const src = await HttpByteSource.open(`${server.url()}shrinks.bin`, { ...FAST, prefixBytes: 16 });
  await rejectsWith(src.read(99_990, 20), "integrity_failed", "wanted 20 bytes");
  // Truncated on the server after open: 416 for a range past the new end.
  await truncate(path, 50_000);
  await rejectsWith(src.read(60_000, 100), "integrity_failed");
  // A range straddling the new end: the server clamps it, the ETag changed too.
  await rejectsWith(src.read(40_000, 20_000), "integrity_failed");
});

test("file replaced on the server (same size, new ETag) -> integrity_failed", async () => {
  const path = join(dir, "replaced.bin");
  await writeFile(path, data.subarray(0, 200_000));
  const src = await HttpByteSource.open(`${server.url()}replaced.bin`, { ...FAST, prefixBytes: 16 });
  await writeFile(path, pseudoRandom(200_000, 99));
  await utimes(path, new Date(), new Date(Date.now() + 60_000));
  await rejectsWith(src.read(1000, 100), "integrity_failed", "changed on the server");
});

test("abort: before a read and during backoff -> aborted", async () => {
  const ac = new AbortController();
  const src = await HttpByteSource.open(blobUrl(), { signal: ac.signal, prefixBytes: 16, retryDelayMs: 10_000, maxRetryDelayMs: 10_000 });
  server.fails = [{ match: "/blob.bin", status: 503 }];
  const t0 = performance.now();
  setTimeout(() => ac.abort(), 50);
  await rejectsWith(src.read(1000, 10), "aborted");
  assert.ok(performance.now() - t0 < 5000, "abort cut the 10 s backoff short");
  await rejectsWith(src.read(2000, 10), "aborted");
});

test("hub ids and URLs", async () => {
  assert.deepEqual(parseHubId("Qwen/Qwen2-VL-2B-Instruct"), { repo: "Qwen/Qwen2-VL-2B-Instruct", revision: "main" });
  assert.deepEqual(parseHubId("Qwen/Qwen2-VL-2B-Instruct@refs/pr/3"), { repo: "Qwen/Qwen2-VL-2B-Instruct", revision: "refs/pr/3" });
  assert.equal(parseHubId("just-a-name"), undefined);
  assert.equal(parseHubId("a/b/c"), undefined);
  assert.equal(parseHubId("../x"), undefined);
  assert.equal(getHubBaseUrl(), "https://huggingface.co");
  assert.equal(hubFileUrl("Qwen/Qwen2-VL-2B-Instruct", "config.json"), "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct/resolve/main/config.json");
  assert.equal(hubFileUrl("o/n", "sub dir/x.json", "refs/pr/3"), "https://huggingface.co/o/n/resolve/refs%2Fpr%2F3/sub%20dir/x.json");
  assert.equal(staticFileUrl("http://h/models/a/", "model.safetensors"), "http://h/models/a/model.safetensors");
  setHubBaseUrl(server.origin + "/");
  try {
    assert.equal(getHubBaseUrl(), server.origin);
    const got = await fetchFile(hubFileUrl("org/model", "small.json", "v2"));
    assert.equal(new TextDecoder().decode(got!), JSON.stringify({ hello: "world" }));
    assert.equal(server.log.at(-1)?.path, "/org/model/resolve/v2/small.json");
  } finally {
    setHubBaseUrl("https://huggingface.co");
  }
});
