// Llama 3.2 Vision's GPU preprocessing in Node (Dawn): the processor's GPU path (gpu_tiles.ts:
// decode to the GPU, Pillow-exact resize, 8-bit zero pad, normalize, tiles cut into patch rows)
// against the numpy/PIL port of transformers' MllamaImageProcessor (test/fixtures/vision/mllama,
// scripts/make_mllama_fixtures.py) and against the CPU path, bit for bit (Uint32 views), on every
// tile grid, tile counts 1..6, both filters, odd sizes, extreme aspect ratios, alpha and EXIF
// images; zero rows for the tiles past the canvas; the per-image CPU fallback.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { encode as encodePng } from "fast-png";
import { WebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { isTensor } from "../../src/gpu/tensor.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import type { MediaRef, PreparedMedia } from "../../src/models/family.ts";
import { mllamaPatchRowShape } from "../../src/models/mllama/gpu_tiles.ts";
import {
  MLLAMA_DEFAULT_PREPROCESS, mllamaImageLayout, parseMllamaPreprocess, supportedAspectRatios, type MllamaPreprocessOptions,
} from "../../src/models/mllama/image_processor.ts";
import { MllamaProcessor, isMllamaImagePayload, type MllamaImagePayload } from "../../src/models/mllama/processor.ts";
import { mllamaPatchRows } from "../../src/models/mllama/vision.ts";
import { FIXTURES, lcgImage, type BlobEntry } from "./fixtures.ts";
import { assertSameBits } from "../util/compare.ts";

const DIR = join(FIXTURES, "mllama");
const IMAGE_TOKEN = 128256;

interface Case {
  name: string; image: string; preprocessor_config: Record<string, unknown>;
  rows: number; cols: number; aspect_ratio_id: number; num_tiles: number; pixel_values: BlobEntry;
}
const { cases } = JSON.parse(readFileSync(join(DIR, "cases.json"), "utf8")) as { cases: Case[] };
const blob = new Uint8Array(readFileSync(join(DIR, "cases.bin")));
const f32Of = (e: BlobEntry): Float32Array => new Float32Array(blob.slice(e.offset, e.offset + e.length).buffer);
const file = (path: string): Uint8Array => new Uint8Array(readFileSync(path));
const imageRef = (source: unknown): MediaRef => ({ kind: "image", source, options: {} });

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => gpu?.destroy());

function processors(pp: MllamaPreprocessOptions, patchSize: number, ctx: () => GpuContext = () => gpu): { onGpu: MllamaProcessor; onCpu: MllamaProcessor } {
  return {
    onGpu: new MllamaProcessor({ imageTokenId: IMAGE_TOKEN, preprocess: pp, patchSize }, ctx),
    onCpu: new MllamaProcessor({ imageTokenId: IMAGE_TOKEN, preprocess: pp, patchSize }),
  };
}

function payload(m: PreparedMedia): MllamaImagePayload {
  assert.ok(isMllamaImagePayload(m.payload));
  return m.payload;
}

const geometry = (p: MllamaImagePayload): number[] => [p.aspectRatioId, p.numTiles, p.rows, p.cols];

/** The vision tower's patch rows of a prepared image: read back (GPU) or cut from pixel_values (CPU). */
async function patchRowsOf(m: PreparedMedia, pp: MllamaPreprocessOptions, patchSize: number): Promise<Float32Array> {
  const pv = payload(m).pixelValues;
  if (isTensor(pv)) {
    assert.deepEqual(pv.shape, mllamaPatchRowShape(pp, patchSize));
    return readF32(gpu, pv);
  }
  return cpuRows(pv, pp, patchSize);
}

const cpuRows = (pixelValues: Float32Array, pp: MllamaPreprocessOptions, patchSize: number): Float32Array =>
  mllamaPatchRows({ tileSize: pp.tileSize, patchSize, numChannels: 3, maxNumTiles: pp.maxImageTiles }, pixelValues);


/**
 * Prepares `sources` on both paths and checks the GPU one: device "gpu", a tensor payload, the CPU
 * path's geometry, bit-identical patch rows, exact zeros past the canvas's tiles. Returns the GPU items.
 */
async function compareBothPaths(pp: MllamaPreprocessOptions, patchSize: number, sources: unknown[], what: string): Promise<{ gpuItems: PreparedMedia[]; cpuItems: PreparedMedia[] }> {
  const { onGpu, onCpu } = processors(pp, patchSize);
  const refs = sources.map(imageRef);
  const gpuItems = await onGpu.prepare(refs);
  const cpuItems = await onCpu.prepare(refs);
  try {
    for (const [i, g] of gpuItems.entries()) {
      const c = cpuItems[i];
      assert.equal(g.device, "gpu", `${what} #${i}: on the GPU`);
      assert.equal(c.device, "cpu");
      assert.ok(isTensor(payload(g).pixelValues), `${what} #${i}: pixels stay on the GPU`);
      assert.deepEqual(geometry(payload(g)), geometry(payload(c)), `${what} #${i}: geometry`);
      assert.equal(g.tokens, 0);
      const got = await patchRowsOf(g, pp, patchSize);
      assertSameBits(got, await patchRowsOf(c, pp, patchSize), `${what} #${i} (${payload(g).rows}x${payload(g).cols}) vs the CPU path`);
      const perTile = got.length / pp.maxImageTiles;
      assert.ok(got.subarray(payload(g).numTiles * perTile).every((v) => Object.is(v, 0)), `${what} #${i}: unused tiles are +0`);
    }
  } finally {
    onGpu.dispose();
  }
  return { gpuItems, cpuItems };
}

test("fixture cases: GPU patch rows equal the numpy/PIL reference's pixel_values and the CPU path, bit for bit", async () => {
  assert.ok(cases.length >= 13);
  const grids = new Set<string>();
  for (const c of cases) {
    const pp = parseMllamaPreprocess(c.preprocessor_config);
    // Two patch sizes per tile: 28 -> 14 (the real ratio 560/14 = 40 aside) and 7; 30 -> 6 (tiny-b) and 15.
    for (const patchSize of pp.tileSize === 28 ? [14, 7] : [6, 15]) {
      const { gpuItems } = await compareBothPaths(pp, patchSize, [file(join(DIR, c.image))], `${c.name} p${patchSize}`);
      const [g] = gpuItems;
      const p = payload(g);
      assert.deepEqual(geometry(p), [c.aspect_ratio_id, c.num_tiles, c.rows, c.cols], c.name);
      assertSameBits(await patchRowsOf(g, pp, patchSize), cpuRows(f32Of(c.pixel_values), pp, patchSize), `${c.name} p${patchSize} vs the reference`);
      grids.add(`${c.rows}x${c.cols}`);
      g.release?.();
      g.release?.(); // idempotent
    }
  }
  console.log(`# fixture grids: ${[...grids].sort().join(" ")}`);
});

/** A PNG of a pattern (lcgImage noise or ramp), RGB or RGBA (alpha a ramp through 0 and 255). */
function png(width: number, height: number, seed: number, alpha = false): Uint8Array {
  const rgb = lcgImage(width, height, 3, seed, seed % 2 ? "noise" : "ramp");
  if (!alpha) return encodePng({ width, height, data: rgb, channels: 3, depth: 8 });
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    rgba.set(rgb.subarray(i * 3, i * 3 + 3), i * 4);
    rgba[i * 4 + 3] = (i * 37) % 256 < 40 ? 0 : (i * 37) % 256 > 215 ? 255 : (i * 37) % 256;
  }
  return encodePng({ width, height, data: rgba, channels: 4, depth: 8 });
}

test("every tile grid for max_image_tiles 1, 2, 4 and 6, both filters, odd sizes, extreme aspect ratios, alpha", async () => {
  const pp = (tile: number, n: number, resample: "bilinear" | "bicubic"): MllamaPreprocessOptions => ({
    ...MLLAMA_DEFAULT_PREPROCESS, tileSize: tile, maxImageTiles: n, resample,
    imageMean: [0.48145466, 0.4578275, 0.40821073], imageStd: [0.26862954, 0.26130258, 0.27577711],
  });
  // [width, height, tile, max tiles, filter, alpha]
  const plan: [number, number, number, number, "bilinear" | "bicubic", boolean][] = [
    [13, 11, 14, 4, "bilinear", false], // upscaled into 1x1
    [41, 13, 14, 4, "bicubic", true], // 1x3
    [97, 17, 14, 4, "bilinear", false], // 1x4, downscaled
    [13, 40, 14, 4, "bicubic", false], // 3x1
    [9, 61, 14, 4, "bilinear", true], // 4x1, downscaled
    [27, 30, 14, 4, "bicubic", false], // 2x2
    [31, 14, 14, 4, "bilinear", false], // 1x3, not resized (odd width)
    [28, 14, 14, 4, "bicubic", true], // 1x2, exact fit
    [14, 28, 14, 4, "bilinear", false], // 2x1, exact fit
    [6, 300, 14, 4, "bilinear", false], // extreme tall: 4x1, 1 pixel wide after the resize
    [300, 6, 14, 4, "bicubic", false], // extreme wide: 1x4, 1 pixel high
    [53, 37, 14, 1, "bilinear", true], // N = 1: downscaled into one tile
    [50, 21, 14, 2, "bicubic", false], // N = 2: 1x2
    [59, 41, 14, 6, "bilinear", false], // N = 6: 2x3
    [41, 59, 14, 6, "bicubic", true], // N = 6: 3x2
    [140, 20, 14, 6, "bilinear", false], // N = 6: 1x6
  ];
  const covered = new Map<number, Set<string>>();
  for (const [i, [w, h, tile, n, filter, alpha]] of plan.entries()) {
    const opts = pp(tile, n, filter);
    const lay = mllamaImageLayout(h, w, opts);
    (covered.get(n) ?? covered.set(n, new Set()).get(n)!).add(`${lay.grid.rows}x${lay.grid.cols}`);
    const { gpuItems } = await compareBothPaths(opts, 7, [png(w, h, i, alpha)], `${w}x${h} tile ${tile} N ${n} ${filter}${alpha ? " rgba" : ""}`);
    for (const g of gpuItems) g.release?.();
  }
  // Every aspect ratio of N = 4 is exercised; N = 6 adds the 2x3 / 3x2 canvases.
  const all4 = supportedAspectRatios(4).map((g) => `${g.rows}x${g.cols}`);
  assert.deepEqual([...covered.get(4)!].sort(), all4.sort());
  for (const g of ["2x3", "3x2", "1x6"]) assert.ok(covered.get(6)!.has(g), g);
});

test("real tile size 560 / patch 14 and the real checkpoint's settings: a 1x2 canvas (not resized, padded) and an upscaled 1x1", async () => {
  const real = parseMllamaPreprocess({
    do_convert_rgb: true, do_normalize: true, do_pad: true, do_rescale: true, do_resize: true,
    image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711],
    max_image_tiles: 4, resample: 2, rescale_factor: 0.00392156862745098, size: { height: 560, width: 560 },
  });
  const sources = [file(join(FIXTURES, "wide_700x210.png")), file(join(FIXTURES, "resize_src_160x120.png"))];
  const { gpuItems } = await compareBothPaths(real, 14, sources, "560");
  for (const g of gpuItems) g.release?.();
});

test("EXIF-oriented JPEG/PNG (not rotated: PIL images as opened), do_convert_rgb false; keys follow the pixels", async () => {
  const opts = { ...MLLAMA_DEFAULT_PREPROCESS, tileSize: 14 };
  const exif = ["orient6_9x6.jpg", "orient3_9x6.png", "orient6_9x6.webp"].map((f) => file(join(FIXTURES, "exif", f)));
  const rgba = file(join(DIR, "rgba_33x29.png"));
  const tall = file(join(DIR, "tall_23x90.png"));
  const { gpuItems } = await compareBothPaths(opts, 7, [...exif, rgba, tall, rgba], "exif/alpha");
  assert.equal(gpuItems[3].hash, gpuItems[5].hash, "same image, same key");
  assert.notEqual(gpuItems[3].hash, gpuItems[4].hash, "different images, different keys");
  for (const g of gpuItems) g.release?.();
  // do_convert_rgb false: alpha dropped (not composited), on both paths alike.
  const dropped = await compareBothPaths({ ...opts, doConvertRgb: false }, 7, [rgba], "alpha dropped");
  assert.notEqual(dropped.gpuItems[0].hash, gpuItems[3].hash, "alpha dropped differs from white compositing");
  dropped.gpuItems[0].release?.();
});

test("fallback: an image past the device's binding limit, or one the GPU path cannot express, takes the CPU path", async () => {
  const opts = { ...MLLAMA_DEFAULT_PREPROCESS, tileSize: 28 };
  const small = { ...gpu, limits: { ...gpu.limits, maxStorageBufferBindingSize: 4096 } } as GpuContext;
  const src = file(join(DIR, "big_200x150.png"));
  const { onGpu, onCpu } = processors(opts, 14, () => small);
  const [m] = await onGpu.prepare([imageRef(src)]);
  const [cpu] = await onCpu.prepare([imageRef(src)]);
  assert.equal(m.device, "cpu");
  assert.ok(payload(m).pixelValues instanceof Float32Array);
  assertSameBits(payload(m).pixelValues as Float32Array, payload(cpu).pixelValues as Float32Array, "fallback");
  assert.equal(m.hash, cpu.hash);
  onGpu.dispose();
  // A patch size that does not divide the tile: CPU path (the model would reject it anyway).
  const odd = processors(opts, 5);
  const [o] = await odd.onGpu.prepare([imageRef(src)]);
  assert.equal(o.device, "cpu");
  odd.onGpu.dispose();
  // A 1-pixel-wide image resized to width 0: the same bad_request as the CPU path (PIL rejects it too).
  const thin = processors(opts, 14);
  const reject = (p: Promise<unknown>) => assert.rejects(p, (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && /newWidth/.test(e.message));
  await reject(thin.onGpu.prepare([imageRef(png(1, 200, 3))]));
  await reject(thin.onCpu.prepare([imageRef(png(1, 200, 3))]));
  // A later image failing releases the earlier GPU items (no leak, nothing half-prepared).
  await assert.rejects(thin.onGpu.prepare([imageRef(src), imageRef("no-such-file.png")]));
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(thin.onGpu.prepare([imageRef(src)], ac.signal), (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
  thin.onGpu.dispose();
});
