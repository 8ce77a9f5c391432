// Llama 3.2 Vision's cross-attention mask from token ids (/work/shared/MLLAMA.md §6). Expected
// spans, rows and masks are written by hand from the spec's rules, or come from a Python port of
// transformers' processor (scripts/make_mllama_fixtures.py -> cross_mask.json).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  F32_MIN, crossAttentionKeyMask, crossAttentionRowIndex, crossAttentionRowMask, crossAttentionRows, crossAttentionRowsFromIds,
  crossAttentionSpans, crossAttentionTileMask,
} from "../../src/models/mllama/cross_mask.ts";

const I = 128256;
const t = 7; // any text token
const rowsOf = (ids: number[]): [number, number][] => {
  const r = crossAttentionRowsFromIds(ids, I);
  return Array.from(r.imageStart, (s, k) => [s, r.imageEnd[k]]);
};

test("one image: its span runs from its token to the end; text before it sees nothing", () => {
  // <|begin_of_text|> <|start_header_id|> user <|end_header_id|> \n\n <|image|> Describe it . <|eot_id|>
  const ids = [128000, 128006, 882, 128007, 271, I, t, t, t, 128009];
  assert.deepEqual(crossAttentionSpans(ids, I), [{ start: 5, end: 10 }]);
  assert.deepEqual(rowsOf(ids), [[0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]]);
  assert.deepEqual(Array.from(crossAttentionRowMask(crossAttentionRowsFromIds(ids, I))), [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
});

test("two separated images: text between them sees only the first, text after only the second", () => {
  const ids = [t, t, I, t, t, I, t, t];
  assert.deepEqual(crossAttentionSpans(ids, I), [{ start: 2, end: 5 }, { start: 5, end: 8 }]);
  assert.deepEqual(rowsOf(ids), [[0, 0], [0, 0], [0, 1], [0, 1], [0, 1], [1, 2], [1, 2], [1, 2]]);
});

test("two adjacent images: the first takes over the second's end, so the text after sees both", () => {
  const ids = [t, I, I, t, t];
  assert.deepEqual(crossAttentionSpans(ids, I), [{ start: 1, end: 5 }, { start: 2, end: 5 }]);
  // Row 1 (the first image token) sees only image 0; from the second token on, both.
  assert.deepEqual(rowsOf(ids), [[0, 0], [0, 1], [0, 2], [0, 2], [0, 2]]);
});

test("a group of two then a separated image; an image token at the very end", () => {
  const ids = [I, I, t, I, t];
  assert.deepEqual(crossAttentionSpans(ids, I), [{ start: 0, end: 3 }, { start: 1, end: 3 }, { start: 3, end: 5 }]);
  assert.deepEqual(rowsOf(ids), [[0, 1], [0, 2], [0, 2], [2, 3], [2, 3]]);
  assert.deepEqual(crossAttentionSpans([t, I], I), [{ start: 1, end: 2 }]);
  // Three adjacent images, text after: all three visible to the text.
  assert.deepEqual(crossAttentionSpans([I, I, I, t], I), [{ start: 0, end: 4 }, { start: 1, end: 4 }, { start: 2, end: 4 }]);
});

test("no images: no spans, every row sees nothing (the cross layers are skipped)", () => {
  assert.deepEqual(crossAttentionSpans([t, t, t], I), []);
  assert.deepEqual(rowsOf([t, t, t]), [[0, 0], [0, 0], [0, 0]]);
  assert.deepEqual(crossAttentionSpans([], I), []);
});

test("tile mask [S, images, T]: visible images' tiles < num_tiles", () => {
  const ids = [t, I, t, I, t];
  const rows = crossAttentionRowsFromIds(ids, I);
  // image 0: 1 tile, image 1: 2 tiles, max 3 tiles.
  const m = crossAttentionTileMask(rows, [1, 2], 3);
  assert.deepEqual(Array.from(m), [
    0, 0, 0, 0, 0, 0, // row 0: before the first image
    1, 0, 0, 0, 0, 0, // rows 1-2: image 0 (1 tile)
    1, 0, 0, 0, 0, 0,
    0, 0, 0, 1, 1, 0, // rows 3-4: image 1 (2 tiles)
    0, 0, 0, 1, 1, 0,
  ]);
  assert.throws(() => crossAttentionTileMask(rows, [1, 4], 3), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && /image 2 has 4 tiles/.test(e.message));
});

test("additive key mask [rows, images*T*P]: 0 where visible, float32.min elsewhere; image-less rows see every key", () => {
  const ids = [t, I, I, t];
  const rows = crossAttentionRowsFromIds(ids, I);
  // numTiles [1, 2], T = 2, P = 2: keys (image, tile, patch) = 0:(0,0,*) 2:(0,1,*) 4:(1,0,*) 6:(1,1,*).
  const a = crossAttentionKeyMask(rows, [1, 2], 2, 2);
  const M = F32_MIN;
  assert.deepEqual(Array.from(a), [
    0, 0, 0, 0, 0, 0, 0, 0, // row 0: r = 0, every key, padded tile included
    0, 0, M, M, M, M, M, M, // row 1: image 0's one tile
    0, 0, M, M, 0, 0, 0, 0, // rows 2-3: both images, image 0's second tile is padding
    0, 0, M, M, 0, 0, 0, 0,
  ]);
  assert.equal(Math.fround(F32_MIN), F32_MIN);
  assert.equal(F32_MIN, -3.4028234663852886e38);
  // Chosen rows only (a prefill chunk, or the decode row).
  assert.deepEqual(Array.from(crossAttentionKeyMask(rows, [1, 2], 2, 2, [1])), [0, 0, M, M, M, M, M, M]);
  assert.throws(() => crossAttentionKeyMask(rows, [1, 2], 2, 2, [4]), (e: unknown) => e instanceof WebvlmError && /no row 4/.test(e.message));
});

test("generated tokens reuse the last prompt row", () => {
  assert.equal(crossAttentionRowIndex(2, 5), 2);
  assert.equal(crossAttentionRowIndex(4, 5), 4);
  assert.equal(crossAttentionRowIndex(5, 5), 4);
  assert.equal(crossAttentionRowIndex(90, 5), 4);
  assert.throws(() => crossAttentionRowIndex(0, 0), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
});

test("rows from explicit spans cover a longer sequence the same way", () => {
  const r = crossAttentionRows([{ start: 1, end: 3 }], 4);
  assert.deepEqual([Array.from(r.imageStart), Array.from(r.imageEnd)], [[0, 0, 0, 0], [0, 1, 1, 0]]);
});

test("spans and the [S, images, T] mask equal transformers' processor (Python port) on 60 pseudo-random id sequences", () => {
  const path = new URL("../fixtures/vision/mllama/cross_mask.json", import.meta.url);
  const fx = JSON.parse(readFileSync(path, "utf8")) as {
    image_token_id: number;
    cases: { ids: number[]; spans: [number, number][]; num_tiles: number[]; max_tiles: number; dense: number[] }[];
  };
  assert.equal(fx.cases.length, 60);
  for (const [k, c] of fx.cases.entries()) {
    const spans = crossAttentionSpans(c.ids, fx.image_token_id);
    assert.deepEqual(spans.map((s) => [s.start, s.end]), c.spans, `case ${k}`);
    const rows = crossAttentionRows(spans, c.ids.length);
    assert.deepEqual(Array.from(crossAttentionTileMask(rows, c.num_tiles, c.max_tiles)), c.dense, `case ${k}`);
    // The row mask: 1 exactly where the dense row has a 1.
    const per = c.num_tiles.length * c.max_tiles;
    const r = Array.from({ length: c.ids.length }, (_, s) => (c.dense.slice(s * per, (s + 1) * per).some((v) => v === 1) ? 1 : 0));
    assert.deepEqual(Array.from(crossAttentionRowMask(rows)), r, `case ${k}`);
  }
});
