// Rescale + normalize against numpy following transformers' rescale/normalize
// (scripts/make_vision_fixtures.py normalize_fixtures): every uint8 value on
// every channel, for SigLIP, CLIP, ImageNet and the do_rescale/do_normalize switches.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  normalize8ToChw, normalizeOptionsFromConfig, normalizeRgb8ToChw, type NormalizeOptions,
} from "../../src/vision/normalize.ts";
import { diffSummary, f32At, readBlob, readFixtureJson, u8At, type BlobEntry } from "./fixtures.ts";

interface Case extends BlobEntry {
  name: string; channels: number; do_rescale: boolean; rescale_factor: number; do_normalize: boolean;
  image_mean: number[] | number; image_std: number[] | number;
}
const fx = readFixtureJson<{ input: BlobEntry; cases: Case[] }>("normalize.json");
const blob = readBlob("normalize.bin");
const input = u8At(blob, fx.input); // 16x16x3, each channel a permutation of 0..255

function channelsOf(src: Uint8Array, c: number): Uint8Array {
  if (c === 3) return src;
  const out = new Uint8Array(256 * c);
  for (let i = 0; i < 256; i++) for (let ch = 0; ch < c; ch++) out[i * c + ch] = src[i * 3 + ch];
  return out;
}

test("every config matches numpy bit for bit, through the preprocessor_config parser", () => {
  assert.ok(fx.cases.length >= 8);
  const failures: string[] = [];
  for (const c of fx.cases) {
    const opts = normalizeOptionsFromConfig({
      image_mean: c.image_mean, image_std: c.image_std, rescale_factor: c.rescale_factor,
      do_rescale: c.do_rescale, do_normalize: c.do_normalize,
    });
    const out = normalize8ToChw(channelsOf(input, c.channels), 16, 16, c.channels, opts);
    const d = diffSummary(out, f32At(blob, c));
    if (d) failures.push(`${c.name}: ${d}`);
  }
  assert.deepEqual(failures, []);
});

test("normalizeRgb8ToChw defaults are CLIP's mean/std with 1/255", () => {
  const clip = fx.cases.find((c) => c.name === "clip") as Case;
  assert.equal(diffSummary(normalizeRgb8ToChw(input, 16, 16), f32At(blob, clip)), null);
  const siglip = fx.cases.find((c) => c.name === "siglip") as Case;
  const opts: NormalizeOptions = { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
  assert.equal(diffSummary(normalizeRgb8ToChw(input, 16, 16, opts), f32At(blob, siglip)), null);
  // SigLIP's values differ from CLIP's: a checkpoint's mean/std must reach normalize.
  assert.notEqual(diffSummary(normalizeRgb8ToChw(input, 16, 16), f32At(blob, siglip)), null);
});

test("preprocessor_config: absent fields keep defaults, malformed ones fail typed", () => {
  assert.deepEqual(normalizeOptionsFromConfig({}), {});
  assert.deepEqual(normalizeOptionsFromConfig({ image_mean: null, min_pixels: 3136 }), {});
  const bad = (pp: Record<string, unknown>) =>
    assert.throws(() => normalizeOptionsFromConfig(pp), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
  bad({ image_mean: "0.5" });
  bad({ image_mean: [] });
  bad({ image_std: [0.5, "x", 0.5] });
  bad({ image_std: [0.5, 0, 0.5] });
  bad({ rescale_factor: "1/255" });
  bad({ do_rescale: 1 });
  assert.throws(
    () => normalize8ToChw(input, 16, 16, 3, { mean: [0.5, 0.5] }),
    (e: unknown) => e instanceof WebvlmError && e.code === "shape_mismatch",
  );
});
