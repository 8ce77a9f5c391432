// Hostile and careless image input: endless bodies (/dev/zero, a FIFO, an HTTP body that
// never ends), decompression bombs (a tiny file declaring 40000x40000), aborts, CMYK JPEGs
// and error wording. Each failure is a typed WebvlmError naming the image and the limit,
// memory stays bounded, and a good image decodes correctly right after.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { decodeImageNode } from "../../src/vision/decode_node.ts";
import { describeBrowserImageError, describeFetchFailure } from "../../src/vision/decode_browser.ts";
import { MAX_DECODE_PIXELS, readImageHeader } from "../../src/vision/image_header.ts";
import { DEFAULT_MAX_IMAGE_BYTES, loadImage } from "../../src/vision/load_image.ts";

const DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "vision");
const bytes = (f: string) => new Uint8Array(readFileSync(join(DIR, f)));
const MiB = 1024 * 1024;
const TMP = mkdtempSync(join(tmpdir(), "webvlm-hostile-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

async function expectError(p: Promise<unknown>, code: WebvlmErrorCode, ...mustMention: (string | RegExp)[]): Promise<WebvlmError> {
  let err: unknown;
  await assert.rejects(p, (e: unknown) => {
    err = e;
    return true;
  });
  assert.ok(err instanceof WebvlmError, `expected a WebvlmError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  for (const m of mustMention) {
    if (typeof m === "string") assert.ok(err.message.includes(m), `message should mention ${JSON.stringify(m)}: ${err.message}`);
    else assert.match(err.message, m);
  }
  return err;
}

/** The known-good image every failure is followed by: tiny_40x30.png vs PIL's pixels. */
async function goodImageStillDecodes(): Promise<void> {
  const img = await loadImage(join(DIR, "s420.jpg"));
  assert.deepEqual(img.rgb, bytes("s420.jpg.rgb.bin"));
}

/** Peak-RSS growth (bytes) while fn runs; maxRSS is in KiB. */
async function peakGrowth(fn: () => Promise<void>): Promise<number> {
  const before = Math.max(process.resourceUsage().maxRSS * 1024, process.memoryUsage().rss);
  await fn();
  return process.resourceUsage().maxRSS * 1024 - before;
}

// ---------------------------------------------------------------- crafted headers
function crc32(b: Uint8Array): number {
  let c = ~0;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}
function pngChunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}
/** A PNG declaring width x height RGB8, with a tiny IDAT (a few zero rows). */
function bombPng(width: number, height: number): Uint8Array {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // depth
  ihdr[9] = 2; // RGB
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const idat = deflateSync(Buffer.alloc((width * 3 + 1) * 4));
  return new Uint8Array(Buffer.concat([sig, pngChunk("IHDR", ihdr), pngChunk("IDAT", idat), pngChunk("IEND", new Uint8Array(0))]));
}
/** A real JPEG with its SOF's size patched. */
function bombJpeg(width: number, height: number): Uint8Array {
  const b = bytes("photo_64x48.jpg").slice();
  let p = 2;
  while (!(b[p + 1] >= 0xc0 && b[p + 1] <= 0xc2)) p += 2 + ((b[p + 2] << 8) | b[p + 3]);
  b[p + 5] = height >> 8; b[p + 6] = height & 255; b[p + 7] = width >> 8; b[p + 8] = width & 255;
  return b;
}
function riff(chunk: string, data: Uint8Array): Uint8Array {
  const body = Buffer.concat([Buffer.from("WEBP" + chunk, "latin1"), Buffer.alloc(4), Buffer.from(data), Buffer.alloc(16)]);
  body.writeUInt32LE(data.length, 8);
  const head = Buffer.from("RIFF\0\0\0\0", "latin1");
  head.writeUInt32LE(body.length, 4);
  return new Uint8Array(Buffer.concat([head, body]));
}
function bombWebpVp8x(w: number, h: number): Uint8Array {
  const d = Buffer.alloc(10);
  d.writeUIntLE(w - 1, 4, 3);
  d.writeUIntLE(h - 1, 7, 3);
  return riff("VP8X", d);
}
function bombWebpVp8l(w: number, h: number): Uint8Array {
  const d = Buffer.alloc(5);
  d[0] = 0x2f;
  d.writeUInt32LE(((w - 1) | ((h - 1) << 14)) >>> 0, 1);
  return riff("VP8L", d);
}
function bombWebpVp8(w: number, h: number): Uint8Array {
  const d = Buffer.from([0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0, 0, 0, 0]);
  d.writeUInt16LE(w, 6);
  d.writeUInt16LE(h, 8);
  return riff("VP8 ", d);
}
function bombGif(w: number, h: number): Uint8Array {
  const b = Buffer.alloc(13 + 10 + 4);
  b.write("GIF89a", 0, "latin1");
  b.writeUInt16LE(16, 6); b.writeUInt16LE(16, 8); // small logical screen...
  b[13] = 0x2c; // ...and a first frame far outside it
  b.writeUInt16LE(w, 18); b.writeUInt16LE(h, 20);
  b[23] = 2; b[24] = 0; b[25] = 0x3b;
  return new Uint8Array(b);
}
function bombBmp(w: number, h: number): Uint8Array {
  const b = Buffer.alloc(54);
  b.write("BM", 0, "latin1");
  b.writeUInt32LE(40, 14);
  b.writeInt32LE(w, 18);
  b.writeInt32LE(-h, 22);
  return new Uint8Array(b);
}

test("headers: sizes read before decoding (PNG, JPEG, WebP lossy/lossless, GIF, BMP)", () => {
  assert.deepEqual(readImageHeader(bytes("tiny_40x30.png")), { format: "png", width: 40, height: 30 });
  assert.deepEqual(readImageHeader(bytes("photo_64x48.jpg")), { format: "jpeg", width: 64, height: 48 });
  assert.deepEqual(readImageHeader(bytes("progressive.jpg")), readImageHeader(bytes("s420.jpg")));
  for (const f of ["lossy.webp", "lossless.webp", "first.gif"]) {
    const h = readImageHeader(bytes(f));
    assert.ok(h && h.width > 0 && h.height > 0, f);
  }
  assert.deepEqual(readImageHeader(bombWebpVp8x(20000, 30000)), { format: "webp", width: 20000, height: 30000 });
  assert.deepEqual(readImageHeader(bombWebpVp8l(16384, 16000)), { format: "webp", width: 16384, height: 16000 });
  assert.deepEqual(readImageHeader(bombWebpVp8(16383, 16383)), { format: "webp", width: 16383, height: 16383 });
  assert.deepEqual(readImageHeader(bombGif(65535, 65535)), { format: "gif", width: 65535, height: 65535 });
  assert.deepEqual(readImageHeader(bombBmp(40000, 40000)), { format: "bmp", width: 40000, height: 40000 });
  assert.deepEqual(readImageHeader(bombJpeg(40000, 40000)), { format: "jpeg", width: 40000, height: 40000 });
});

test("a 40000x40000 PNG is refused from its header: limit_exceeded names size and limit, memory stays flat", async () => {
  const png = bombPng(40000, 40000);
  assert.ok(png.length < 1024 * 1024, "the bomb itself is small");
  const path = join(TMP, "bomb.png");
  writeFileSync(path, png);
  let err: WebvlmError | undefined;
  const growth = await peakGrowth(async () => {
    err = await expectError(loadImage(path), "limit_exceeded", "40000x40000", String(MAX_DECODE_PIXELS), "bomb.png", "maxPixels");
  });
  assert.equal(err!.details?.limit, MAX_DECODE_PIXELS);
  assert.equal(err!.details?.width, 40000);
  // Decoding it would take 4.8 GB; refusing it should cost next to nothing.
  assert.ok(growth < 200 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
  // decodeImageNode (the Node decoder on its own) refuses it before decoding too.
  await expectError(decodeImageNode(png, { label: "image 2" }), "limit_exceeded", "image 2", "40000x40000");
  await goodImageStillDecodes();
});

test("JPEG, WebP, GIF and BMP bombs are refused before decoding", async () => {
  const cases: [string, Uint8Array, string][] = [
    ["jpeg", bombJpeg(40000, 40000), "40000x40000"],
    ["webp VP8X", bombWebpVp8x(20000, 30000), "20000x30000"],
    ["webp VP8L", bombWebpVp8l(16384, 16384), "16384x16384"],
    ["webp VP8", bombWebpVp8(16383, 16383), "16383x16383"],
    ["gif", bombGif(65535, 65535), "65535x65535"],
    ["bmp", bombBmp(40000, 40000), "40000x40000"],
  ];
  const growth = await peakGrowth(async () => {
    for (const [what, b, size] of cases) {
      const e = await expectError(loadImage(b, undefined, { label: `image ${what}` }), "limit_exceeded", size, `image ${what}`);
      assert.equal(e.details?.limit, MAX_DECODE_PIXELS, what);
    }
  });
  assert.ok(growth < 200 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
  await goodImageStillDecodes();
});

test("maxPixels lowers and raises the pixel limit", async () => {
  await expectError(loadImage(bytes("tiny_40x30.png"), undefined, { maxPixels: 1000 }), "limit_exceeded", "40x30", "1000");
  const img = await loadImage(bytes("tiny_40x30.png"), undefined, { maxPixels: 1200 });
  assert.equal(img.width * img.height, 1200);
  await expectError(loadImage(bytes("s420.jpg"), undefined, { maxPixels: 0 }), "bad_request");
});

test("/dev/zero as an image path: read stops at maxBytes (limit_exceeded naming the limit and the option)", async () => {
  let err: WebvlmError | undefined;
  const growth = await peakGrowth(async () => {
    err = await expectError(loadImage("/dev/zero", undefined, { maxBytes: 8 * MiB }), "limit_exceeded", "/dev/zero", String(8 * MiB), "maxBytes");
  });
  assert.equal(err!.details?.limit, 8 * MiB);
  assert.ok(growth < 100 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
  // The default limit: 64 MiB, and the read stops there too.
  assert.equal(DEFAULT_MAX_IMAGE_BYTES, 64 * MiB);
  const growthDefault = await peakGrowth(async () => {
    const e = await expectError(loadImage("file:///dev/zero"), "limit_exceeded", String(DEFAULT_MAX_IMAGE_BYTES));
    assert.equal(e.details?.limit, DEFAULT_MAX_IMAGE_BYTES);
  });
  assert.ok(growthDefault < 400 * MiB, `peak RSS grew ${(growthDefault / MiB).toFixed(0)} MiB`);
  await goodImageStillDecodes();
});

test("a regular file over maxBytes is refused from its size; under it, it loads", async () => {
  const path = join(DIR, "s420.jpg");
  const size = readFileSync(path).length;
  await expectError(loadImage(path, undefined, { maxBytes: size - 1 }), "limit_exceeded", String(size - 1), "s420.jpg");
  const img = await loadImage(path, undefined, { maxBytes: size });
  assert.deepEqual(img.rgb, bytes("s420.jpg.rgb.bin"));
  await expectError(loadImage(bytes("s420.jpg"), undefined, { maxBytes: 100 }), "limit_exceeded", "100");
  await expectError(loadImage(`data:image/jpeg;base64,${Buffer.from(bytes("s420.jpg")).toString("base64")}`, undefined, { maxBytes: 100 }), "limit_exceeded", "100");
});

test("a FIFO fed without end: stops at maxBytes", async () => {
  const fifo = join(TMP, "endless.fifo");
  execFileSync("mkfifo", [fifo]);
  const writer = createWriteStream(fifo);
  const chunk = Buffer.alloc(256 * 1024, 0x41);
  let stop = false;
  writer.on("error", () => { stop = true; }); // EPIPE once the reader closes
  const pump = () => {
    while (!stop && writer.write(chunk));
    if (!stop) writer.once("drain", pump);
  };
  writer.once("open", pump);
  const deadline = setTimeout(() => { stop = true; writer.destroy(); }, 20000); // stops by itself
  try {
    const growth = await peakGrowth(async () => {
      await expectError(loadImage(fifo, undefined, { maxBytes: 4 * MiB }), "limit_exceeded", String(4 * MiB), "endless.fifo");
    });
    assert.ok(growth < 100 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
  } finally {
    stop = true;
    clearTimeout(deadline);
    writer.destroy();
  }
  await goodImageStillDecodes();
});

test("an abort while reading an endless file is the typed 'aborted' error", async () => {
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 30);
  const growth = await peakGrowth(async () => {
    // With a 1 GiB limit only the abort can stop this read in time.
    await expectError(loadImage("/dev/zero", ac.signal, { maxBytes: 1024 * MiB }), "aborted", "/dev/zero");
  });
  assert.ok(growth < 1024 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
  await goodImageStillDecodes();
});

// ---------------------------------------------------------------- HTTP
interface Endless {
  url: string;
  /** Resolves when the server saw the client go away (the body was cancelled). */
  closed: Promise<void>;
  sent: () => number;
  server: Server;
}

/** A server on 127.0.0.1 whose /endless body never ends (it gives up by itself after 20 s). */
async function endlessServer(): Promise<Endless> {
  let sent = 0;
  let onClosed!: () => void;
  const closed = new Promise<void>((r) => (onClosed = r));
  const server = createServer((req, res: ServerResponse) => {
    if (req.url === "/big") {
      res.writeHead(200, { "content-type": "image/png", "content-length": String(1024 * MiB) });
      res.write(Buffer.alloc(1024));
      setTimeout(() => res.destroy(), 20000).unref();
      return;
    }
    if (req.url === "/good.jpg") {
      res.writeHead(200, { "content-type": "image/jpeg" });
      res.end(bytes("s420.jpg"));
      return;
    }
    res.writeHead(200, { "content-type": "image/png" });
    const chunk = Buffer.alloc(64 * 1024, 0x89);
    const started = Date.now();
    res.on("close", onClosed);
    const pump = () => {
      if (res.destroyed) return;
      if (Date.now() - started > 20000) { res.end(); return; }
      sent += chunk.length;
      if (res.write(chunk)) setImmediate(pump);
      else res.once("drain", pump);
    };
    pump();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, closed, sent: () => sent, server };
}

function stopServer(s: Server): void {
  s.closeAllConnections();
  s.close();
}

const within = <T>(p: Promise<T>, ms: number, what: string) =>
  Promise.race([p, new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`${what}: not within ${ms} ms`)), ms).unref())]);

test("an endless HTTP body: read stops at maxBytes and the body is cancelled", async () => {
  const s = await endlessServer();
  try {
    const growth = await peakGrowth(async () => {
      const e = await expectError(loadImage(`${s.url}/endless`, undefined, { maxBytes: 4 * MiB }), "limit_exceeded", String(4 * MiB), `${s.url}/endless`, "maxBytes");
      assert.equal(e.details?.limit, 4 * MiB);
    });
    assert.ok(growth < 150 * MiB, `peak RSS grew ${(growth / MiB).toFixed(0)} MiB`);
    await within(s.closed, 10000, "the server should see the download cancelled");
    // A body that declares more than the limit is refused from its content-length.
    await expectError(loadImage(`${s.url}/big`, undefined, { maxBytes: 4 * MiB }), "limit_exceeded", String(1024 * MiB));
    const img = await loadImage(`${s.url}/good.jpg`);
    assert.deepEqual(img.rgb, bytes("s420.jpg.rgb.bin"));
  } finally {
    stopServer(s.server);
  }
});

test("an abort during a download is the typed 'aborted' error, not a DOMException", async () => {
  const s = await endlessServer();
  try {
    const ac = new AbortController();
    const t = setInterval(() => { if (s.sent() > 0) { clearInterval(t); setTimeout(() => ac.abort(), 20); } }, 5);
    try {
      await expectError(loadImage(`${s.url}/endless`, ac.signal, { maxBytes: 1024 * MiB, label: "image 2" }), "aborted", "image 2");
    } finally {
      clearInterval(t);
    }
    await within(s.closed, 10000, "the server should see the download cancelled");
    // Already aborted before the call: no request is made.
    await expectError(loadImage(`${s.url}/good.jpg`, AbortSignal.abort()), "aborted");
    await goodImageStillDecodes();
  } finally {
    stopServer(s.server);
  }
});

test("abort is checked between stages: an abort during decode stops before the image is handed on", async () => {
  const ac = new AbortController();
  const p = loadImage(bytes("s420.jpg"), ac.signal, { label: "image 3" });
  ac.abort(); // lands while the decoder is loading / running
  await expectError(p, "aborted", "image 3");
  await expectError(loadImage(bytes("s420.jpg"), AbortSignal.abort()), "aborted");
  await goodImageStillDecodes();
});

// ---------------------------------------------------------------- CMYK
test("CMYK JPEGs (Adobe inverted) decode to PIL's convert('RGB') exactly, 4:4:4 and 4:2:0", async () => {
  for (const f of ["cmyk_53x37", "cmyk_420_53x37"]) {
    const img = await loadImage(join(DIR, `${f}.jpg`));
    assert.equal(img.width, 53);
    assert.equal(img.height, 37);
    const want = bytes(`${f}.rgb`);
    let n = 0;
    for (let i = 0; i < want.length; i++) if (img.rgb[i] !== want[i]) n++;
    assert.equal(n, 0, `${f}: ${n} bytes differ from PIL`);
  }
  // The same coefficients with restart markers every 2 MCUs, and as four non-interleaved
  // scans (jpegtran -restart 2B / -scans; PIL decodes both to the same pixels).
  for (const f of ["cmyk_420_rst_53x37.jpg", "cmyk_420_scans_53x37.jpg"]) {
    const img = await decodeImageNode(bytes(f));
    assert.deepEqual(img.rgb, bytes("cmyk_420_53x37.rgb"), f);
  }
  // Progressive CMYK is refused with a reason (PIL would decode it).
  await expectError(decodeImageNode(bytes("cmyk_progressive_53x37.jpg"), { label: "image 6" }), "image_decode_failed", "image 6", "progressive");
  // A cut-off CMYK file fails like PIL's "image file is truncated", naming the file.
  const cmyk = bytes("cmyk_53x37.jpg");
  await expectError(decodeImageNode(cmyk.subarray(0, cmyk.length - 1500), { label: "image 4" }), "image_decode_failed", "image 4", "truncated");
  await goodImageStillDecodes();
});

test("corrupted CMYK JPEGs fail with a typed error or decode; never a raw exception or a hang", async () => {
  const src = bytes("cmyk_420_rst_53x37.jpg");
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < 300; i++) {
    const b = src.slice();
    const n = 1 + Math.floor(rand() * 4);
    for (let k = 0; k < n; k++) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
    try {
      const img = await decodeImageNode(b, { label: `case ${i}` });
      assert.equal(img.rgb.length, img.width * img.height * 3);
    } catch (e) {
      assert.ok(e instanceof WebvlmError, `case ${i}: ${String(e)}`);
      assert.ok(["image_decode_failed", "limit_exceeded"].includes(e.code), `case ${i}: ${e.code} ${e.message}`);
    }
  }
  await goodImageStillDecodes();
});

// ---------------------------------------------------------------- wording
test("decoder errors name the image and end cleanly (no dangling colon on a truncated PNG)", async () => {
  const png = bytes("square_84.png");
  // (slice: fast-png then fails in zlib, "Error while decompressing the data:" before this fix)
  for (const cut of [200, png.length >> 1, png.length - 20]) for (const cutOff of [png.subarray(0, cut), png.slice(0, cut)]) {
    const e = await expectError(decodeImageNode(cutOff, { label: "image 2" }), "image_decode_failed", "image 2", "PNG", /truncated or corrupt/);
    assert.doesNotMatch(e.message, /:\s*$|:\s*\(/, e.message);
  }
  const path = join(TMP, "cut.png");
  writeFileSync(path, png.subarray(0, 200));
  await expectError(loadImage(path), "image_decode_failed", "cut.png");
  await expectError(loadImage(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]), undefined, { label: "image 5" }), "image_decode_failed", "image 5", "unrecognized");
  await expectError(loadImage(join(TMP, "missing.png")), "bad_request", "missing.png");
  await goodImageStillDecodes();
});

test("browser failures map to typed errors naming the image and the CORS fix", () => {
  const tainted = describeBrowserImageError(
    new DOMException("Failed to execute 'getImageData' on 'OffscreenCanvasRenderingContext2D': The canvas has been tainted by cross-origin data.", "SecurityError"),
    "image 2",
  );
  assert.equal(tainted.code, "bad_request");
  assert.match(tainted.message, /image 2/);
  assert.match(tainted.message, /Access-Control-Allow-Origin/);
  assert.match(tainted.message, /crossorigin="anonymous"/);
  const clone = describeBrowserImageError(new DOMException("Non-origin-clean ImageBitmap cannot be cloned.", "DataCloneError"), "image 1");
  assert.equal(clone.code, "bad_request");
  assert.match(clone.message, /image 1.*CORS/s);
  const other = describeBrowserImageError(new DOMException("The source image could not be decoded.", "InvalidStateError"), "image 3");
  assert.equal(other.code, "image_decode_failed");
  assert.match(other.message, /image 3/);

  const url = "https://images.example.com/cat.png";
  const cors = describeFetchFailure(new TypeError("Failed to fetch"), url, `image ${url}`, "http://127.0.0.1:5173");
  assert.equal(cors.code, "bad_request");
  assert.match(cors.message, /images\.example\.com\/cat\.png/);
  assert.match(cors.message, /CORS/);
  assert.match(cors.message, /Access-Control-Allow-Origin/);
  const same = describeFetchFailure(new TypeError("Failed to fetch"), "http://127.0.0.1:5173/a.png", "image 1", "http://127.0.0.1:5173");
  assert.equal(same.code, "download_failed");
  assert.match(same.message, /image 1/);
});
