// The engine's media preparation takes image_mean/image_std/rescale_factor from
// the checkpoint's preprocessor_config.json. Expected pixel_values come from
// numpy (scripts/make_vision_fixtures.py: the Qwen2-VL pipeline with SigLIP's
// 0.5/0.5, and with CLIP's for the "images" cases).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { checkpointPreprocess, prepareMedia } from "../../src/models/qwen2_vl/media.ts";
import { readBlob, readFixtureJson } from "./fixtures.ts";

interface Expected {
  images: { name: string; file: string; pixel_values_sha256: string; grid_thw: number[] }[];
  checkpoint_mean_std: {
    file: string; image_mean: number[]; image_std: number[]; grid_thw: number[];
    pixel_values_sha256: string; first: number[]; last: number[];
  };
}
const expected = readFixtureJson<Expected>("expected.json");
const siglip = expected.checkpoint_mean_std;
const clipSquare = expected.images.find((c) => c.file === siglip.file) as Expected["images"][number];
// Only the fields media preparation reads; the rest of the vision config is the model's.
const vc = { patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2 } as Parameters<typeof prepareMedia>[2];
const sha = (v: Float32Array): string =>
  createHash("sha256").update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)).digest("hex");

// A SigLIP-tower checkpoint's preprocessor_config.json (Idefics 2 ships these values).
const SIGLIP_PP = {
  do_rescale: true, rescale_factor: 0.00392156862745098, do_normalize: true,
  image_mean: siglip.image_mean, image_std: siglip.image_std, min_pixels: 3136, max_pixels: 12845056,
};

test("checkpointPreprocess reads the area bounds and the rescale/normalize fields", () => {
  assert.deepEqual(checkpointPreprocess(SIGLIP_PP), {
    minPixels: 3136, maxPixels: 12845056, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5],
    rescaleFactor: 1 / 255, doRescale: true, doNormalize: true,
  });
});

test("a SigLIP mean/std changes the image's pixel_values as numpy says", async () => {
  const bytes = readBlob(siglip.file);
  const [s] = await prepareMedia([{ kind: "image", source: bytes, options: {} }], checkpointPreprocess(SIGLIP_PP), vc);
  const pv = s.payload.pixelValues as Float32Array;
  assert.deepEqual(s.payload.grid, siglip.grid_thw);
  assert.deepEqual(Array.from(pv.subarray(0, 8)), siglip.first);
  assert.deepEqual(Array.from(pv.subarray(pv.length - 8)), siglip.last);
  assert.equal(sha(pv), siglip.pixel_values_sha256);
  // A checkpoint without those fields keeps CLIP's values (Qwen2-VL's), and they differ.
  const [c] = await prepareMedia([{ kind: "image", source: bytes, options: {} }], checkpointPreprocess({}), vc);
  assert.equal(sha(c.payload.pixelValues as Float32Array), clipSquare.pixel_values_sha256);
  assert.notEqual(c.hash, s.hash);
});

test("video frames are normalized with the checkpoint's mean/std too", async () => {
  // Two copies of the still image at its own size patchify exactly as the image does.
  const bytes = readBlob(siglip.file);
  const [v] = await prepareMedia(
    [{ kind: "video", source: [bytes, bytes], options: { resizedHeight: 84, resizedWidth: 84 } }],
    checkpointPreprocess(SIGLIP_PP), vc,
  );
  assert.deepEqual(v.payload.grid, siglip.grid_thw);
  assert.equal(sha(v.payload.pixelValues as Float32Array), siglip.pixel_values_sha256);
});
