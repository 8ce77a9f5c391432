// EXIF helpers behind the browser path (decode_browser.ts): inverse orientations, alpha moving
// with the pixels, rewriting orientation entries to 1, and when a Blob's head settles the tag.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { applyExifOrientation, exifOrientation, scanExifOrientation, withoutExifOrientation } from "../../src/vision/exif_orientation.ts";
import { loadImage } from "../../src/vision/load_image.ts";

const read = (f: string) => new Uint8Array(readFileSync(new URL(`../fixtures/vision/${f}`, import.meta.url)));

function synthetic(w: number, h: number): { rgb: Uint8Array; width: number; height: number; alpha: Uint8Array } {
  const rgb = new Uint8Array(w * h * 3);
  const alpha = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) {
    rgb.set([i & 255, (i * 7) & 255, (i * 13) & 255], i * 3);
    alpha[i] = (i * 3 + 1) & 255;
  }
  return { rgb, width: w, height: h, alpha };
}

test("inverse orientations: 6 and 8 undo each other, the others undo themselves", () => {
  const img = synthetic(5, 3);
  const inverse: Record<number, number> = { 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6 };
  for (let o = 2; o <= 8; o++) {
    const there = applyExifOrientation(img, o);
    assert.deepEqual([there.width, there.height], o >= 5 ? [3, 5] : [5, 3], `size for ${o}`);
    assert.deepEqual(applyExifOrientation(there, inverse[o]), img, `inverse of ${o}`);
    if (o === 6 || o === 8) assert.notDeepEqual(applyExifOrientation(there, o), img, `${o} is not its own inverse`);
  }
});

test("alpha moves with the pixels", () => {
  const img = synthetic(4, 3);
  // A copy whose red channel is the alpha: after orienting, the two must still agree.
  const red = { rgb: img.rgb.slice(), width: 4, height: 3 };
  for (let i = 0; i < 12; i++) red.rgb[i * 3] = img.alpha[i];
  for (let o = 1; o <= 8; o++) {
    const out = applyExifOrientation(img, o);
    const ref = applyExifOrientation(red, o);
    assert.ok(out.alpha, `alpha kept for ${o}`);
    for (let i = 0; i < 12; i++) assert.equal(out.alpha[i], ref.rgb[i * 3], `orientation ${o} pixel ${i}`);
  }
});

test("withoutExifOrientation rewrites only the orientation value, and Node then decodes the stored pixels", async () => {
  const files = ["exif/orient6_9x6.jpg", "exif/orient3_9x6.png", "exif/orient8_9x6.webp", "idefics2/exif5_27x17.jpg", "idefics2/exif7_20x26.webp"];
  for (const f of files) {
    const bytes = read(f);
    const scan = scanExifOrientation(bytes);
    assert.equal(scan.orientation, exifOrientation(bytes), f);
    assert.ok(scan.orientation > 1 && scan.decided, f);
    const neutral = withoutExifOrientation(bytes, scan.fields);
    assert.notEqual(neutral, bytes, `${f}: a copy`);
    assert.equal(exifOrientation(neutral), 1, f);
    let changed = 0;
    for (let i = 0; i < bytes.length; i++) if (bytes[i] !== neutral[i]) changed++;
    assert.ok(changed >= 1 && changed <= (f.endsWith(".png") ? 6 : 2), `${f}: ${changed} bytes changed (PNG: and its CRC)`);
    const stored = await loadImage(bytes, undefined, { exifOrientation: false });
    assert.deepEqual(await loadImage(neutral, undefined, { exifOrientation: true }), stored, f);
  }
  const plain = read("exif/orient1_9x6.jpg");
  assert.equal(withoutExifOrientation(plain, scanExifOrientation(plain).fields), plain, "orientation 1: the same bytes");
});

test("a PNG eXIf chunk keeps a valid CRC after the rewrite, and a broken one stays broken", () => {
  const png = read("exif/orient6_9x6.png");
  const f = scanExifOrientation(png).fields[0];
  assert.ok(f.crc, "the eXIf chunk's range is known");
  const crcAt = f.crc.end;
  const fixed = withoutExifOrientation(png, [f]);
  assert.notDeepEqual([...fixed.subarray(crcAt, crcAt + 4)], [...png.subarray(crcAt, crcAt + 4)], "CRC refreshed");
  const broken = png.slice();
  broken[crcAt] ^= 0xff;
  const out = withoutExifOrientation(broken, scanExifOrientation(broken).fields);
  assert.deepEqual([...out.subarray(crcAt, crcAt + 4)], [...broken.subarray(crcAt, crcAt + 4)], "bad CRC left as it was");
});

test("big-endian LONG orientation entries are read and rewritten", () => {
  // SOI, APP1 "Exif\0\0" + MM TIFF with one LONG 0x0112 = 6, then SOS.
  const tiff = [0x4d, 0x4d, 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 4, 0, 0, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0];
  const payload = [0x45, 0x78, 0x69, 0x66, 0, 0, ...tiff];
  const jpg = new Uint8Array([0xff, 0xd8, 0xff, 0xe1, 0, payload.length + 2, ...payload, 0xff, 0xda, 0, 2]);
  const scan = scanExifOrientation(jpg);
  assert.deepEqual([scan.orientation, scan.decided, scan.fields.length], [6, true, 1]);
  const neutral = withoutExifOrientation(jpg, scan.fields);
  assert.equal(exifOrientation(neutral), 1);
  assert.deepEqual([...neutral.subarray(scan.fields[0].at, scan.fields[0].at + 4)], [0, 0, 0, 1]);
});

test("a head is undecided until the container rules out more EXIF", () => {
  const jpg = read("exif/orient6_9x6.jpg");
  assert.equal(scanExifOrientation(jpg.subarray(0, 10)).decided, false, "JPEG cut inside its APP0");
  const png = read("exif/orient3_9x6.png");
  assert.equal(scanExifOrientation(png.subarray(0, 30)).decided, false, "PNG cut before eXIf");
  assert.equal(scanExifOrientation(read("idefics2/rgb_30x20.png")).decided, true, "PNG without EXIF, to IEND");
  assert.equal(scanExifOrientation(read("first.gif")).decided, true, "GIF: no EXIF to look for");
  assert.equal(scanExifOrientation(new Uint8Array([0xff, 0xd8])).decided, false, "too short to tell");
});
