// loadImageToGpu in Chromium gives the bytes loadImage decodes on the CPU (test/browser/gpu-image.ts
// measures; this file holds the expectations), and fails with the same WebvlmError codes.
//
// What Chromium does, measured on SwiftShader:
//   - opaque images (PNG, JPEG, EXIF-oriented JPEG, canvases, bitmaps, ImageData, VideoFrame):
//     the GPU image's RGB equals the CPU path's, and Node's for encoded files, byte for byte;
//   - a PNG with semi-transparent alpha (alpha_90x70.png: 6260 of 6300 pixels 0 < alpha < 255,
//     40 with alpha 0): copyExternalImageToTexture (premultipliedAlpha false) of a bitmap decoded
//     with premultiplyAlpha "none" keeps the decoder's straight RGB, equal to Node's (PIL's
//     convert("RGB")) byte for byte. The CPU path draws into a 2D canvas, which stores colour
//     premultiplied in 8 bits, and getImageData divides it back out: at alpha 0 the colour is
//     gone (0), at small alpha it is quantised to steps of about 255/alpha (measured: up to 127
//     levels off, 7821 of 18780 semi-transparent bytes differ). So with alpha dropped the GPU
//     path is exact and the CPU path is not. Composited over white the loss is multiplied by
//     alpha again and vanishes: both equal Node's (measured 0; the CPU side is allowed 1);
//   - a semi-transparent canvas is premultiplied storage for both paths: the texture copy
//     unpremultiplies it exactly as getImageData does (equal bytes, both lossy vs the drawn data);
//   - ImageData is uploaded as given, RGB and alpha exactly; an ImageBitmap made from it with
//     premultiplyAlpha "none" also copies exactly, while the CPU path's canvas loses colour;
//   - a VideoFrame cannot be copied directly on SwiftShader ("Failed to copy content from video
//     element"), so it goes through createImageBitmap, like the CPU path, and equals it.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { readBytes } from "../../src/gpu/transfer.ts";
import { gpuImageBytes, releaseImage } from "../../src/vision/gpu_image.ts";
import { loadImageToGpu } from "../../src/vision/gpu_image_browser.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import type { ErrorResult, GpuImageFixture, GpuImageResult, PixelResult } from "../browser/gpu-image.ts";
import { launchChromium, startViteServer } from "./browser.ts";

let browser: Browser;
let vite: ViteDevServer;
let url: string;

const FIXTURES: Record<string, [string, string]> = {
  png: ["test/fixtures/vision/tiny_40x30.png", "image/png"],
  jpeg: ["test/fixtures/vision/photo_64x48.jpg", "image/jpeg"],
  alpha: ["test/fixtures/vision/alpha_90x70.png", "image/png"],
  exif6: ["test/fixtures/vision/exif/orient6_9x6.jpg", "image/jpeg"],
};

const fileBytes = (path: string) => new Uint8Array(readFileSync(new URL(`../../${path}`, import.meta.url)));

async function fixtures(): Promise<Record<string, GpuImageFixture>> {
  const out: Record<string, GpuImageFixture> = {};
  for (const [key, [path, type]] of Object.entries(FIXTURES)) {
    const bytes = fileBytes(path);
    const node = async (opts: Parameters<typeof loadImage>[2]): Promise<[number, number, string]> => {
      const img = await loadImage(bytes, undefined, opts);
      return [img.width, img.height, Buffer.from(img.rgb).toString("base64")];
    };
    out[key] = {
      path, type, bytes: Buffer.from(bytes).toString("base64"),
      node: { plain: await node({}), white: await node({ alphaBackground: [255, 255, 255] }), oriented: await node({ exifOrientation: true }) },
    };
  }
  return out;
}

async function runPage(): Promise<GpuImageResult[]> {
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  let finish!: (r: GpuImageResult[]) => void;
  const done = new Promise<GpuImageResult[]>((r) => (finish = r));
  const fx = await fixtures();
  await page.exposeFunction("__gpuImageFixtures", () => fx);
  await page.exposeFunction("__gpuImageDone", (r: GpuImageResult[]) => finish(r));
  await page.goto(`${url}/test/browser/gpu-image.html`);
  const results = await done;
  await page.close();
  assert.deepEqual(pageErrors, []);
  return results;
}

before(async () => {
  ({ server: vite, url } = await startViteServer());
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await vite?.close();
});

const same = { max: 0, count: 0 };

test("loadImageToGpu in Chromium: the CPU path's bytes, copied on the GPU; the same errors", { timeout: 120_000 }, async (t) => {
  const results = await runPage();
  for (const r of results) t.diagnostic(JSON.stringify(r));
  const pixels = new Map(results.filter((r): r is PixelResult => r.kind === "pixels").map((r) => [r.name, r]));
  const errors = new Map(results.filter((r): r is ErrorResult => r.kind === "error").map((r) => [r.name, r]));
  const failed = [...pixels.values()].filter((r) => r.error !== undefined).map((r) => `${r.name}: ${r.error}`);
  assert.deepEqual(failed, [], "every pixel case ran");
  const get = (name: string): PixelResult => {
    const r = pixels.get(name);
    assert.ok(r, `case ${name} ran`);
    return r;
  };

  // Opaque encoded images: every source kind, GPU = CPU = Node, byte for byte; rows 256-aligned.
  for (const key of ["png", "jpeg"]) {
    for (const kind of ["Uint8Array", "ArrayBuffer", "Blob", "File", "data: URL", "blob: URL", "relative URL", "<img>", "ImageBitmap"]) {
      const r = get(`${key} as ${kind}`);
      assert.equal(r.channels, 4, r.name);
      assert.equal(r.rowBytes! % 256, 0, `${r.name}: rowBytes ${r.rowBytes}`);
      assert.equal(r.hasAlpha, false, r.name);
      assert.deepEqual(r.gpuVsCpu, same, `${r.name}: GPU vs CPU`);
      assert.deepEqual(r.gpuVsRef, same, `${r.name}: GPU vs Node`);
      assert.deepEqual(r.cpuVsRef, same, `${r.name}: CPU vs Node`);
    }
  }

  // Semi-transparent PNG (6260 of 6300 pixels have 0 < alpha < 255).
  for (const kind of ["Uint8Array", "Blob", "ImageBitmap"]) {
    const dropped = get(`alpha png as ${kind}, alpha dropped`);
    assert.equal(dropped.hasAlpha, false);
    assert.deepEqual(dropped.gpuVsRef, same, `${dropped.name}: the texture keeps the decoder's straight RGB`);
    assert.equal(dropped.cpuVsRefByAlpha!.zero!.max, 255, `${dropped.name}: the canvas loses colour under alpha 0`);
    assert.ok(dropped.cpuVsRefByAlpha!.semi!.max > 1, `${dropped.name}: the canvas quantises colour under small alpha`);
    assert.deepEqual(dropped.gpuVsCpu, dropped.cpuVsRef, `${dropped.name}: GPU and CPU differ exactly where the canvas lost colour`);
    const white = get(`alpha png as ${kind}, over white`);
    assert.equal(white.hasAlpha, true, `${white.name}: alpha kept for the GPU to composite`);
    assert.deepEqual(white.gpuVsRef, same, `${white.name}: composited GPU bytes = Node's`);
    assert.ok(white.cpuVsRef!.max <= 1, `${white.name}: CPU within 1 of Node`);
  }

  // EXIF orientation 6: stored pixels on the GPU path; oriented ones through the CPU fallback (channels 3).
  for (const src of ["exif6 jpeg", "exif6 jpeg as Blob"]) {
    const stored = get(`${src}, exifOrientation false`);
    assert.deepEqual([stored.width, stored.height, stored.channels], [9, 6, 4], stored.name);
    assert.deepEqual(stored.gpuVsCpu, same, stored.name);
    assert.deepEqual(stored.gpuVsRef, same, stored.name);
    const oriented = get(`${src}, exifOrientation true`);
    assert.deepEqual([oriented.width, oriented.height, oriented.channels, oriented.rowBytes], [6, 9, 3, 18], oriented.name);
    assert.deepEqual(oriented.gpuVsCpu, same, oriented.name);
    assert.deepEqual(oriented.gpuVsRef, same, oriented.name);
  }

  // ImageData: uploaded as given (rowBytes width * 4), RGB and alpha exact.
  for (const name of ["ImageData opaque", "ImageData semi-transparent, alpha dropped", "ImageData semi-transparent, over white"]) {
    const r = get(name);
    assert.deepEqual([r.channels, r.rowBytes], [4, 37 * 4], name);
    assert.deepEqual(r.gpuVsCpu, same, name);
    assert.deepEqual(r.alphaVsSource, same, name);
  }
  assert.equal(get("ImageData semi-transparent, over white").hasAlpha, true);

  // Decoded sources copied with copyExternalImageToTexture.
  for (const name of [
    "canvas opaque", "OffscreenCanvas opaque", "ImageBitmap of opaque ImageData", "VideoFrame of opaque canvas",
    "canvas semi-transparent, alpha dropped", "canvas semi-transparent, over white",
  ]) {
    const r = get(name);
    assert.deepEqual([r.width, r.height, r.channels, r.rowBytes], [37, 23, 4, 256], name);
    assert.deepEqual(r.gpuVsCpu, same, name);
    if (name.includes("opaque")) assert.deepEqual(r.gpuVsRef, same, `${name}: the drawn pixels`);
  }
  assert.equal(get("canvas semi-transparent, over white").hasAlpha, true);
  // The canvas itself is premultiplied: both paths read the same lossy colour back.
  assert.ok(get("canvas semi-transparent, alpha dropped").gpuVsRef!.count > 0, "the canvas stored premultiplied colour");
  // A bitmap made with premultiplyAlpha "none" holds straight colour: the texture gets it exactly,
  // the CPU path's canvas loses it (as for the PNG above).
  const bitmapSemi = get("ImageBitmap of semi-transparent ImageData, alpha dropped");
  assert.deepEqual(bitmapSemi.gpuVsRef, same, bitmapSemi.name);
  assert.deepEqual(bitmapSemi.alphaVsSource, same, bitmapSemi.name);
  assert.ok(bitmapSemi.cpuVsRef!.count > 0, `${bitmapSemi.name}: the CPU path's canvas loses colour`);

  // Failures: the CPU path's WebvlmError code, from both paths.
  const expectedCodes: Record<string, string> = {
    "corrupt bytes": "image_decode_failed",
    "truncated PNG": "image_decode_failed",
    "maxPixels (bytes)": "limit_exceeded",
    "maxPixels (canvas)": "limit_exceeded",
    "maxBytes (Blob)": "limit_exceeded",
    "maxBytes (data: URL)": "limit_exceeded",
    "404 URL": "bad_request",
    "aborted signal": "aborted",
    "closed ImageBitmap": "image_decode_failed",
    "unsupported source": "image_decode_failed",
    "cross-origin <img> without CORS": "bad_request",
    "canvas tainted by a cross-origin <img>": "bad_request",
  };
  for (const [name, code] of Object.entries(expectedCodes)) {
    const r = errors.get(name);
    assert.ok(r, `error case ${name} ran`);
    assert.equal(r.cpu.split(":")[0], code, `${name}: CPU path ${r.cpu}`);
    assert.equal(r.gpu.split(":")[0], code, `${name}: GPU path ${r.gpu}`);
  }
  for (const name of ["cross-origin <img> without CORS", "canvas tainted by a cross-origin <img>"]) {
    assert.match(errors.get(name)!.gpu, /CORS/, `${name}: the GPU path names the CORS fix`);
  }
  assert.equal(errors.get("WebGPU validation errors")?.gpu, "ok");
});

test("loadImageToGpu in Node: loadImage's RGB8 uploaded as it is (channels 3)", async () => {
  const ctx = await acquireNodeGpu();
  try {
    for (const [path] of [FIXTURES.png, FIXTURES.alpha]) {
      const bytes = fileBytes(path);
      const opts = { alphaBackground: [255, 255, 255] as const };
      const cpu = await loadImage(bytes, undefined, opts);
      const img = await loadImageToGpu(ctx, bytes, undefined, opts);
      assert.deepEqual([img.width, img.height, img.channels, img.rowBytes, img.hasAlpha], [cpu.width, cpu.height, 3, cpu.width * 3, false]);
      const got = new Uint8Array(await readBytes(ctx, img.buffer, 0, gpuImageBytes(img.rowBytes, img.height)));
      assert.deepEqual(got.subarray(0, cpu.rgb.length), cpu.rgb, path);
      releaseImage(ctx, img);
    }
    await assert.rejects(loadImageToGpu(ctx, new Uint8Array([1, 2, 3])), { code: "image_decode_failed" });
    assert.deepEqual(ctx.uncapturedErrors, []);
  } finally {
    ctx.destroy();
  }
});
