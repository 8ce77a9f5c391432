// EXIF orientation in Chromium equals Node's for the same bytes (test/browser/exif-orientation.ts):
// Chromium orients JPEGs and PNGs by itself in createImageBitmap (imageOrientation "none"
// included) and WebPs not at all, while PIL's open() never orients and exif_transpose always
// does. Each case is decoded here with loadImage (exifOrientation false and true) and the
// page must give the same size and pixels from bytes, an ArrayBuffer, Blobs, a File and a blob: URL.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { crc32 } from "node:zlib";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { loadImage } from "../../src/vision/load_image.ts";
import type { ExifCase } from "../browser/exif-orientation.ts";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

let browser: Browser;
let vite: ViteDevServer;
let url: string;

const read = (f: string) => readFileSync(`${repoRoot}test/fixtures/vision/${f}`);
const TYPES: Record<string, string> = { jpg: "image/jpeg", png: "image/png", webp: "image/webp" };

function jpegSegment(marker: number, payload: Buffer): Buffer {
  const head = Buffer.from([0xff, marker, 0, 0]);
  head.writeUInt16BE(payload.length + 2, 2);
  return Buffer.concat([head, payload]);
}

/** A little-endian "Exif\0\0" TIFF block whose IFD0 holds one SHORT entry. */
function exifPayload(tag: number, value: number): Buffer {
  const b = Buffer.alloc(6 + 8 + 2 + 12 + 4);
  b.write("Exif", 0, "latin1");
  b.write("II", 6, "latin1");
  b.writeUInt16LE(42, 8);
  b.writeUInt32LE(8, 10);
  b.writeUInt16LE(1, 14);
  b.writeUInt16LE(tag, 16);
  b.writeUInt16LE(3, 18);
  b.writeUInt32LE(1, 20);
  b.writeUInt16LE(value, 24);
  return b;
}

/** Splits a JPEG into SOI, its header segments (each with marker) and the rest from SOS on. */
function jpegParts(jpg: Buffer): { segments: Buffer[]; rest: Buffer } {
  const segments: Buffer[] = [];
  let o = 2;
  while (jpg[o + 1] !== 0xda) {
    const len = jpg.readUInt16BE(o + 2);
    segments.push(jpg.subarray(o, o + 2 + len));
    o += 2 + len;
  }
  return { segments, rest: jpg.subarray(o) };
}

const SOI = Buffer.from([0xff, 0xd8]);
const filler = (n: number) => jpegSegment(0xef, Buffer.alloc(n, 0x5a)); // APP15, ignored by decoders

function pngChunk(type: string, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "latin1");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** Cases made here: EXIF beyond the Blob head, EXIF before a big rest, two Exif APP1s. */
function builtCases(): [string, string, Buffer, number][] {
  const jpg6 = read("exif/orient6_9x6.jpg");
  const { segments, rest } = jpegParts(jpg6);
  const app1 = segments.findIndex((s) => s[1] === 0xe1);
  const others = segments.filter((_, i) => i !== app1);
  const png6 = read("exif/orient6_9x6.png");
  return [
    // The Exif APP1 starts past the first 64 KiB: the Blob is read whole.
    ["built: JPEG, Exif after 80 KiB of APP15", "jpg", Buffer.concat([SOI, filler(40000), filler(40000), segments[app1], ...others, rest]), 6],
    // Exif first, then 80 KiB: only the head is rewritten, the rest sliced on.
    ["built: JPEG, Exif then 80 KiB of APP15", "jpg", Buffer.concat([SOI, segments[app1], filler(40000), filler(40000), ...others, rest]), 6],
    // PIL reads the first Exif APP1 (no orientation there: 1); a browser may read the second (8).
    ["built: JPEG, two Exif APP1s (1 by PIL, 8 in the second)", "jpg",
      Buffer.concat([SOI, jpegSegment(0xe1, exifPayload(0x010e, 0)), jpegSegment(0xe1, exifPayload(0x0112, 8)), ...others, rest]), 1],
    ["built: PNG, eXIf after a 70 KiB private chunk", "png",
      Buffer.concat([png6.subarray(0, 33), pngChunk("prVt", Buffer.alloc(70000, 7)), png6.subarray(33)]), 6],
  ];
}

async function nodeCase(name: string, ext: string, bytes: Buffer, alphaBackground?: [number, number, number]): Promise<ExifCase> {
  const decode = async (exifOrientation: boolean): Promise<[number, number, string]> => {
    const img = await loadImage(new Uint8Array(bytes), undefined, { exifOrientation, alphaBackground });
    return [img.width, img.height, Buffer.from(img.rgb).toString("base64")];
  };
  const node = { plain: await decode(false), oriented: await decode(true) };
  // With alpha < 255 the browser canvas may round colour by a level (decode_browser.ts).
  return { name, type: TYPES[ext], bytes: bytes.toString("base64"), node, tolerance: alphaBackground ? 1 : 0, alphaBackground };
}

async function allCases(): Promise<ExifCase[]> {
  const files: string[] = [];
  for (let o = 1; o <= 8; o++) files.push(`exif/orient${o}_9x6.jpg`, `idefics2/orient${o}_7x5.png`);
  for (const o of [3, 6, 8]) files.push(`exif/orient${o}_9x6.png`, `exif/orient${o}_9x6.webp`);
  files.push("idefics2/exif5_27x17.jpg", "idefics2/exif6_31x19.png", "idefics2/exif7_20x26.webp");
  const cases = await Promise.all(files.map((f) => nodeCase(f, f.split(".").pop()!, read(f))));
  for (const [name, ext, bytes] of builtCases()) cases.push(await nodeCase(name, ext, bytes));
  cases.push(await nodeCase("exif/rgba_orient6_9x6.png over grey", "png", read("exif/rgba_orient6_9x6.png"), [128, 128, 128]));
  return cases;
}

before(async () => {
  ({ server: vite, url } = await startViteServer());
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await vite?.close();
});

test("built cases: Node reads the orientation PIL reads", async () => {
  const { exifOrientation } = await import("../../src/vision/exif_orientation.ts");
  for (const [name, , bytes, o] of builtCases()) assert.equal(exifOrientation(new Uint8Array(bytes)), o, name);
});

test("EXIF-oriented images decode in Chromium exactly as in Node, for both exifOrientation settings", { timeout: 300_000 }, async (t) => {
  const cases = await allCases();
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  let finish!: (r: { name: string; ok: boolean; detail: string }[]) => void;
  const done = new Promise<{ name: string; ok: boolean; detail: string }[]>((r) => (finish = r));
  await page.exposeFunction("__exifCases", () => cases);
  await page.exposeFunction("__exifDone", (r: { name: string; ok: boolean; detail: string }[]) => finish(r));
  await page.goto(`${url}/test/browser/exif-orientation.html`);
  const results = await done;
  await page.close();
  for (const r of results) t.diagnostic(`${r.ok ? "ok  " : "FAIL"} ${r.name}: ${r.detail}`);
  assert.deepEqual(pageErrors, []);
  // Per case: one note on createImageBitmap, then 6 sources x 2 settings.
  assert.equal(results.length, cases.length * 13, "every case ran");
  assert.deepEqual(results.filter((r) => !r.ok).map((r) => `${r.name}: ${r.detail}`), []);
});
