// GPU preprocessing in Node (Dawn): the WGSL resize against Pillow's own outputs (the fixtures
// scripts/make_vision_fixtures.py wrote with Pillow), and Qwen2-VL's GPU media path against
// numpy's pixel_values and against the CPU path, bit for bit; the per-item CPU fallback.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import { isTensor, type Tensor } from "../../src/gpu/tensor.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import { resizeImage } from "../../src/ops/image_resample.ts";
import { checkpointPreprocess, prepareMedia, type Qwen2VLMedia } from "../../src/models/qwen2_vl/media.ts";
import type { Qwen2VLVisionConfig } from "../../src/models/qwen2_vl/config.ts";
import { releaseImage, uploadImage8 } from "../../src/vision/gpu_image.ts";
import { GpuPreprocessor } from "../../src/vision/gpu_preprocess.ts";
import type { ResampleFilter, ResizeBox } from "../../src/vision/resize.ts";
import { readRgb } from "../ops/image_resample.cases.ts";
import { FIXTURES, diffSummary, lcgImage, readBlob, readFixtureJson, u8At, type BlobEntry } from "./fixtures.ts";
import { assertSameBits } from "../util/compare.ts";

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => gpu?.destroy());

const vc = { patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2, inChannels: 3 } as Qwen2VLVisionConfig;

async function pixelsOf(m: Qwen2VLMedia): Promise<Float32Array> {
  const p = m.payload.pixelValues;
  return p instanceof Float32Array ? p : readF32(gpu, p as Tensor);
}


test("GPU resize equals Pillow's bytes on every RGB fixture case (both filters, boxes)", async () => {
  interface Source { width: number; height: number; channels: number; kind: "noise" | "ramp"; seed: number }
  interface Case extends BlobEntry { source: string; filter: ResampleFilter; width: number; height: number; box: ResizeBox | null }
  const fx = readFixtureJson<{ sources: Record<string, Source>; cases: Case[] }>("resample.json");
  const blob = readBlob("resample.bin");
  const rgbCases = fx.cases.filter((c) => fx.sources[c.source].channels === 3);
  assert.ok(rgbCases.length >= 20, `${rgbCases.length} RGB cases`);
  const failures: string[] = [];
  for (const c of rgbCases) {
    const s = fx.sources[c.source];
    const src = uploadImage8(gpu, lcgImage(s.width, s.height, 3, s.seed, s.kind), s.width, s.height, 3);
    const rec = new Recorder(gpu);
    const out = resizeImage(rec, src, c.width, c.height, { filter: c.filter, box: c.box ?? undefined });
    rec.submit();
    const d = diffSummary(await readRgb(gpu, out), u8At(blob, c));
    if (d) failures.push(`${c.filter} ${c.source} -> ${c.width}x${c.height}: ${d}`);
    releaseImage(gpu, src);
    releaseImage(gpu, out);
  }
  assert.deepEqual(failures, []);
});

test("Qwen2-VL on the GPU: pixel_values equal numpy's (Pillow fixtures) and the CPU path's, bit for bit", async () => {
  interface ImageCase { name: string; file: string; min_pixels: number; max_pixels: number; grid_thw: number[] }
  const { images } = readFixtureJson<{ images: ImageCase[] }>("expected.json");
  const gp = new GpuPreprocessor(() => gpu);
  for (const c of images) {
    const ref = { kind: "image" as const, source: new Uint8Array(readFileSync(join(FIXTURES, c.file))), options: {} };
    const defaults = { ...checkpointPreprocess({}), minPixels: c.min_pixels, maxPixels: c.max_pixels };
    const [onGpu] = await prepareMedia([ref], defaults, vc, undefined, gp);
    const [onCpu] = await prepareMedia([ref], defaults, vc);
    assert.equal(onGpu.device, "gpu", c.name);
    assert.ok(isTensor(onGpu.payload.pixelValues), `${c.name}: pixels stay on the GPU`);
    assert.deepEqual(onGpu.payload.grid, c.grid_thw, c.name);
    assert.equal(onGpu.tokens, onCpu.tokens);
    const got = await pixelsOf(onGpu);
    const numpy = readBlob(`${c.name}.pixel_values.bin`);
    assertSameBits(got, new Float32Array(numpy.buffer, numpy.byteOffset, numpy.byteLength / 4), `${c.name} vs numpy`);
    assertSameBits(got, await pixelsOf(onCpu), `${c.name} vs the CPU path`);
    onGpu.release?.();
    onGpu.release?.(); // idempotent
  }
  gp.dispose();
});

test("Qwen2-VL video frames on the GPU (odd count padded, resized) equal the CPU path; equal pixels give equal keys", async () => {
  const file = (name: string) => new Uint8Array(readFileSync(join(FIXTURES, name)));
  const gp = new GpuPreprocessor(() => gpu);
  const frames = [file("s422.jpg"), file("progressive.jpg"), file("s420.jpg")];
  const refs = [
    { kind: "video" as const, source: frames, options: {} },
    { kind: "video" as const, source: frames, options: { resizedWidth: 56, resizedHeight: 84 } },
    { kind: "image" as const, source: file("photo_64x48.jpg"), options: {} },
  ];
  const defaults = checkpointPreprocess({});
  const onGpu = await prepareMedia(refs, defaults, vc, undefined, gp);
  const onCpu = await prepareMedia(refs, defaults, vc);
  for (const [i, m] of onGpu.entries()) {
    assert.equal(m.device, "gpu");
    assert.deepEqual(m.payload.grid, onCpu[i].payload.grid);
    assertSameBits(await pixelsOf(m), await pixelsOf(onCpu[i]), `item ${i}`);
  }
  const again = await prepareMedia([refs[2]], defaults, vc, undefined, gp);
  assert.equal(again[0].hash, onGpu[2].hash, "same image, same key");
  assert.notEqual(onGpu[0].hash, onGpu[1].hash, "different pixels, different keys");
  for (const m of [...onGpu, ...again]) m.release?.();
  gp.dispose();
});

test("an item past the device's binding limit falls back to the CPU path, with the same values", async () => {
  const small = { ...gpu, limits: { ...gpu.limits, maxStorageBufferBindingSize: 4096 } } as GpuContext;
  const gp = new GpuPreprocessor(() => small);
  const ref = { kind: "image" as const, source: new Uint8Array(readFileSync(join(FIXTURES, "wide_700x210.png"))), options: {} };
  const [m] = await prepareMedia([ref], checkpointPreprocess({}), vc, undefined, gp);
  assert.equal(m.device, "cpu");
  assert.ok(m.payload.pixelValues instanceof Float32Array);
  const [cpu] = await prepareMedia([ref], checkpointPreprocess({}), vc);
  assertSameBits(m.payload.pixelValues as Float32Array, cpu.payload.pixelValues as Float32Array, "fallback");
});
