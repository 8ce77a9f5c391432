// loadImageToGpu (GPU upload) vs loadImage (CPU decode) inside Chromium
// (test/e2e/gpu-image-in-chromium.test.ts). Every case loads one source both ways, reads the
// GPU image back, strips its row padding and channel 3, and reports per-channel differences
// (largest and how many bytes differ) against the CPU bytes and against Node's decode of the
// same file (sent by the test). With alphaBackground the GPU image's alpha is composited here
// with the CPU's compositeOverBackground, which is what the GPU kernels have to reproduce.
// The page only measures; the e2e test holds the expectations.
import { WebvlmError } from "../../src/api/errors.ts";
import { acquireGpu, type GpuContext } from "../../src/gpu/device.ts";
import { readBytes } from "../../src/gpu/transfer.ts";
import { compositeOverBackground } from "../../src/vision/alpha.ts";
import { gpuImageBytes, releaseImage } from "../../src/vision/gpu_image.ts";
import { loadImageToGpu } from "../../src/vision/gpu_image_browser.ts";
import { loadImage, type LoadImageOptions } from "../../src/vision/load_image.ts";

/** A fixture file with Node's loadImage results: [width, height, base64 RGB]. */
export interface GpuImageFixture {
  /** Path under the site root, e.g. test/fixtures/vision/tiny_40x30.png. */
  path: string;
  type: string;
  bytes: string; // base64
  node: { plain: [number, number, string]; white: [number, number, string]; oriented: [number, number, string] };
}

/** Largest per-channel difference and how many bytes differ; null when the sizes differ. */
export type Diff = { max: number; count: number } | null;

export interface PixelResult {
  kind: "pixels";
  name: string;
  error?: string;
  width?: number;
  height?: number;
  channels?: number;
  rowBytes?: number;
  hasAlpha?: boolean;
  gpuVsCpu?: Diff;
  /** Against the case's reference: Node's decode of the file, or the ImageData the source was made from. */
  gpuVsRef?: Diff;
  cpuVsRef?: Diff;
  /** cpuVsRef split by the GPU image's alpha: pixels with alpha 0, and with 0 < alpha < 255. */
  cpuVsRefByAlpha?: { zero: Diff; semi: Diff };
  /** The GPU image's channel 3 vs the source's own alpha (ImageData cases). */
  alphaVsSource?: Diff;
}

/** What each path did: "ok" or "<code>: <message>" (a non-WebvlmError as "raw <name>: ..."). */
export interface ErrorResult {
  kind: "error";
  name: string;
  cpu: string;
  gpu: string;
}

export type GpuImageResult = PixelResult | ErrorResult;

declare global {
  interface Window {
    __gpuImageFixtures?: () => Promise<Record<string, GpuImageFixture>>;
    __gpuImageDone?: (r: GpuImageResult[]) => Promise<void>;
  }
}

const WHITE: [number, number, number] = [255, 255, 255];
const BITMAP_OPTIONS: ImageBitmapOptions = { premultiplyAlpha: "none", colorSpaceConversion: "none" };
const results: GpuImageResult[] = [];
const log = document.getElementById("log")!;

function record(r: GpuImageResult): void {
  results.push(r);
  log.textContent += JSON.stringify(r) + "\n";
}

function unbase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function diff(a: Uint8Array | Uint8ClampedArray, b: Uint8Array | Uint8ClampedArray): Diff {
  if (a.length !== b.length) return null;
  let max = 0;
  let count = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > 0) count++;
    if (d > max) max = d;
  }
  return { max, count };
}

/** diff(a, b) over the pixels whose alpha is 0, and over those with 0 < alpha < 255. */
function byAlpha(a: Uint8Array, b: Uint8Array, alpha: Uint8Array): { zero: Diff; semi: Diff } {
  const pick = (keep: (v: number) => boolean, x: Uint8Array) => x.filter((_, i) => keep(alpha[Math.floor(i / 3)]));
  const zero = (v: number) => v === 0;
  const semi = (v: number) => v > 0 && v < 255;
  return { zero: diff(pick(zero, a), pick(zero, b)), semi: diff(pick(semi, a), pick(semi, b)) };
}

interface Reference {
  width: number;
  height: number;
  rgb: Uint8Array;
}

const ref = ([width, height, rgb]: [number, number, string]): Reference => ({ width, height, rgb: unbase64(rgb) });

/**
 * Loads `make()` with loadImage and with loadImageToGpu (a fresh source each time) and compares.
 * `reference`: the expected RGB (Node's result for the same options, or the source's own RGB);
 * `alpha`: the source's own alpha plane.
 */
async function compare(
  ctx: GpuContext, name: string, make: () => unknown | Promise<unknown>, opts: LoadImageOptions = {},
  reference?: Reference, alpha?: Uint8Array | Uint8ClampedArray,
): Promise<void> {
  try {
    const cpu = await loadImage(await make(), undefined, opts);
    const img = await loadImageToGpu(ctx, await make(), undefined, opts);
    const raw = new Uint8Array(await readBytes(ctx, img.buffer, 0, gpuImageBytes(img.rowBytes, img.height)));
    releaseImage(ctx, img);
    const n = img.width * img.height;
    const rgb = new Uint8Array(n * 3);
    const a = new Uint8Array(n);
    for (let y = 0, p = 0; y < img.height; y++) {
      for (let x = 0; x < img.width; x++, p++) {
        const o = y * img.rowBytes + x * img.channels;
        rgb.set(raw.subarray(o, o + 3), p * 3);
        a[p] = img.channels === 4 ? raw[o + 3] : 255;
      }
    }
    const gpu = img.hasAlpha ? compositeOverBackground(rgb, a, opts.alphaBackground!) : rgb;
    const sameSize = (w: number, h: number) => w === img.width && h === img.height;
    record({
      kind: "pixels", name, width: img.width, height: img.height, channels: img.channels, rowBytes: img.rowBytes, hasAlpha: img.hasAlpha,
      gpuVsCpu: sameSize(cpu.width, cpu.height) ? diff(gpu, cpu.rgb) : null,
      ...(reference ? {
        gpuVsRef: sameSize(reference.width, reference.height) ? diff(gpu, reference.rgb) : null,
        cpuVsRef: diff(cpu.rgb, reference.rgb),
        ...(img.channels === 4 && sameSize(reference.width, reference.height) ? { cpuVsRefByAlpha: byAlpha(cpu.rgb, reference.rgb, a) } : {}),
      } : {}),
      ...(alpha ? { alphaVsSource: diff(a, alpha) } : {}),
    });
  } catch (e) {
    record({ kind: "pixels", name, error: String((e as Error)?.stack ?? e) });
  }
}

async function outcome(p: () => Promise<unknown>): Promise<string> {
  try {
    await p();
    return "ok";
  } catch (e) {
    return e instanceof WebvlmError ? `${e.code}: ${e.message}` : `raw ${(e as Error)?.name}: ${(e as Error)?.message ?? e}`;
  }
}

/** The same failing source through both paths. */
async function failBoth(ctx: GpuContext, name: string, make: () => unknown | Promise<unknown>, opts: LoadImageOptions = {}, signal?: AbortSignal): Promise<void> {
  const cpu = await outcome(async () => loadImage(await make(), signal, opts));
  const gpu = await outcome(async () => {
    const img = await loadImageToGpu(ctx, await make(), signal, opts);
    releaseImage(ctx, img);
  });
  record({ kind: "error", name, cpu, gpu });
}

async function loadedImg(src: string): Promise<HTMLImageElement> {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

/** A w x h RGBA pattern: every channel value varies; alpha cycles through 0, 1, 128, 254, 255, ... when `semi`. */
function pattern(w: number, h: number, semi: boolean): ImageData {
  const d = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    d.data[i * 4] = (i * 7) & 255;
    d.data[i * 4 + 1] = (i * 13 + 50) & 255;
    d.data[i * 4 + 2] = (255 - i * 3) & 255;
    d.data[i * 4 + 3] = semi ? [0, 1, 128, 254, 255, 37, 200][i % 7] : 255;
  }
  return d;
}

function canvasOf(data: ImageData): HTMLCanvasElement {
  const c = document.createElement("canvas");
  c.width = data.width;
  c.height = data.height;
  c.getContext("2d")!.putImageData(data, 0, 0);
  return c;
}

function offscreenOf(data: ImageData): OffscreenCanvas {
  const c = new OffscreenCanvas(data.width, data.height);
  c.getContext("2d")!.putImageData(data, 0, 0);
  return c;
}

async function main(): Promise<void> {
  const fx = (await window.__gpuImageFixtures?.()) ?? {};
  const ctx = await acquireGpu();
  const blobOf = (f: GpuImageFixture) => new Blob([unbase64(f.bytes) as BlobPart], { type: f.type });

  // Encoded sources: every way loadImage takes bytes.
  for (const key of ["png", "jpeg"]) {
    const f = fx[key];
    const bytes = unbase64(f.bytes);
    const blobUrl = URL.createObjectURL(blobOf(f));
    const plain = ref(f.node.plain);
    const sources: [string, () => unknown | Promise<unknown>][] = [
      ["Uint8Array", () => bytes],
      ["ArrayBuffer", () => bytes.slice().buffer],
      ["Blob", () => blobOf(f)],
      ["File", () => new File([bytes as BlobPart], f.path, { type: f.type })],
      ["data: URL", () => `data:${f.type};base64,${f.bytes}`],
      ["blob: URL", () => blobUrl],
      ["relative URL", () => `/${f.path}`],
      ["<img>", () => loadedImg(`/${f.path}`)],
      ["ImageBitmap", () => createImageBitmap(blobOf(f), BITMAP_OPTIONS)],
    ];
    for (const [kind, make] of sources) await compare(ctx, `${key} as ${kind}`, make, {}, plain);
    URL.revokeObjectURL(blobUrl);
  }

  // Semi-transparent PNG: alpha dropped (PIL's convert("RGB")) and composited over white.
  const alphaPng = fx.alpha;
  for (const [kind, make] of [
    ["Uint8Array", () => unbase64(alphaPng.bytes)],
    ["Blob", () => blobOf(alphaPng)],
    ["ImageBitmap", () => createImageBitmap(blobOf(alphaPng), BITMAP_OPTIONS)],
  ] as [string, () => unknown][]) {
    await compare(ctx, `alpha png as ${kind}, alpha dropped`, make, {}, ref(alphaPng.node.plain));
    await compare(ctx, `alpha png as ${kind}, over white`, make, { alphaBackground: WHITE }, ref(alphaPng.node.white));
  }

  // EXIF orientation 6: as stored (GPU path), and oriented (the CPU fallback, channels 3).
  const exif = fx.exif6;
  await compare(ctx, "exif6 jpeg, exifOrientation false", () => unbase64(exif.bytes), {}, ref(exif.node.plain));
  await compare(ctx, "exif6 jpeg as Blob, exifOrientation false", () => blobOf(exif), {}, ref(exif.node.plain));
  await compare(ctx, "exif6 jpeg, exifOrientation true", () => unbase64(exif.bytes), { exifOrientation: true }, ref(exif.node.oriented));
  await compare(ctx, "exif6 jpeg as Blob, exifOrientation true", () => blobOf(exif), { exifOrientation: true }, ref(exif.node.oriented));

  // Already-decoded sources: a 37x23 pattern (odd sizes: rows of 148 bytes padded to 256).
  const opaque = pattern(37, 23, false);
  const semi = pattern(37, 23, true);
  const alphaOf = (d: ImageData) => d.data.filter((_, i) => i % 4 === 3);
  const rgbOf = (d: ImageData): Reference => ({ width: d.width, height: d.height, rgb: new Uint8Array(d.data.filter((_, i) => i % 4 !== 3)) });
  await compare(ctx, "ImageData opaque", () => opaque, {}, rgbOf(opaque), alphaOf(opaque));
  await compare(ctx, "ImageData semi-transparent, alpha dropped", () => semi, {}, rgbOf(semi), alphaOf(semi));
  await compare(ctx, "ImageData semi-transparent, over white", () => semi, { alphaBackground: WHITE }, undefined, alphaOf(semi));
  await compare(ctx, "canvas opaque", () => canvasOf(opaque), {}, rgbOf(opaque));
  await compare(ctx, "OffscreenCanvas opaque", () => offscreenOf(opaque), {}, rgbOf(opaque));
  await compare(ctx, "ImageBitmap of opaque ImageData", () => createImageBitmap(opaque, BITMAP_OPTIONS), {}, rgbOf(opaque));
  await compare(ctx, "canvas semi-transparent, alpha dropped", () => canvasOf(semi), {}, rgbOf(semi));
  await compare(ctx, "canvas semi-transparent, over white", () => canvasOf(semi), { alphaBackground: WHITE });
  await compare(ctx, "ImageBitmap of semi-transparent ImageData, alpha dropped", () => createImageBitmap(semi, BITMAP_OPTIONS), {}, rgbOf(semi), alphaOf(semi));
  if (typeof VideoFrame === "function") {
    await compare(ctx, "VideoFrame of opaque canvas", () => new VideoFrame(canvasOf(opaque), { timestamp: 0 }), {}, rgbOf(opaque));
  } else {
    record({ kind: "pixels", name: "VideoFrame of opaque canvas", error: "no VideoFrame in this browser" });
  }

  // Failures: the same WebvlmError code from both paths.
  const png = unbase64(fx.png.bytes);
  await failBoth(ctx, "corrupt bytes", () => new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
  await failBoth(ctx, "truncated PNG", () => png.subarray(0, 60));
  await failBoth(ctx, "maxPixels (bytes)", () => png, { maxPixels: 100 });
  await failBoth(ctx, "maxPixels (canvas)", () => canvasOf(opaque), { maxPixels: 100 });
  await failBoth(ctx, "maxBytes (Blob)", () => blobOf(fx.png), { maxBytes: 100 });
  await failBoth(ctx, "maxBytes (data: URL)", () => `data:image/png;base64,${fx.png.bytes}`, { maxBytes: 100 });
  await failBoth(ctx, "404 URL", () => "/test/fixtures/vision/no-such-image.png");
  await failBoth(ctx, "aborted signal", () => png, {}, AbortSignal.abort());
  await failBoth(ctx, "closed ImageBitmap", async () => {
    const b = await createImageBitmap(opaque);
    b.close();
    return b;
  });
  await failBoth(ctx, "unsupported source", () => ({ not: "an image" }));
  // localhost is another origin than 127.0.0.1: an <img> from it without crossorigin is tainted.
  const crossOrigin = `http://localhost:${location.port}/${fx.png.path}`;
  await failBoth(ctx, "cross-origin <img> without CORS", () => loadedImg(crossOrigin));
  await failBoth(ctx, "canvas tainted by a cross-origin <img>", async () => {
    const c = document.createElement("canvas");
    c.width = 40;
    c.height = 30;
    c.getContext("2d")!.drawImage(await loadedImg(crossOrigin), 0, 0);
    return c;
  });
  record({ kind: "error", name: "WebGPU validation errors", cpu: "ok", gpu: ctx.uncapturedErrors.length ? ctx.uncapturedErrors.join("; ") : "ok" });
  ctx.destroy();
}

main()
  .catch((e) => record({ kind: "pixels", name: "page", error: String(e?.stack ?? e) }))
  .finally(() => window.__gpuImageDone?.(results));
