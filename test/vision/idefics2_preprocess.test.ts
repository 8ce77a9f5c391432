// Idefics2's media processor against an independent numpy/PIL port of transformers'
// Idefics2ImageProcessor and Idefics2VisionEmbeddings (scripts/make_idefics2_fixtures.py wrote
// test/fixtures/vision/idefics2/), plus the spec's own examples (/work/shared/IDEFICS2.md §4.3,
// §5.3, §6.4) for the resize sizes, bucket ids and prompt expansion.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { decodeImageNode } from "../../src/vision/decode_node.ts";
import { exifOrientation } from "../../src/vision/exif_orientation.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import { expandPlaceholderIds, expandPlaceholderText } from "../../src/tokenizer/chat_template.ts";
import type { MediaRef, PreparedMedia } from "../../src/models/family.ts";
import {
  IDEFICS2_DEFAULT_PREPROCESS, idefics2PixelBatch, idefics2ResizeSize, parseIdefics2Preprocess, type Idefics2PreprocessOptions,
} from "../../src/models/idefics2/image_processor.ts";
import {
  bucketCoordinates, idefics2CropPatches, idefics2PositionIds, positionBoundaries,
} from "../../src/models/idefics2/patches.ts";
import { Idefics2Processor, type Idefics2ImagePayload } from "../../src/models/idefics2/processor.ts";
import { FIXTURES, diffSummary, type BlobEntry } from "./fixtures.ts";

const DIR = join(FIXTURES, "idefics2");

interface CropCase {
  height: number; width: number; patches_h: number; patches_w: number;
  patch_rows: BlobEntry; position_ids: BlobEntry;
}
interface RequestCase {
  name: string; images: string[]; preprocessor_config: Record<string, unknown>;
  patch_size: number; image_size: number;
  pixel_values: BlobEntry; pixel_attention_mask: BlobEntry; crops: CropCase[];
}
type Entry = Omit<BlobEntry, "dtype"> & { dtype: string };

const json = <T>(name: string): T => JSON.parse(readFileSync(join(DIR, name), "utf8")) as T;
interface OrientationCase { file: string; orientation: number; height: number; width: number; rgb: BlobEntry }
const { cases, orientations } = json<{ cases: RequestCase[]; orientations: OrientationCase[] }>("cases.json");
const blob = new Uint8Array(readFileSync(join(DIR, "cases.bin")));
const slice = (e: Entry): ArrayBuffer => blob.slice(e.offset, e.offset + e.length).buffer;
const f32 = (e: Entry): Float32Array => (assert.equal(e.dtype, "float32"), new Float32Array(slice(e)));
const u8 = (e: Entry): Uint8Array => (assert.equal(e.dtype, "uint8"), new Uint8Array(slice(e)));
const i32 = (e: Entry): Int32Array => (assert.equal(e.dtype, "int32"), new Int32Array(slice(e)));
const png = (name: string): Uint8Array => new Uint8Array(readFileSync(join(DIR, name)));

function assertCode(fn: () => unknown, code: WebvlmErrorCode, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === code && (!pattern || pattern.test(e.message)));
}

async function assertRejects(p: Promise<unknown>, code: WebvlmErrorCode, pattern?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => e instanceof WebvlmError && e.code === code && (!pattern || pattern.test(e.message)));
}

for (const c of cases) {
  test(`pixel_values and pixel_attention_mask match the reference: ${c.name}`, async () => {
    const opts = parseIdefics2Preprocess(c.preprocessor_config, {});
    // transformers' load_image: exif_transpose + convert("RGB").
    const images = await Promise.all(c.images.map((f) => loadImage(png(f), undefined, { exifOrientation: true })));
    const batch = idefics2PixelBatch(images, opts);
    const [n, ch, h, w] = c.pixel_values.shape;
    assert.deepEqual([batch.count, 3, batch.height, batch.width], [n, ch, h, w]);
    assert.equal(diffSummary(batch.pixelValues, f32(c.pixel_values)), null);
    assert.equal(diffSummary(batch.pixelAttentionMask, u8(c.pixel_attention_mask)), null);
  });

  test(`prepared crops (valid patches, position ids) match the reference: ${c.name}`, async () => {
    const preprocess = parseIdefics2Preprocess(c.preprocessor_config, { image_seq_len: 3 });
    const proc = new Idefics2Processor({ patchSize: c.patch_size, imageSize: c.image_size, imageTokenId: 7, fakeTokenId: 8, preprocess });
    const refs: MediaRef[] = c.images.map((f) => ({ kind: "image", source: png(f), options: {} }));
    const media = await proc.prepare(refs);
    const crops = media.flatMap((m) => (m.payload as Idefics2ImagePayload).crops);
    assert.equal(crops.length, c.crops.length);
    const perImage = c.crops.length / c.images.length;
    for (const m of media) assert.equal(m.tokens, 3 * perImage);
    crops.forEach((got, k) => {
      const want = c.crops[k];
      assert.deepEqual([got.height, got.width, got.patchesH, got.patchesW], [want.height, want.width, want.patches_h, want.patches_w], `crop ${k}`);
      assert.ok(got.patchRows instanceof Float32Array, `crop ${k}: host rows (no GPU given)`);
      assert.equal(diffSummary(got.patchRows, f32(want.patch_rows)), null, `crop ${k} patch rows`);
      assert.equal(diffSummary(got.positionIds, i32(want.position_ids)), null, `crop ${k} position ids`);
    });
  });
}

test("alpha is dropped, not composited: the RGBA image's pixels are its RGB bytes", async () => {
  const c = cases.find((x) => x.name === "alpha");
  assert.ok(c);
  // Without resizing and normalizing, pixel_values are the raw RGB values, alpha ignored.
  const opts: Idefics2PreprocessOptions = { ...parseIdefics2Preprocess(c.preprocessor_config), doResize: false, doRescale: false, doNormalize: false };
  const img = await decodeImageNode(png("rgba_33x29.png"));
  const batch = idefics2PixelBatch([img], opts);
  // Some pixels are transparent with a non-white colour: compositing on white would change them.
  assert.equal(batch.pixelValues[0], img.rgb[0]);
  assert.equal(batch.width * batch.height, 33 * 29);
  for (let i = 0; i < 33 * 29; i++) for (let ch = 0; ch < 3; ch++) {
    if (batch.pixelValues[ch * 33 * 29 + i] !== img.rgb[i * 3 + ch]) assert.fail(`pixel ${i} channel ${ch}`);
  }
});

test("EXIF orientations 1-8 are undone as PIL's exif_transpose does (opt-in), in PNG, JPEG and WebP", async () => {
  assert.equal(orientations.length, 8);
  for (const o of orientations) {
    const bytes = png(o.file);
    assert.equal(exifOrientation(bytes), o.orientation, o.file);
    const img = await loadImage(bytes, undefined, { exifOrientation: true });
    assert.deepEqual([img.width, img.height], [o.width, o.height], o.file);
    assert.equal(diffSummary(img.rgb, u8(o.rgb)), null, o.file);
    // Without the option the loader keeps the stored orientation (PIL's open() alone).
    const stored = await loadImage(bytes);
    assert.deepEqual([stored.width, stored.height], [7, 5], o.file);
  }
  assert.equal(exifOrientation(png("exif5_27x17.jpg")), 5);
  assert.equal(exifOrientation(png("exif7_20x26.webp")), 7);
  assert.equal(exifOrientation(png("rgb_30x20.png")), 1);
  // Truncated or garbage EXIF never throws: the image keeps its orientation.
  const jpg = png("exif5_27x17.jpg");
  for (let cut = 4; cut < 80; cut += 3) assert.ok([1, 5].includes(exifOrientation(jpg.subarray(0, cut))));
  assert.equal(exifOrientation(new Uint8Array([0xff, 0xd8, 0xff, 0xe1, 0, 10, 0x45, 0x78, 0x69, 0x66, 0, 0, 0x49, 0x49])), 1);
});

test("resize sizes: the spec's examples and the reference table (§5.3)", () => {
  const edges = (longestEdge: number, shortestEdge: number) => ({ kind: "edges" as const, longestEdge, shortestEdge });
  // §5.3: 1024x768 (w x h) -> 980x735; 2000x300 -> 980x378; 50x40 -> 378x378.
  assert.deepEqual(idefics2ResizeSize(768, 1024, edges(980, 378)), { height: 735, width: 980 });
  assert.deepEqual(idefics2ResizeSize(300, 2000, edges(980, 378)), { height: 378, width: 980 });
  assert.deepEqual(idefics2ResizeSize(40, 50, edges(980, 378)), { height: 378, width: 378 });
  const table = json<{ sizes: { height: number; width: number; longest_edge: number; shortest_edge: number; out: [number, number] }[] }>("sizes.json").sizes;
  assert.ok(table.length > 40);
  for (const s of table) {
    const got = idefics2ResizeSize(s.height, s.width, edges(s.longest_edge, s.shortest_edge));
    assert.deepEqual([got.height, got.width], s.out, JSON.stringify(s));
  }
});

test("position buckets: the spec's consequences (§6.4)", () => {
  const seq = (n: number, nps: number) => Array.from(bucketCoordinates(n, positionBoundaries(nps)));
  for (const nps of [70, 37, 14, 7]) {
    // n == nps: bucket 0 twice, nps-1 never.
    assert.deepEqual(seq(nps, nps), [0, 0, ...Array.from({ length: nps - 2 }, (_, i) => i + 1)], `n = nps = ${nps}`);
    // n == nps - 1: 0 .. nps-2.
    assert.deepEqual(seq(nps - 1, nps), Array.from({ length: nps - 1 }, (_, i) => i), `n = nps - 1, nps ${nps}`);
  }
  assert.deepEqual(seq(3, 70), [0, 23, 46]);
  // pos(i, j) = bh[i] * nps + bw[j], row-major; n = 2 puts row 1 at f32(0.5 * (1 - 1e-6)) < 35/70: bucket 34.
  assert.deepEqual(Array.from(idefics2PositionIds(2, 3, 70)), [0, 23, 46, 34 * 70, 34 * 70 + 23, 34 * 70 + 46]);
});

test("position buckets and boundaries match the numpy float32 reference", () => {
  const ref = json<{ boundaries: Record<string, number[]>; buckets: { nps: number; n: number; buckets: number[] }[] }>("buckets.json");
  for (const [nps, b] of Object.entries(ref.boundaries)) {
    assert.deepEqual(Array.from(positionBoundaries(Number(nps))), b, `boundaries nps ${nps}`);
  }
  for (const e of ref.buckets) {
    assert.deepEqual(Array.from(bucketCoordinates(e.n, positionBoundaries(e.nps))), e.buckets, `nps ${e.nps} n ${e.n}`);
  }
});

test("a crop smaller than one patch is a bad_request naming its size", () => {
  const img = { data: new Float32Array(3 * 5 * 20), width: 20, height: 5, channels: 3 };
  assertCode(() => idefics2CropPatches(img, 14, 980, "image 1 crop 2"), "bad_request", /image 1 crop 2 is 20x5/);
});

test("a too-small image with splitting, and a video, are rejected", async () => {
  // Unresized 15x10 crops of a 30x20 image hold no whole 14x14 patch.
  const preprocess = { ...IDEFICS2_DEFAULT_PREPROCESS, doResize: false, doImageSplitting: true };
  const proc = new Idefics2Processor({ patchSize: 14, imageSize: 56, imageTokenId: 7, fakeTokenId: 8, preprocess });
  await assertRejects(proc.prepare([{ kind: "image", source: png("rgb_30x20.png"), options: {} }]), "bad_request", /image 1 crop 1 is 15x10 .*smaller than one 14x14 patch/);
  const video: MediaRef = { kind: "video", source: [png("rgb_30x20.png")], options: {} };
  await assertRejects(proc.prepare([{ kind: "image", source: png("rgb_30x20.png"), options: {} }, video]), "unsupported_feature", /item 2 is a video/);
});

// ---------------------------------------------------------------- prompt expansion (§4.3)
const I = 7;
const F = 8;

function fakeMedia(count: number, split: boolean): PreparedMedia[] {
  const crops = Array.from({ length: split ? 5 : 1 }, () => ({}));
  return Array.from({ length: count }, () => ({ kind: "image" as const, hash: "x", tokens: 0, payload: { crops } }));
}

function processor(split: boolean, seq: number): Idefics2Processor {
  const preprocess = parseIdefics2Preprocess({ do_image_splitting: split }, { image_seq_len: seq });
  return new Idefics2Processor({ patchSize: 14, imageSize: 980, imageTokenId: I, fakeTokenId: F, preprocess });
}

const rep = (x: number, n: number): number[] => new Array<number>(n).fill(x);

test("one image expands to F I x n F (n + 2 ids)", () => {
  const n = 4;
  const ids = expandPlaceholderIds([1, 100, I, 101], processor(false, n).placeholders(fakeMedia(1, false)));
  assert.deepEqual(ids, [1, 100, F, ...rep(I, n), F, 101]);
});

test("a split image expands to 5 groups sharing their F (5n + 6 ids)", () => {
  const n = 3;
  const ph = processor(true, n).placeholders(fakeMedia(1, true));
  assert.deepEqual(ph[0].counts, [5 * n]);
  const ids = expandPlaceholderIds([1, I, 101], ph);
  const want = [F];
  for (let k = 0; k < 5; k++) want.push(...rep(I, n), F);
  assert.equal(want.length, 5 * n + 6);
  assert.deepEqual(ids, [1, ...want, 101]);
});

test("two adjacent images share the F between them; separated ones keep theirs", () => {
  const n = 2;
  const ph = processor(false, n).placeholders(fakeMedia(2, false));
  assert.deepEqual(expandPlaceholderIds([I, I], ph), [F, I, I, F, I, I, F]);
  assert.deepEqual(expandPlaceholderIds([I, 50, I], ph), [F, I, I, F, 50, F, I, I, F]);
  // The string-level replaces give the same text.
  const spell = (id: number) => (id === F ? "<fake>" : `<${id}>`);
  assert.equal(expandPlaceholderText("a<image><image>b", "<image>", ph[0], spell), "a<fake><image><image><fake><image><image><fake>b");
});

test("prepare: tokens and placeholders follow image_seq_len and splitting", async () => {
  const preprocess = parseIdefics2Preprocess({ do_image_splitting: true, size: { longest_edge: 64, shortest_edge: 28 } }, { image_seq_len: 5 });
  const proc = new Idefics2Processor({ patchSize: 14, imageSize: 56, imageTokenId: I, fakeTokenId: F, preprocess });
  const media = await proc.prepare([{ kind: "image", source: png("odd_51x37.png"), options: {} }, { kind: "image", source: png("odd_51x37.png"), options: {} }]);
  assert.deepEqual(media.map((m) => m.tokens), [25, 25]);
  assert.equal(media[0].hash, media[1].hash);
  const other = await proc.prepare([{ kind: "image", source: png("rgb_30x20.png"), options: {} }]);
  assert.notEqual(other[0].hash, media[0].hash);
  const [ph] = proc.placeholders(media);
  assert.equal(ph.tokenId, I);
  assert.equal(ph.collapseDoubled, F);
  assert.deepEqual(ph.counts, [25, 25]);
  assert.equal(ph.expansions?.[0].length, 5 * 7);
});

test("an aborted request stops before decoding", async () => {
  const ctl = new AbortController();
  ctl.abort();
  await assertRejects(processor(false, 2).prepare([{ kind: "image", source: png("rgb_30x20.png"), options: {} }], ctl.signal), "aborted");
});

// ---------------------------------------------------------------- config parsing
test("parse: the idefics2-8b files and the class defaults", () => {
  const official = parseIdefics2Preprocess({
    do_convert_rgb: true, do_image_splitting: true, do_normalize: true, do_pad: true, do_rescale: true, do_resize: true,
    image_mean: [0.5, 0.5, 0.5], image_std: [0.5, 0.5, 0.5], image_processor_type: "Idefics2ImageProcessor",
    resample: 2, rescale_factor: 0.00392156862745098, size: { longest_edge: 980, shortest_edge: 378 },
  }, { image_seq_len: 64, processor_class: "Idefics2Processor" });
  assert.deepEqual(official, { ...IDEFICS2_DEFAULT_PREPROCESS, doImageSplitting: true, rescaleFactor: 0.00392156862745098 });
  const defaults = parseIdefics2Preprocess({}, {});
  assert.equal(defaults.doImageSplitting, false);
  assert.equal(defaults.imageSeqLen, 64);
  assert.equal(defaults.resample, "bilinear");
  assert.deepEqual(defaults.size, { kind: "edges", longestEdge: 980, shortestEdge: 378 });
  assert.equal(parseIdefics2Preprocess({ resample: 3 }).resample, "bicubic");
  assert.deepEqual(parseIdefics2Preprocess({ image_mean: 0.25 }).imageMean, [0.25, 0.25, 0.25]);
  assert.deepEqual(parseIdefics2Preprocess({ size: { height: 20, width: 30 } }).size, { kind: "fixed", height: 20, width: 30 });
});

test("parse: bad values name the file and the field", () => {
  const pp = /preprocessor_config\.json/;
  const bad = (cfg: Record<string, unknown>, field: RegExp, proc: Record<string, unknown> = {}) =>
    assert.throws(() => parseIdefics2Preprocess(cfg, proc), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request"
      && field.test(e.message) && (proc.image_seq_len !== undefined ? /processor_config\.json/ : pp).test(e.message));
  bad({ size: { longest_edge: 980 } }, /size/);
  bad({ size: { longest_edge: 0, shortest_edge: 378 } }, /size\.longest_edge/);
  bad({ size: { longest_edge: 980, shortest_edge: 3.5 } }, /size\.shortest_edge/);
  bad({ size: 980 }, /size/);
  bad({ do_image_splitting: "yes" }, /do_image_splitting/);
  bad({ do_resize: 1 }, /do_resize/);
  bad({ do_pad: "true" }, /do_pad/);
  bad({ do_convert_rgb: 0 }, /do_convert_rgb/);
  bad({ do_rescale: "no" }, /do_rescale/);
  bad({ do_normalize: [] }, /do_normalize/);
  bad({ rescale_factor: "1/255" }, /rescale_factor/);
  bad({ rescale_factor: 0 }, /rescale_factor/);
  bad({ image_mean: ["a"] }, /image_mean/);
  bad({ image_std: [0.5, 0] }, /image_std/);
  bad({ image_mean: [0.5, 0.5] }, /image_mean/);
  bad({ resample: "bilinear" }, /resample/);
  bad({}, /image_seq_len/, { image_seq_len: 0 });
  bad({}, /image_seq_len/, { image_seq_len: "64" });
  assertCode(() => parseIdefics2Preprocess({ resample: 1 }), "unsupported_feature", /resample 1 \(LANCZOS\)/);
});
