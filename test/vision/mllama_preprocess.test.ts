// Llama 3.2 Vision's media processor against an independent numpy/PIL port of transformers'
// MllamaImageProcessor (scripts/make_mllama_fixtures.py wrote test/fixtures/vision/mllama/), plus
// the spec's own worked examples (/work/shared/MLLAMA.md §3.1-3.3) written here by hand.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import { compositeOverBackground } from "../../src/vision/alpha.ts";
import type { MediaRef } from "../../src/models/family.ts";
import {
  MLLAMA_DEFAULT_PREPROCESS, aspectRatioId, fitToCanvasSize, mllamaImageLayout, optimalTileGrid, parseMllamaPreprocess,
  processMllamaImage, supportedAspectRatios,
} from "../../src/models/mllama/image_processor.ts";
import { MllamaProcessor, createMllamaProcessor, isMllamaImagePayload } from "../../src/models/mllama/processor.ts";
import { FIXTURES, diffSummary, type BlobEntry } from "./fixtures.ts";

const DIR = join(FIXTURES, "mllama");

interface Case {
  name: string; image: string; height: number; width: number; preprocessor_config: Record<string, unknown>;
  rows: number; cols: number; aspect_ratio_id: number; num_tiles: number; resized: [number, number];
  aspect_ratio_mask: number[]; rgb: BlobEntry; pixel_values: BlobEntry;
}
interface SizeCase {
  height: number; width: number; tile: number; max_image_tiles: number;
  rows: number; cols: number; aspect_ratio_id: number; num_tiles: number; resized: [number, number];
}
const json = <T>(name: string): T => JSON.parse(readFileSync(join(DIR, name), "utf8")) as T;
const { cases } = json<{ cases: Case[] }>("cases.json");
const { sizes, aspect_ratios: ratios } = json<{ sizes: SizeCase[]; aspect_ratios: Record<string, [number, number][]> }>("sizes.json");
const blob = new Uint8Array(readFileSync(join(DIR, "cases.bin")));
const bytesAt = (e: BlobEntry): Uint8Array => blob.slice(e.offset, e.offset + e.length);
const file = (name: string): Uint8Array => new Uint8Array(readFileSync(join(DIR, name)));

function assertCode(fn: () => unknown, code: WebvlmErrorCode, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === code && (!pattern || pattern.test(e.message)));
}

test("supported aspect ratios: (rows, cols) pairs, a outer, ids 1-based (§3.1)", () => {
  // §3.1, by hand: N = 4.
  assert.deepEqual(supportedAspectRatios(4).map((g) => [g.rows, g.cols]), [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]);
  const ids = [[1, 1, 1], [1, 2, 2], [1, 3, 3], [1, 4, 4], [2, 1, 5], [2, 2, 6], [3, 1, 7], [4, 1, 8]];
  for (const [rows, cols, id] of ids) assert.equal(aspectRatioId({ rows, cols }, 4), id);
  for (const [n, pairs] of Object.entries(ratios)) assert.deepEqual(supportedAspectRatios(Number(n)).map((g) => [g.rows, g.cols]), pairs, `N=${n}`);
  assertCode(() => aspectRatioId({ rows: 2, cols: 3 }, 4), "bad_request", /2x3/);
  assertCode(() => supportedAspectRatios(0), "bad_request");
});

test("the spec's worked examples at tile 560, N = 4 (§3.3)", () => {
  const lay = (h: number, w: number) => {
    const l = mllamaImageLayout(h, w, { tileSize: 560, maxImageTiles: 4 });
    return [l.grid.rows * 560, l.grid.cols * 560, l.aspectRatioId, l.resizedHeight, l.resizedWidth];
  };
  // 550 x 550 -> 560 x 559 (equal scales take the else branch; 550 * (560/550) = 559.999...).
  assert.deepEqual(lay(550, 550), [560, 560, 1, 560, 559]);
  // 380 x 475 -> 447 x 560 (exact integer arithmetic would give 448).
  assert.deepEqual(lay(380, 475), [560, 560, 1, 447, 560]);
  assert.deepEqual(fitToCanvasSize(380, 475, 560, 560, 560), { height: 447, width: 560 });
  assert.deepEqual(lay(800, 600), [1120, 1120, 6, 800, 600]);
  assert.deepEqual(lay(480, 640), [560, 1120, 2, 480, 640]);
  assert.deepEqual(lay(1080, 1920), [1120, 1120, 6, 630, 1120]);
  assert.deepEqual(lay(1000, 300), [1120, 560, 5, 1000, 300]);
});

test("canvas, aspect ratio id and resized size match the reference port for every size", () => {
  assert.ok(sizes.length > 40);
  for (const s of sizes) {
    const l = mllamaImageLayout(s.height, s.width, { tileSize: s.tile, maxImageTiles: s.max_image_tiles });
    const got = [l.grid.rows, l.grid.cols, l.aspectRatioId, l.numTiles, l.resizedHeight, l.resizedWidth];
    assert.deepEqual(got, [s.rows, s.cols, s.aspect_ratio_id, s.num_tiles, ...s.resized], `${s.height}x${s.width} tile ${s.tile} N ${s.max_image_tiles}`);
    assert.deepEqual(optimalTileGrid(s.height, s.width, s.max_image_tiles, s.tile), { rows: s.rows, cols: s.cols });
  }
});

test("canvas ties: equal scales pick the smallest area, first in order (§3.2)", () => {
  // A 10x10 image at tile 20: every canvas scales it by 2 (the limiting side); 1x1 has the least area.
  assert.deepEqual(optimalTileGrid(10, 10, 4, 20), { rows: 1, cols: 1 });
  // 10 tall x 40 wide at tile 20: (1,2) and (2,2) both scale by exactly 1 (the smallest scale >= 1);
  // (1,2) has the smaller area.
  assert.deepEqual(optimalTileGrid(10, 40, 4, 20), { rows: 1, cols: 2 });
  // No canvas fits without shrinking: the largest (least shrinking) scale wins.
  assert.deepEqual(optimalTileGrid(1000, 10, 4, 20), { rows: 4, cols: 1 });
});

for (const c of cases) {
  test(`pixel_values, aspect ratio id and mask match the reference: ${c.name}`, async () => {
    const opts = parseMllamaPreprocess(c.preprocessor_config);
    // convert_to_rgb: transparency over white (loadImage's alphaBackground), no EXIF rotation.
    const img = await loadImage(file(c.image), undefined, { alphaBackground: [255, 255, 255] });
    assert.equal(diffSummary(img.rgb, bytesAt(c.rgb)), null, "decoded + composited RGB");
    const out = processMllamaImage(img, opts);
    assert.deepEqual([out.grid.rows, out.grid.cols, out.aspectRatioId, out.numTiles, out.resizedHeight, out.resizedWidth],
      [c.rows, c.cols, c.aspect_ratio_id, c.num_tiles, ...c.resized]);
    assert.deepEqual(Array.from(out.aspectRatioMask), c.aspect_ratio_mask);
    const want = new Float32Array(bytesAt(c.pixel_values).buffer);
    assert.equal(out.pixelValues.length, want.length);
    assert.equal(diffSummary(out.pixelValues, want), null, "pixel_values bit-exact");
    // Unused tiles are exact zeros; padded pixels of used tiles are -mean/std, not 0.
    const tile = opts.tileSize;
    const per = 3 * tile * tile;
    assert.ok(out.pixelValues.subarray(out.numTiles * per).every((v) => Object.is(v, 0)));
  });
}

test("the processor: tokens 0, one <|image|> per image, payload with tiles and ids; the hash follows the pixels", async () => {
  const rgba = cases.find((c) => c.name === "rgba") as Case;
  const tall = cases.find((c) => c.name === "tall") as Case;
  const proc = new MllamaProcessor({ imageTokenId: 128256, preprocess: parseMllamaPreprocess(rgba.preprocessor_config) });
  const refs: MediaRef[] = [rgba, tall, rgba].map((c) => ({ kind: "image", source: file(c.image), options: {} }));
  const media = await proc.prepare(refs);
  assert.equal(media.length, 3);
  for (const [m, c] of [[media[0], rgba], [media[1], tall]] as const) {
    assert.equal(m.kind, "image");
    assert.equal(m.tokens, 0);
    assert.ok(isMllamaImagePayload(m.payload));
    const p = m.payload;
    assert.deepEqual([p.aspectRatioId, p.numTiles, p.rows, p.cols], [c.aspect_ratio_id, c.num_tiles, c.rows, c.cols]);
    assert.ok(p.pixelValues instanceof Float32Array, "no device: the CPU path");
    assert.equal(diffSummary(p.pixelValues, new Float32Array(bytesAt(c.pixel_values).buffer)), null);
  }
  assert.equal(media[0].hash, media[2].hash);
  assert.notEqual(media[0].hash, media[1].hash);
  assert.deepEqual(proc.placeholders(media), [{ kind: "image", tokenId: 128256, counts: [1, 1, 1] }]);
});

test("the processor rejects videos (before decoding), honours abort, and do_convert_rgb false drops alpha", async () => {
  const proc = new MllamaProcessor({ imageTokenId: 128256, preprocess: { ...MLLAMA_DEFAULT_PREPROCESS, tileSize: 28 } });
  await assert.rejects(proc.prepare([{ kind: "image", source: "nope", options: {} }, { kind: "video", source: [], options: {} }]),
    (e: unknown) => e instanceof WebvlmError && e.code === "unsupported_feature" && /item 2 is a video/.test(e.message));
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(proc.prepare([{ kind: "image", source: file("tiny_9x7.png"), options: {} }], ac.signal),
    (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
  const dropped = await loadImage(file("rgba_33x29.png"));
  const noConvert = new MllamaProcessor({ imageTokenId: 128256, preprocess: { ...MLLAMA_DEFAULT_PREPROCESS, tileSize: 28, doConvertRgb: false } });
  const [m] = await noConvert.prepare([{ kind: "image", source: file("rgba_33x29.png"), options: {} }]);
  assert.ok(isMllamaImagePayload(m.payload));
  const direct = processMllamaImage(dropped, { ...MLLAMA_DEFAULT_PREPROCESS, tileSize: 28 });
  assert.ok(m.payload.pixelValues instanceof Float32Array);
  assert.equal(diffSummary(m.payload.pixelValues, direct.pixelValues), null);
  assertCode(() => new MllamaProcessor({ imageTokenId: -1, preprocess: MLLAMA_DEFAULT_PREPROCESS }), "bad_request", /imageTokenId/);
});

test("alpha compositing over white: Pillow's integer rounding at the edges", () => {
  // alpha 0 -> the background; alpha 255 -> the colour; black at alpha 128 over white, by
  // AlphaComposite.c's steps: coef1 = 128*255*255*128 / (255*255) = 16384, coef2 = 32640 - 16384,
  // tmp = 255 * 16256 + (0x80 << 7) = 4161664, SHIFTFORDIV255 -> 16320, >> 7 -> 127.
  // (Every alpha value is also checked against PIL in the fixtures above.)
  const out = compositeOverBackground(new Uint8Array([10, 20, 30, 10, 20, 30, 0, 0, 0]), new Uint8Array([0, 255, 128]), [255, 255, 255]);
  assert.deepEqual(Array.from(out), [255, 255, 255, 10, 20, 30, 127, 127, 127]);
});

test("preprocessor_config.json: defaults, the real file's values, typed errors naming the field", () => {
  const real = {
    do_convert_rgb: true, do_normalize: true, do_pad: true, do_rescale: true, do_resize: true,
    image_mean: [0.48145466, 0.4578275, 0.40821073], image_processor_type: "MllamaImageProcessor",
    image_std: [0.26862954, 0.26130258, 0.27577711], max_image_tiles: 4, resample: 2,
    rescale_factor: 0.00392156862745098, size: { height: 560, width: 560 },
  };
  const o = parseMllamaPreprocess(real);
  assert.deepEqual([o.tileSize, o.maxImageTiles, o.resample, o.rescaleFactor, o.doConvertRgb], [560, 4, "bilinear", 0.00392156862745098, true]);
  assert.deepEqual(o.imageMean, [0.48145466, 0.4578275, 0.40821073]);
  // Class defaults (MllamaImageProcessor.__init__): size 224, IMAGENET_STANDARD mean/std 0.5, N 4.
  const d = parseMllamaPreprocess({});
  assert.deepEqual([d.tileSize, d.maxImageTiles, d.resample, d.imageMean, d.imageStd], [224, 4, "bilinear", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]);
  assert.equal(parseMllamaPreprocess({ resample: 3 }).resample, "bicubic");
  const bad: [Record<string, unknown>, WebvlmErrorCode, RegExp][] = [
    [{ size: { height: 560, width: 448 } }, "bad_request", /preprocessor_config\.json: size must be square/],
    [{ size: { shortest_edge: 560 } }, "bad_request", /size must be an object with keys height and width/],
    [{ size: { height: "560", width: 560 } }, "bad_request", /size\.height must be a positive integer/],
    [{ max_image_tiles: 0 }, "bad_request", /max_image_tiles must be a positive integer/],
    [{ resample: 1 }, "unsupported_feature", /resample 1 \(LANCZOS\)/],
    [{ resample: "bilinear" }, "bad_request", /resample must be/],
    [{ do_pad: false }, "unsupported_feature", /do_pad false/],
    [{ do_resize: false }, "unsupported_feature", /do_resize false/],
    [{ do_convert_rgb: "yes" }, "bad_request", /do_convert_rgb must be true or false/],
    [{ image_mean: [0.5, 0.5] }, "bad_request", /image_mean/],
    [{ rescale_factor: 0 }, "bad_request", /rescale_factor/],
  ];
  for (const [cfg, code, pattern] of bad) {
    assert.throws(() => parseMllamaPreprocess(cfg), (e: unknown) => e instanceof WebvlmError && e.code === code && pattern.test(e.message), JSON.stringify(cfg));
  }
  const e = (() => { try { parseMllamaPreprocess({ max_image_tiles: -2 }); } catch (x) { return x; } })();
  assert.ok(e instanceof WebvlmError);
  assert.deepEqual(e.details, { file: "preprocessor_config.json", field: "max_image_tiles", value: -2 });
});

test("loadImage alphaBackground: opaque images come back unchanged, a bad colour is a bad_request", async () => {
  const opaque = file("tall_23x90.png");
  const plain = await loadImage(opaque);
  const over = await loadImage(opaque, undefined, { alphaBackground: [0, 128, 255] });
  assert.equal(diffSummary(over.rgb, plain.rgb), null);
  assert.equal("alpha" in over, false);
  // Over black instead of white: alpha-0 pixels take the background, so the result differs from white's.
  const black = await loadImage(file("rgba_33x29.png"), undefined, { alphaBackground: [0, 0, 0] });
  const white = await loadImage(file("rgba_33x29.png"), undefined, { alphaBackground: [255, 255, 255] });
  assert.notEqual(diffSummary(black.rgb, white.rgb), null);
  assert.equal("alpha" in black, false);
  for (const bg of [[256, 0, 0], [0, 0], [0.5, 0, 0]]) {
    await assert.rejects(loadImage(opaque, undefined, { alphaBackground: bg as unknown as [number, number, number] }),
      (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && /alphaBackground/.test(e.message));
  }
});

test("createMllamaProcessor checks preprocessor_config.json against config.json and the tokenizer", () => {
  const pp = { size: { height: 28, width: 28 }, max_image_tiles: 4 };
  const ctx = (id: number | undefined, preprocessorConfig: Record<string, unknown> = pp) =>
    ({ preprocessorConfig, processorConfig: {}, addedTokenId: (c: string) => (c === "<|image|>" ? id : undefined) });
  const model = { imageTokenId: 128256, tileSize: 28, maxNumTiles: 4, numAspectRatios: 8 };
  const proc = createMllamaProcessor(model, ctx(128256));
  assert.deepEqual([proc.options.imageTokenId, proc.options.preprocess.tileSize, proc.options.preprocess.maxImageTiles], [128256, 28, 4]);
  const bad: [typeof model, ReturnType<typeof ctx>, RegExp][] = [
    [{ ...model, tileSize: 30 }, ctx(128256), /size 28 differs from config\.json vision_config\.image_size 30/],
    [{ ...model, maxNumTiles: 2 }, ctx(128256), /max_image_tiles 4 differs from config\.json vision_config\.max_num_tiles 2/],
    [{ ...model, numAspectRatios: 5 }, ctx(128256), /gives 8 aspect ratio ids, config\.json lists 5/],
    [model, ctx(undefined), /tokenizer has no <\|image\|>/],
    [model, ctx(128257), /tokenizer's <\|image\|> is 128257/],
  ];
  for (const [m, c, pattern] of bad) assertCode(() => createMllamaProcessor(m, c), "bad_request", pattern);
});
