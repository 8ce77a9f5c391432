// Phi-3-vision's media processor against an independent numpy/PIL port of the checkpoint's
// Phi3VImageProcessor (scripts/make_phi3v_fixtures.py wrote test/fixtures/vision/phi3v/), and the
// spec's own rules (/work/shared/PHI3V.md §3) for sizes, token counts and the patch layout.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { gunzipSync } from "node:zlib";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import { normalize8ToChw } from "../../src/vision/normalize.ts";
import { resizeTorchBicubicChw, torchBicubicTaps } from "../../src/vision/resize_torch_bicubic.ts";
import type { MediaRef } from "../../src/models/family.ts";
import {
  PHI3V_DEFAULT_PREPROCESS, PHI3V_MAX_NUM_CROPS, parsePhi3VPreprocess, phi3vHdGeometry, phi3vHdImage, phi3vNumImgTokens, processPhi3VImage,
} from "../../src/models/phi3_v/image_processor.ts";
import { createPhi3VProcessor, Phi3VProcessor, phi3vPatchRows, type Phi3VImagePayload } from "../../src/models/phi3_v/processor.ts";
import { FIXTURES } from "./fixtures.ts";

const DIR = join(FIXTURES, "phi3v");

interface Entry { offset: number; count: number; dtype: string }
interface Case {
  name: string; image: string; numCrops: number; imageSize: [number, number]; hc: number; wc: number; numImgTokens: number;
  resized: [number, number]; transposed: boolean; padTop: number; hdSha256: string;
  cropSums: [number, number][][]; globalSamples: Entry; hdFile?: string;
}
interface Fixtures {
  mean: number[]; std: number[]; normalizeTable: Entry; samplePositions: Entry; cases: Case[];
  taps: { in: number; out: number; index: Entry; weight: Entry }[];
  tensors: { shape: [number, number, number]; outSize: [number, number]; input: Entry; output: Entry }[];
}

const fx = JSON.parse(readFileSync(join(DIR, "cases.json"), "utf8")) as Fixtures;
const blob = new Uint8Array(readFileSync(join(DIR, "cases.bin")));
const bytes = (e: Entry, size: number): ArrayBuffer => blob.slice(e.offset, e.offset + e.count * size).buffer;
const f32 = (e: Entry): Float32Array => (assert.equal(e.dtype, "float32"), new Float32Array(bytes(e, 4)));
const i32 = (e: Entry): Int32Array => (assert.equal(e.dtype, "int32"), new Int32Array(bytes(e, 4)));
const file = (name: string): Uint8Array => new Uint8Array(readFileSync(join(DIR, name)));
const opts = (numCrops: number) => parsePhi3VPreprocess({ num_crops: numCrops, image_mean: fx.mean, image_std: fx.std, do_convert_rgb: true });

function assertCode(fn: () => unknown, code: WebvlmErrorCode, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === code && (!pattern || pattern.test(e.message)));
}

/** Per-channel [sum, sum of squares] of the 336x336 crop at (left, top) of a CHW image, in float64. */
function cropSums(data: Float32Array, width: number, height: number, left: number, top: number): [number, number][] {
  const out: [number, number][] = [];
  for (let c = 0; c < 3; c++) {
    let s = 0;
    let q = 0;
    for (let y = 0; y < 336; y++) {
      const row = (c * height + top + y) * width + left;
      for (let x = 0; x < 336; x++) {
        const v = data[row + x];
        s += v;
        q += v * v;
      }
    }
    out.push([s, q]);
  }
  return out;
}

test("the normalize table is numpy's float32 (x / 255 - mean) / std for every byte", () => {
  const lut = f32(fx.normalizeTable);
  const ramp = new Uint8Array(256 * 3);
  for (let x = 0; x < 256; x++) ramp.fill(x, x * 3, x * 3 + 3);
  const chw = normalize8ToChw(ramp, 256, 1, 3, { mean: opts(1).imageMean, std: opts(1).imageStd });
  assert.deepEqual(chw, lut);
});

const positions = i32(fx.samplePositions);
for (const c of fx.cases) {
  test(`HD transform, tiles and global view match the reference: ${c.name}`, async () => {
    // PIL's Image.open + convert("RGB"): no EXIF transpose, alpha dropped.
    const img = await loadImage(file(c.image));
    const { image: hd8, geometry: g } = phi3vHdImage({ data: img.rgb, width: img.width, height: img.height, channels: 3 }, c.numCrops);
    assert.deepEqual([g.height, g.width, g.hc, g.wc, g.numImgTokens], [...c.imageSize, c.hc, c.wc, c.numImgTokens]);
    assert.deepEqual([g.resizedWidth, g.resizedHeight, g.transposed, g.padTop], [...c.resized, c.transposed, c.padTop]);
    assert.equal(createHash("sha256").update(hd8.data).digest("hex"), c.hdSha256, "uint8 HD image (Pillow bilinear, white padding)");

    const px = processPhi3VImage(img, opts(c.numCrops), c.numCrops);
    assert.deepEqual(px.hd8.data, hd8.data);
    assert.equal(c.cropSums.length, 1 + c.hc * c.wc);
    const close = (got: [number, number][], want: [number, number][], tol: number, what: string): void => {
      for (let ch = 0; ch < 3; ch++) {
        for (let k = 0; k < 2; k++) {
          assert.ok(Math.abs(got[ch][k] - want[ch][k]) <= tol * Math.max(1, Math.abs(want[ch][k])), `${what} channel ${ch} ${k ? "sum of squares" : "sum"}: ${got[ch][k]} vs ${want[ch][k]}`);
        }
      }
    };
    // Tiles are exact float32 values: only the float64 summation order differs.
    for (let r = 0; r < c.hc; r++) {
      for (let q = 0; q < c.wc; q++) close(cropSums(px.hd.data, px.hd.width, px.hd.height, q * 336, r * 336), c.cropSums[1 + r * c.wc + q], 1e-10, `tile (${r}, ${q})`);
    }
    // The global view: each value within 1e-6 of the reference, so its sums within 1e-6 relative.
    close(cropSums(px.global.data, 336, 336, 0, 0), c.cropSums[0], 1e-6, "global view");
    const want = f32(c.globalSamples);
    const n = positions.length / 2;
    let worst = 0;
    for (let ch = 0; ch < 3; ch++) {
      for (let i = 0; i < n; i++) {
        const got = px.global.data[(ch * 336 + positions[2 * i]) * 336 + positions[2 * i + 1]];
        worst = Math.max(worst, Math.abs(got - want[ch * n + i]));
      }
    }
    assert.ok(worst <= 1e-6, `global view samples: max abs error ${worst}`);
  });
}

test("one case whole, value by value: tiny_n1's uint8 HD image, tile and global view", async () => {
  const c = fx.cases.find((x) => x.hdFile !== undefined);
  assert.ok(c?.hdFile);
  const hd = new Uint8Array(gunzipSync(readFileSync(join(DIR, c.hdFile))));
  const px = processPhi3VImage(await loadImage(file(c.image)), opts(c.numCrops), c.numCrops);
  assert.deepEqual(px.hd8.data, hd);
  const lut = f32(fx.normalizeTable);
  const [H, W] = c.imageSize;
  const expected = new Float32Array(3 * H * W);
  for (let ch = 0; ch < 3; ch++) for (let i = 0; i < H * W; i++) expected[ch * H * W + i] = lut[ch * 256 + hd[i * 3 + ch]];
  assert.deepEqual(px.hd.data, expected);
  // A 336x336 HD image: the bicubic "resize" to 336 has weights [0, 1, 0, 0], so the global view is the tile.
  assert.deepEqual(px.global.data, expected);
});

test("torch bicubic taps: indices and float32 weights equal the reference's", () => {
  for (const t of fx.taps) {
    const got = torchBicubicTaps(t.in, t.out);
    assert.deepEqual(got.index, i32(t.index), `indices ${t.in} -> ${t.out}`);
    assert.deepEqual(got.weight, f32(t.weight), `weights ${t.in} -> ${t.out}`);
  }
  // §3 by hand: 4 -> 2 samples puts output 0 at src 0.5 (t = 0.5, weights c2(1.5), c1(0.5), c1(0.5), c2(1.5)).
  const half = torchBicubicTaps(4, 2);
  assert.deepEqual(Array.from(half.index), [0, 0, 1, 2, 1, 2, 3, 3]);
  assert.deepEqual(Array.from(half.weight), [-0.09375, 0.59375, 0.59375, -0.09375, -0.09375, 0.59375, 0.59375, -0.09375]);
});

test("torch bicubic resize of float tensors, down and up, within 1e-6 of the reference (no clamping)", () => {
  for (const t of fx.tensors) {
    const [c, h, w] = t.shape;
    const out = resizeTorchBicubicChw({ data: f32(t.input), width: w, height: h, channels: c }, t.outSize[1], t.outSize[0]);
    assert.deepEqual([out.channels, out.height, out.width], [c, ...t.outSize]);
    const want = f32(t.output);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(out.data[i] - want[i]));
    assert.ok(worst <= 1e-6, `${t.shape} -> ${t.outSize}: max abs error ${worst}`);
  }
  // §3's 4x4 ramp 4y + x to 2x2 by hand: 1-D [0.40625, 2.59375] per axis.
  const ramp = Float32Array.from({ length: 16 }, (_, i) => i);
  assert.deepEqual(Array.from(resizeTorchBicubicChw({ data: ramp, width: 4, height: 4, channels: 1 }, 2, 2).data), [2.03125, 4.21875, 10.78125, 12.96875]);
});

test("HD sizes and token counts by hand from §3", () => {
  // 1280x720, num_crops 4: ratio 16/9, scale 2 (2*ceil(1.125) = 4), 672 x int(378.0) -> padded 672, top 147.
  const g = phi3vHdGeometry(1280, 720, 4);
  assert.deepEqual([g.resizedWidth, g.resizedHeight, g.padTop, g.height, g.width, g.hc, g.wc, g.numImgTokens], [672, 378, 147, 672, 672, 2, 2, 757]);
  // Square, num_crops 16: scale 4 -> 1344 x 1344, 4 x 4 crops: 17*144 + 1 + 5*12.
  assert.equal(phi3vHdGeometry(500, 500, 16).numImgTokens, 17 * 144 + 1 + 60);
  // Portrait 720x1280: the same grid transposed, padded left/right.
  const p = phi3vHdGeometry(720, 1280, 4);
  assert.deepEqual([p.transposed, p.height, p.width, p.hc, p.wc], [true, 672, 672, 2, 2]);
  // 100x1000, num_crops 16: ratio 10, s*ceil(s/10) = s up to 10, then 11*2 > 16: scale 10, 3360 x int(336.0).
  const tall = phi3vHdGeometry(100, 1000, 16);
  assert.deepEqual([tall.transposed, tall.resizedWidth, tall.resizedHeight, tall.padTop, tall.height, tall.width, tall.hc, tall.wc], [true, 3360, 336, 0, 3360, 336, 10, 1]);
  assert.equal(phi3vNumImgTokens(1, 1), 313);
  assert.equal(phi3vNumImgTokens(16, 1), 17 * 144 + 1 + 17 * 12);
  // num_crops 1: always one crop.
  for (const [w, h] of [[5000, 40], [40, 5000], [336, 336], [1, 1]]) assert.equal(phi3vHdGeometry(w, h, 1).hc * phi3vHdGeometry(w, h, 1).wc, 1);
  // A short side that scales to 0 pixels: PIL refuses the resize.
  assertCode(() => phi3vHdGeometry(20000, 1, 4), "aspect_ratio_too_large");
});

test("preprocessor_config.json: defaults, overrides, typed errors naming file and field", () => {
  assert.deepEqual(parsePhi3VPreprocess({}), PHI3V_DEFAULT_PREPROCESS);
  const real = parsePhi3VPreprocess({
    do_convert_rgb: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_processor_type: "Phi3VImageProcessor",
    image_std: [0.26862954, 0.26130258, 0.27577711], num_crops: 4, num_img_tokens: 144, processor_class: "Phi3VProcessor",
  });
  assert.equal(real.numCrops, 4);
  assert.deepEqual(parsePhi3VPreprocess({ image_mean: 0.5, image_std: [0.25] }).imageMean, [0.5, 0.5, 0.5]);
  assertCode(() => parsePhi3VPreprocess({ num_crops: 2.5 }), "bad_request", /preprocessor_config\.json.*num_crops/);
  assertCode(() => parsePhi3VPreprocess({ num_crops: 0 }), "bad_request", /num_crops/);
  assertCode(() => parsePhi3VPreprocess({ num_crops: "4" }), "bad_request", /num_crops/);
  assertCode(() => parsePhi3VPreprocess({ num_crops: PHI3V_MAX_NUM_CROPS + 1 }), "limit_exceeded", /num_crops/);
  assertCode(() => parsePhi3VPreprocess({ image_mean: [1, 2] }), "bad_request", /preprocessor_config\.json.*image_mean/);
  assertCode(() => parsePhi3VPreprocess({ image_std: "x" }), "bad_request", /preprocessor_config\.json.*image_std/);
  assertCode(() => parsePhi3VPreprocess({ do_convert_rgb: "yes" }), "bad_request", /preprocessor_config\.json.*do_convert_rgb/);
});

const ref = (name: string, numCrops?: number): MediaRef => ({ kind: "image", source: file(name), options: numCrops === undefined ? {} : { numCrops } });
// These processors have no GPU: patch rows are host values.
const payloadOf = (p: unknown): Phi3VImagePayload & { patchRows: Float32Array } => p as Phi3VImagePayload & { patchRows: Float32Array };

test("Phi3VProcessor: payload sizes, patch rows in (crop, patch row-major, c y x) order, placeholders", async () => {
  const proc = new Phi3VProcessor({ imageTokenId: 32044, preprocess: opts(4) });
  const media = await proc.prepare([ref("wide_120x50.png"), ref("tall_45x110.png", 1)]);
  const wide = fx.cases.find((c) => c.name === "wide_n4");
  const tall = fx.cases.find((c) => c.name === "tall_n1");
  assert.ok(wide && tall);
  for (const [m, c] of [[media[0], wide], [media[1], tall]] as const) {
    const p = payloadOf(m.payload);
    assert.equal(m.kind, "image");
    assert.deepEqual([p.height, p.width, p.hc, p.wc, p.numImgTokens, m.tokens], [...c.imageSize, c.hc, c.wc, c.numImgTokens, c.numImgTokens]);
    assert.equal(p.patchRows.length, (1 + c.hc * c.wc) * 576 * 588);
  }
  // Layout (§4 conv input): row (t*576 + 24*py + px), column (c*196 + 14*y + x) = crop t's pixel (c, 14py + y, 14px + x).
  const px = processPhi3VImage(await loadImage(file("wide_120x50.png")), opts(4));
  const rows = payloadOf(media[0].payload).patchRows;
  assert.deepEqual(rows, phi3vPatchRows(px));
  const at = (t: number, c: number, yy: number, xx: number): number => {
    const row = t * 576 + 24 * Math.floor(yy / 14) + Math.floor(xx / 14);
    return rows[row * 588 + c * 196 + 14 * (yy % 14) + (xx % 14)];
  };
  for (const [c, yy, xx] of [[0, 0, 0], [2, 335, 335], [1, 13, 14], [0, 100, 201], [2, 14, 13]]) {
    assert.equal(at(0, c, yy, xx), px.global.data[(c * 336 + yy) * 336 + xx], `global (${c}, ${yy}, ${xx})`);
    for (let t = 0; t < 2; t++) assert.equal(at(1 + t, c, yy, xx), px.hd.data[(c * 336 + yy) * 672 + 336 * t + xx], `tile ${t} (${c}, ${yy}, ${xx})`);
  }
  assert.deepEqual(proc.placeholders(media), [{ tokenId: 32044, counts: [wide.numImgTokens, tall.numImgTokens], kind: "image" }]);
  assert.deepEqual(proc.placeholders([]), [{ tokenId: 32044, counts: [], kind: "image" }]);
});

test("Phi3VProcessor: num_crops per image overrides the file's; hashes follow the pixels", async () => {
  const proc = new Phi3VProcessor({ imageTokenId: 7, preprocess: opts(4) });
  const [a, b, c, d] = await proc.prepare([ref("tiny_40x30.png"), ref("tiny_40x30.png", 16), ref("tiny_40x30.png", 4), ref("alpha_60x40.png")]);
  const n16 = fx.cases.find((x) => x.name === "tiny_n16");
  assert.ok(n16);
  assert.equal(b.tokens, n16.numImgTokens);
  assert.equal(payloadOf(b.payload).hc * payloadOf(b.payload).wc, n16.hc * n16.wc);
  assert.equal(a.hash, c.hash);
  assert.notEqual(a.hash, b.hash);
  assert.notEqual(a.hash, d.hash);
  assert.equal(d.tokens, fx.cases.find((x) => x.name === "alpha_n4")?.numImgTokens);
});

test("Phi3VProcessor: videos, bad num_crops and aborts are typed errors", async () => {
  const proc = new Phi3VProcessor({ imageTokenId: 7, preprocess: opts(4) });
  await assert.rejects(proc.prepare([ref("tiny_40x30.png"), { kind: "video", source: [file("tiny_40x30.png")], options: {} }]),
    (e: unknown) => e instanceof WebvlmError && e.code === "unsupported_feature" && /item 2/.test(e.message));
  await assert.rejects(proc.prepare([ref("tiny_40x30.png", PHI3V_MAX_NUM_CROPS + 1)]), (e: unknown) => e instanceof WebvlmError && e.code === "limit_exceeded");
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(proc.prepare([ref("tiny_40x30.png")], ac.signal), (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
  assertCode(() => new Phi3VProcessor({ imageTokenId: -1, preprocess: opts(4) }), "bad_request", /imageTokenId/);
  assertCode(() => proc.placeholders([{ kind: "image", hash: "x", tokens: 3, payload: {} }]), "internal");
});

test("createPhi3VProcessor: the tokenizer's <|image|> id and preprocessor_config.json", () => {
  const ctx = (ids: Record<string, number>, pp: Record<string, unknown>) => ({ preprocessorConfig: pp, processorConfig: {}, addedTokenId: (c: string) => ids[c] });
  const proc = createPhi3VProcessor(ctx({ "<|image|>": 32044 }, { num_crops: 16 }));
  assert.equal(proc.options.imageTokenId, 32044);
  assert.equal(proc.options.preprocess.numCrops, 16);
  assertCode(() => createPhi3VProcessor(ctx({}, {})), "bad_request", /<\|image\|>/);
  assertCode(() => createPhi3VProcessor(ctx({ "<|image|>": 5 }, { num_crops: -1 })), "bad_request", /preprocessor_config\.json.*num_crops/);
});
