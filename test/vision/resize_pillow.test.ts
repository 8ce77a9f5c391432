// resize8 / resizeRgb8 against Pillow 9.4's Image.resize, BICUBIC and BILINEAR,
// on generated images (see lcg_image in scripts/make_vision_fixtures.py).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  resize8, resizeBicubic8, resizeBilinear8, resizeRgb8, type ResampleFilter, type ResizeBox,
} from "../../src/vision/resize.ts";
import { diffSummary, lcgImage, readBlob, readFixtureJson, u8At, type BlobEntry } from "./fixtures.ts";

interface Source { width: number; height: number; channels: number; kind: "noise" | "ramp"; seed: number; sha256: string }
interface Case extends BlobEntry {
  source: string; filter: ResampleFilter; width: number; height: number; box: ResizeBox | null;
}
const fx = readFixtureJson<{ pillow: string; sources: Record<string, Source>; cases: Case[] }>("resample.json");
const blob = readBlob("resample.bin");
const sources = new Map<string, Uint8Array>();
for (const [name, s] of Object.entries(fx.sources)) sources.set(name, lcgImage(s.width, s.height, s.channels, s.seed, s.kind));

const label = (c: Case): string => {
  const s = fx.sources[c.source];
  return `${c.filter} ${s.width}x${s.height}x${s.channels} -> ${c.width}x${c.height}${c.box ? ` box ${c.box.join(",")}` : ""}`;
};

test("the generated sources are the ones Pillow resized", () => {
  for (const [name, s] of Object.entries(fx.sources)) {
    assert.equal(createHash("sha256").update(sources.get(name) as Uint8Array).digest("hex"), s.sha256, name);
  }
});

for (const filter of ["bicubic", "bilinear"] as const) {
  test(`${filter}: bit-identical to Pillow ${fx.pillow} (up, down, one axis, 1x1, box)`, () => {
    const cases = fx.cases.filter((c) => c.filter === filter);
    assert.ok(cases.length >= 20);
    const failures: string[] = [];
    for (const c of cases) {
      const s = fx.sources[c.source];
      const out = resize8(sources.get(c.source) as Uint8Array, s.width, s.height, c.width, c.height, s.channels, {
        filter, box: c.box ?? undefined,
      });
      const d = diffSummary(out, u8At(blob, c));
      if (d) failures.push(`${label(c)}: ${d}`);
    }
    assert.deepEqual(failures, []);
  });
}

test("the fixed-size wrappers are resize8 with their filter", () => {
  const c = fx.cases.find((x) => x.source === "n37x23" && x.filter === "bilinear") as Case;
  const src = sources.get("n37x23") as Uint8Array;
  assert.equal(diffSummary(resizeBilinear8(src, 37, 23, c.width, c.height, 3), u8At(blob, c)), null);
  assert.equal(diffSummary(resizeRgb8(src, 37, 23, c.width, c.height, { filter: "bilinear" }), u8At(blob, c)), null);
  const b = fx.cases.find((x) => x.source === "n37x23" && x.filter === "bicubic") as Case;
  assert.equal(diffSummary(resizeBicubic8(src, 37, 23, b.width, b.height, 3), u8At(blob, b)), null);
  assert.equal(diffSummary(resizeRgb8(src, 37, 23, b.width, b.height), u8At(blob, b)), null);
});

test("same size, whole image: a copy, not the input itself", () => {
  const src = sources.get("n7x5") as Uint8Array;
  const out = resizeRgb8(src, 7, 5, 7, 5);
  assert.notEqual(out, src);
  assert.deepEqual(out, src);
});

test("bad sizes and boxes fail as Pillow's _resize does, with typed errors", () => {
  const src = sources.get("n7x5") as Uint8Array;
  const code = (fn: () => unknown, c: string) =>
    assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === c);
  code(() => resizeRgb8(src, 7, 5, 0, 3), "bad_request");
  code(() => resizeRgb8(src, 7, 5, 2.5, 3), "bad_request");
  code(() => resizeRgb8(src, 7, 6, 3, 3), "shape_mismatch");
  code(() => resizeRgb8(src, 7, 5, 3, 3, { box: [-1, 0, 5, 5] }), "bad_request");
  code(() => resizeRgb8(src, 7, 5, 3, 3, { box: [0, 0, 7.5, 5] }), "bad_request");
  code(() => resizeRgb8(src, 7, 5, 3, 3, { box: [4, 0, 3, 5] }), "bad_request");
  code(() => resizeRgb8(src, 7, 5, 3, 3, { box: [0, 0, Number.NaN, 5] }), "bad_request");
  code(() => resizeRgb8(src, 7, 5, 3, 3, { filter: "lanczos" as ResampleFilter }), "bad_request");
});
