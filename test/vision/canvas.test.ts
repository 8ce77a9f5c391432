// pad / crop / tiles against numpy (np.pad, a filled canvas, slicing, and
// transformers' Mllama split_to_tiles), from scripts/make_vision_fixtures.py.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  cropChw32, cropHwc8, padChw32, padHwc8, padMask, tilesChw32, tilesHwc8,
  type Chw32, type Hwc8, type PadPosition, type Rect,
} from "../../src/vision/canvas.ts";
import { diffSummary, f32At, readBlob, readFixtureJson, u8At, type BlobEntry } from "./fixtures.ts";

interface Fx {
  hwc8: BlobEntry; chw32: BlobEntry; tiles_hwc8: BlobEntry; tiles_chw32: BlobEntry;
  pad: (BlobEntry & { layout: "hwc8" | "chw32"; width: number; height: number; position: PadPosition; value: number | number[] })[];
  mask: (BlobEntry & { width: number; height: number; position: PadPosition })[];
  crop: { rect: Rect; hwc8: BlobEntry; chw32: BlobEntry }[];
  tiles: { rows: number; cols: number; hwc8: BlobEntry; chw32: BlobEntry }[];
}
const fx = readFixtureJson<Fx>("canvas.json");
const blob = readBlob("canvas.bin");
const hwc: Hwc8 = { data: u8At(blob, fx.hwc8), width: 7, height: 5, channels: 3 };
const chw: Chw32 = { data: f32At(blob, fx.chw32), width: 7, height: 5, channels: 3 };
const thwc: Hwc8 = { data: u8At(blob, fx.tiles_hwc8), width: 8, height: 6, channels: 3 };
const tchw: Chw32 = { data: f32At(blob, fx.tiles_chw32), width: 8, height: 6, channels: 3 };
const code = (fn: () => unknown, c: string) => assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === c);

test("pad: top-left, centered and explicit offsets, scalar and per-channel fill", () => {
  assert.ok(fx.pad.length >= 8);
  for (const p of fx.pad) {
    const what = `${p.layout} -> ${p.width}x${p.height} ${JSON.stringify(p.position)} fill ${JSON.stringify(p.value)}`;
    const opts = { position: p.position, value: p.value };
    if (p.layout === "hwc8") {
      const out = padHwc8(hwc, p.width, p.height, opts);
      assert.equal(diffSummary(out.data, u8At(blob, p)), null, what);
      assert.deepEqual([out.width, out.height, out.channels], [p.width, p.height, 3]);
    } else {
      const out = padChw32(chw, p.width, p.height, opts);
      assert.equal(diffSummary(out.data, f32At(blob, p)), null, what);
    }
  }
});

test("padMask marks the image's pixels", () => {
  for (const m of fx.mask) {
    assert.equal(diffSummary(padMask(7, 5, m.width, m.height, m.position), u8At(blob, m)), null, JSON.stringify(m.position));
  }
});

test("crop: numpy slices in both layouts", () => {
  for (const c of fx.crop) {
    const a = cropHwc8(hwc, c.rect);
    assert.equal(diffSummary(a.data, u8At(blob, c.hwc8)), null, JSON.stringify(c.rect));
    assert.deepEqual([a.width, a.height], [c.rect.width, c.rect.height]);
    assert.equal(diffSummary(cropChw32(chw, c.rect).data, f32At(blob, c.chw32)), null, JSON.stringify(c.rect));
  }
});

test("tiles: row-major grid, [n, h, w, c] and Mllama's [n, c, h, w]", () => {
  for (const t of fx.tiles) {
    const a = tilesHwc8(thwc, t.rows, t.cols);
    assert.equal(diffSummary(a.data, u8At(blob, t.hwc8)), null, `${t.rows}x${t.cols} hwc8`);
    assert.deepEqual([a.count, a.tileHeight, a.tileWidth], t.hwc8.shape.slice(0, 3));
    const b = tilesChw32(tchw, t.rows, t.cols);
    assert.equal(diffSummary(b.data, f32At(blob, t.chw32)), null, `${t.rows}x${t.cols} chw32`);
    assert.deepEqual([b.count, b.channels, b.tileHeight, b.tileWidth], t.chw32.shape);
  }
});

test("out-of-range geometry fails with typed errors", () => {
  code(() => padHwc8(hwc, 6, 5), "bad_request");
  code(() => padHwc8(hwc, 9, 5, { position: { left: 3, top: 0 } }), "bad_request");
  code(() => padHwc8(hwc, 9, 5, { value: 256 }), "bad_request");
  code(() => padHwc8(hwc, 9, 5, { value: [1, 2] }), "shape_mismatch");
  code(() => padChw32(chw, 9, 5, { value: Number.NaN }), "bad_request");
  code(() => cropHwc8(hwc, { x: 5, y: 0, width: 3, height: 1 }), "bad_request");
  code(() => cropChw32(chw, { x: 0, y: 0, width: 0, height: 1 }), "bad_request");
  code(() => tilesHwc8(thwc, 4, 2), "shape_mismatch");
  code(() => tilesChw32({ ...tchw, data: tchw.data.subarray(1) }, 2, 2), "shape_mismatch");
});
