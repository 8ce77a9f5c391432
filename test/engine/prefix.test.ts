// KV-prefix keys (src/engine/prefix.ts): pad runs are keyed by the media item's content hash, so two
// prompts share a prefix only where their token ids and their images agree.
import assert from "node:assert/strict";
import { test } from "node:test";
import { commonPrefix, mediaKeyedIds } from "../../src/engine/prefix.ts";

const IMG = 9;
const VID = 8;
const placeholders = [{ tokenId: IMG, kind: "image" }, { tokenId: VID, kind: "video" }];

test("pad runs take their item's hash and position; different images break the prefix at their first pad", () => {
  const ids = [1, IMG, IMG, 2, IMG, IMG, IMG, 3];
  const a = mediaKeyedIds(ids, [{ kind: "image", hash: "h1", tokens: 2 }, { kind: "image", hash: "h2", tokens: 3 }], placeholders);
  assert.deepEqual(a, [1, "image:h1:0", "image:h1:1", 2, "image:h2:0", "image:h2:1", "image:h2:2", 3]);
  const b = mediaKeyedIds(ids, [{ kind: "image", hash: "h1", tokens: 2 }, { kind: "image", hash: "hX", tokens: 3 }], placeholders);
  assert.equal(commonPrefix(a, b), 4);
});

test("media occupying no pad run (cross-attention families: one marker token each) is keyed per item", () => {
  const ids = [1, IMG, 2, IMG, 3];
  const a = mediaKeyedIds(ids, [{ kind: "image", hash: "h1", tokens: 0 }, { kind: "image", hash: "h2", tokens: 0 }], placeholders);
  assert.deepEqual(a, [1, "image:h1", 2, "image:h2", 3]);
  const b = mediaKeyedIds(ids, [{ kind: "image", hash: "h1", tokens: 0 }, { kind: "image", hash: "h3", tokens: 0 }], placeholders);
  assert.equal(commonPrefix(a, b), 3, "a different second image ends the shared prefix at its marker");
});

test("token ids that are no family placeholder stay ids, video pads are keyed apart from image pads", () => {
  const ids = [VID, IMG, 5];
  const keys = mediaKeyedIds(ids, [{ kind: "video", hash: "v", tokens: 1 }, { kind: "image", hash: "i", tokens: 1 }], placeholders);
  assert.deepEqual(keys, ["video:v:0", "image:i:0", 5]);
  assert.deepEqual(mediaKeyedIds(ids, [], []), [VID, IMG, 5]);
});
