// Videos given as lists of frames, against Pillow/numpy fixtures that follow the Qwen2-VL release
// of qwen_vl_utils (0.0.8) and transformers' processor (scripts/make_video_frame_fixtures.py):
// every frame fetched with the image budgets (or the part's own options) at its own size, the
// count padded to even, every frame then at the processor's size for the first frame. The CPU
// path and the GPU path must both give numpy's pixel_values exactly, its grid and token count.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import type { Qwen2VLVisionConfig } from "../../src/models/qwen2_vl/config.ts";
import { checkpointPreprocess, prepareMedia } from "../../src/models/qwen2_vl/media.ts";
import { GpuPreprocessor } from "../../src/vision/gpu_preprocess.ts";
import type { MediaSizeOptions } from "../../src/models/family.ts";
import { FIXTURES } from "./fixtures.ts";

interface FrameCase {
  name: string;
  frames: string[];
  options: { min_pixels?: number; max_pixels?: number; resized_height?: number; resized_width?: number };
  min_pixels: number;
  max_pixels: number;
  grid_thw: number[];
  tokens: number;
  pixel_values_sha256: string;
  first: number[];
  last: number[];
}

const DIR = join(FIXTURES, "frames");
const { cases } = JSON.parse(readFileSync(join(DIR, "expected.json"), "utf8")) as { cases: FrameCase[] };
const vc = { patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2, inChannels: 3 } as Qwen2VLVisionConfig;

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => gpu?.destroy());

const sizeOptions = (o: FrameCase["options"]): MediaSizeOptions => ({
  ...(o.min_pixels !== undefined ? { minPixels: o.min_pixels } : {}),
  ...(o.max_pixels !== undefined ? { maxPixels: o.max_pixels } : {}),
  ...(o.resized_height !== undefined ? { resizedHeight: o.resized_height, resizedWidth: o.resized_width } : {}),
});

for (const device of ["cpu", "gpu"] as const) {
  test(`frame lists as qwen_vl_utils 0.0.8 sizes them (${device} path): pixel values, grids and token counts equal numpy's`, async () => {
    const gp = device === "gpu" ? new GpuPreprocessor(() => gpu) : undefined;
    assert.equal(cases.length, 8);
    for (const c of cases) {
      const frames = c.frames.map((f) => new Uint8Array(readFileSync(join(DIR, f))));
      const defaults = { ...checkpointPreprocess({}), minPixels: c.min_pixels, maxPixels: c.max_pixels };
      const [m] = await prepareMedia([{ kind: "video", source: frames, options: sizeOptions(c.options) }], defaults, vc, undefined, gp);
      assert.equal(m.device ?? "cpu", device, c.name);
      assert.deepEqual(m.payload.grid, c.grid_thw, c.name);
      assert.equal(m.tokens, c.tokens, c.name);
      const p = m.payload.pixelValues;
      const pv = p instanceof Float32Array ? p : await readF32(gpu, p as Tensor);
      assert.deepEqual(Array.from(pv.subarray(0, 6)), c.first, c.name);
      assert.deepEqual(Array.from(pv.subarray(pv.length - 6)), c.last, c.name);
      assert.equal(createHash("sha256").update(new Uint8Array(pv.buffer, pv.byteOffset, pv.byteLength)).digest("hex"), c.pixel_values_sha256, c.name);
      m.release?.();
    }
    gp?.dispose();
  });
}
