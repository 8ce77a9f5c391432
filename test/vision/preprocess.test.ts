// Image preprocessing against the reference (PIL + numpy following transformers'
// Qwen2VLImageProcessor), whose outputs scripts/make_vision_fixtures.py wrote
// into test/fixtures/vision/.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { decodeImageNode } from "../../src/vision/decode_node.ts";
import { normalizeRgb8ToChw } from "../../src/vision/normalize.ts";
import { patchify } from "../../src/models/qwen2_vl/patchify.ts";
import { preprocessImage, targetSize } from "../../src/models/qwen2_vl/image_processor.ts";
import { resizeRgb8 } from "../../src/vision/resize.ts";
import { pyRound, requestedResize, smartResize } from "../../src/models/qwen2_vl/smart_resize.ts";

const DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "vision");

interface ImageCase {
  name: string; file: string; width: number; height: number;
  min_pixels: number; max_pixels: number; grid_thw: [number, number, number];
  resized_width: number; resized_height: number; pixel_values_shape: [number, number];
}
interface SizeCase {
  height: number; width: number; min_pixels?: number; max_pixels?: number;
  out: [number, number] | null; error?: string;
}
interface Expected {
  images: ImageCase[];
  decode: { file: string; width: number; height: number; mode: string }[];
  resize: { width: number; height: number; sha256: string; first: number[]; last: number[] }[];
  smart_resize: SizeCase[];
  requested_resize: SizeCase[];
}

const expected = JSON.parse(readFileSync(join(DIR, "expected.json"), "utf8")) as Expected;
const bytes = (name: string): Uint8Array => new Uint8Array(readFileSync(join(DIR, name)));
const f32 = (name: string): Float32Array => {
  const b = bytes(name);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

function assertCode(fn: () => unknown, code: WebvlmErrorCode): void {
  assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === code);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function countDiff(a: Uint8Array, b: Uint8Array): { n: number; max: number } {
  let n = 0;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d) n++;
    max = Math.max(max, d);
  }
  return { n, max };
}

test("pyRound rounds half to even", () => {
  assert.deepEqual([0.5, 1.5, 2.5, 3.5, -0.5, 2.4999, 2.5001].map(pyRound), [0, 2, 2, 4, 0, 2, 3]);
});

test("smartResize matches transformers on the table (QWEN2VL.md examples included)", () => {
  assert.deepEqual(smartResize(1080, 1920, { minPixels: 3136, maxPixels: 12845056 }), { height: 1092, width: 1932 });
  assert.deepEqual(smartResize(480, 640, { minPixels: 3136, maxPixels: 12845056 }), { height: 476, width: 644 });
  assert.ok(expected.smart_resize.length > 300);
  for (const c of expected.smart_resize) {
    const run = () => smartResize(c.height, c.width, { minPixels: c.min_pixels, maxPixels: c.max_pixels });
    if (c.out) {
      assert.deepEqual(run(), { height: c.out[0], width: c.out[1] }, JSON.stringify(c));
    } else {
      assertCode(run, c.error as WebvlmErrorCode);
    }
  }
});

test("smartResize error cases", () => {
  assertCode(() => smartResize(27, 500), "image_too_small");
  assertCode(() => smartResize(500, 20), "image_too_small");
  assertCode(() => smartResize(28, 5601), "aspect_ratio_too_large");
  assertCode(() => smartResize(10000, 49), "aspect_ratio_too_large");
  assert.deepEqual(smartResize(28, 5600), { height: 28, width: 5600 }); // ratio exactly 200 is allowed
  assertCode(() => smartResize(0, 100), "bad_request");
  assertCode(() => smartResize(100.5, 100), "bad_request");
});

test("requestedResize matches qwen_vl_utils for resized_height/resized_width", () => {
  for (const c of expected.requested_resize) {
    const run = () => requestedResize(c.height, c.width);
    if (c.out) assert.deepEqual(run(), { height: c.out[0], width: c.out[1] }, JSON.stringify(c));
    else assertCode(run, c.error as WebvlmErrorCode);
  }
  assert.deepEqual(targetSize(640, 480, { resizedHeight: 300, resizedWidth: 400 }), { height: 308, width: 392 });
  assertCode(() => targetSize(640, 480, { resizedHeight: 300 }), "bad_request");
});

test("PNG/JPEG/GIF/WebP decoding equals PIL's convert('RGB')", async () => {
  assert.ok(expected.decode.length >= 16);
  for (const d of expected.decode) {
    const img = await decodeImageNode(bytes(d.file));
    assert.equal(img.width, d.width, d.file);
    assert.equal(img.height, d.height, d.file);
    const want = bytes(`${d.file}.rgb.bin`);
    const diff = countDiff(img.rgb, want);
    assert.equal(diff.n, 0, `${d.file} (${d.mode}): ${diff.n} bytes differ, max ${diff.max}`);
  }
});

test("pipeline images decode to PIL's RGB", async () => {
  for (const c of expected.images) {
    const img = await decodeImageNode(bytes(c.file));
    assert.equal(img.width, c.width);
    assert.equal(img.height, c.height);
    if (c.file.endsWith(".jpg")) {
      const diff = countDiff(img.rgb, bytes(`${c.name}.decoded.bin`));
      assert.equal(diff.n, 0, `jpeg: ${diff.n} bytes differ, max ${diff.max}`);
    }
  }
});

async function referenceRgb(c: ImageCase): Promise<Uint8Array> {
  // JPEG: feed PIL's own decode, so this checks resize/normalize/patchify alone.
  if (c.file.endsWith(".jpg")) return bytes(`${c.name}.decoded.bin`);
  return (await decodeImageNode(bytes(c.file))).rgb;
}

test("resize is bit-identical to PIL BICUBIC on the pipeline images", async () => {
  for (const c of expected.images) {
    const rgb = await referenceRgb(c);
    const out = resizeRgb8(rgb, c.width, c.height, c.resized_width, c.resized_height);
    const diff = countDiff(out, bytes(`${c.name}.resized.bin`));
    assert.equal(diff.n, 0, `${c.name}: ${diff.n} bytes differ, max ${diff.max}`);
  }
});

test("resize is bit-identical to PIL BICUBIC for up/down/one-axis/extreme sizes", async () => {
  const src = await decodeImageNode(bytes("resize_src_160x120.png"));
  assert.ok(expected.resize.length >= 8);
  for (const r of expected.resize) {
    const out = resizeRgb8(src.rgb, src.width, src.height, r.width, r.height);
    assert.deepEqual(Array.from(out.subarray(0, 12)), r.first, `${r.width}x${r.height} first`);
    assert.deepEqual(Array.from(out.subarray(out.length - 12)), r.last, `${r.width}x${r.height} last`);
    assert.equal(sha256(out), r.sha256, `${r.width}x${r.height}`);
  }
});

test("preprocessImage: grid_thw, resized size and pixel_values match the processor", async () => {
  for (const c of expected.images) {
    const rgb = await referenceRgb(c);
    const r = preprocessImage(rgb, c.width, c.height, { minPixels: c.min_pixels, maxPixels: c.max_pixels });
    assert.deepEqual(r.grid, c.grid_thw, c.name);
    assert.equal(r.resizedWidth, c.resized_width);
    assert.equal(r.resizedHeight, c.resized_height);
    const want = f32(`${c.name}.pixel_values.bin`);
    assert.equal(r.pixelValues.length, c.pixel_values_shape[0] * c.pixel_values_shape[1]);
    const d = maxAbsDiff(r.pixelValues, want);
    assert.ok(d <= 1e-5, `${c.name}: max abs diff ${d}`);
    // float32 rescale/normalize is reproduced exactly, so in practice d === 0.
    assert.equal(d, 0, `${c.name}: not bit-exact (max abs diff ${d})`);
  }
});

test("patchify row order: 2x2 merge windows, (c, frame, py, px) columns", () => {
  // 56x28 image, value encodes (c, y, x); 2 distinct frames to check the frame axis.
  const H = 28, W = 56;
  const mk = (t: number) => {
    const a = new Float32Array(3 * H * W);
    for (let c = 0; c < 3; c++) for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      a[(c * H + y) * W + x] = t * 1e6 + c * 1e4 + y * 100 + x;
    }
    return a;
  };
  const { pixelValues, grid } = patchify([mk(0), mk(1)], H, W);
  assert.deepEqual(grid, [1, 2, 4]);
  const at = (row: number, col: number) => pixelValues[row * 1176 + col];
  // row 1 = window (0,0), patch (mh=0, mw=1): x0 = 14; col 0 = (c0, f0, py0, px0)
  assert.equal(at(1, 0), 14);
  // row 2 = window (0,0), patch (1,0): y0 = 14
  assert.equal(at(2, 0), 1400);
  // row 4 = window (0,1): x0 = 28
  assert.equal(at(4, 0), 28);
  // col = ((c*2 + f)*14 + py)*14 + px  -> c=2, f=1, py=3, px=5
  assert.equal(at(0, ((2 * 2 + 1) * 14 + 3) * 14 + 5), 1e6 + 2e4 + 300 + 5);
  // odd frame count repeats the last frame
  const three = patchify([mk(0), mk(1), mk(2)], H, W);
  assert.deepEqual(three.grid, [2, 2, 4]);
  assert.equal(three.pixelValues[8 * 1176 + 196], 2e6); // t=1, frame 1 is a copy of frame 2
  assertCode(() => patchify([mk(0)], 30, W), "shape_mismatch");
});

test("normalize: f32(f64(x)/255) then float32 (v - mean) / std", () => {
  const out = normalizeRgb8ToChw(new Uint8Array([0, 128, 255]), 1, 1);
  const ref = (x: number, m: number, s: number) =>
    Math.fround(Math.fround(Math.fround(x * (1 / 255)) - Math.fround(m)) / Math.fround(s));
  assert.equal(out[0], ref(0, 0.48145466, 0.26862954));
  assert.equal(out[1], ref(128, 0.4578275, 0.26130258));
  assert.equal(out[2], ref(255, 0.40821073, 0.27577711));
});

test("corrupt or unknown bytes fail with image_decode_failed", async () => {
  const png = bytes("square_84.png");
  const cases: [string, Uint8Array][] = [
    ["empty", new Uint8Array(0)],
    ["garbage", new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])],
    ["png truncated", png.subarray(0, 200)],
    ["png bad crc", (() => { const b = png.slice(); b[40] ^= 0xff; return b; })()],
    ["jpeg truncated", bytes("photo_64x48.jpg").subarray(0, 300)],
    ["jpeg truncated in scan", bytes("photo_64x48.jpg").subarray(0, 4000)],
    ["jpeg no EOI", (() => { const b = bytes("photo_64x48.jpg"); return b.subarray(0, b.length - 2); })()],
    ["jpeg header only", new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 0, 16])],
    ["gif truncated", bytes("first.gif").subarray(0, 20)],
    ["gif truncated in data", (() => { const b = bytes("first.gif"); return b.subarray(0, b.length - 40); })()],
    ["webp truncated", bytes("lossy.webp").subarray(0, 40)],
  ];
  for (const [what, b] of cases) {
    await assert.rejects(decodeImageNode(b), (e: unknown) => {
      assert.ok(e instanceof WebvlmError, `${what}: ${String(e)}`);
      assert.equal(e.code, "image_decode_failed", what);
      return true;
    });
  }
});
