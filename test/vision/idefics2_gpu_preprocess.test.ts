// Idefics2's GPU preprocessing in Node (Dawn): each image's crops cut, resized (Pillow's filter) and
// cut into valid patch rows in WGSL, all crops in one tensor per image, against the numpy/PIL
// reference fixtures (scripts/make_idefics2_fixtures.py) and against the CPU path, bit for bit;
// every tiling case (splitting on/off, odd sizes, extreme aspect ratios, crops kept in place, a
// fixed size rule, bicubic, alpha, EXIF); the per-item CPU fallback; identical errors; content keys.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { encode as encodePng } from "fast-png";
import { WebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { isTensor, type Tensor } from "../../src/gpu/tensor.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import type { MediaRef, PreparedMedia } from "../../src/models/family.ts";
import { parseIdefics2Preprocess } from "../../src/models/idefics2/image_processor.ts";
import { Idefics2Processor, isIdefics2Payload, type Idefics2ImagePayload } from "../../src/models/idefics2/processor.ts";
import { FIXTURES, type BlobEntry } from "./fixtures.ts";
import { assertSameBits } from "../util/compare.ts";

const DIR = join(FIXTURES, "idefics2");

interface CropCase { height: number; width: number; patches_h: number; patches_w: number; patch_rows: BlobEntry; position_ids: BlobEntry }
interface RequestCase { name: string; images: string[]; preprocessor_config: Record<string, unknown>; patch_size: number; image_size: number; crops: CropCase[] }
const { cases } = JSON.parse(readFileSync(join(DIR, "cases.json"), "utf8")) as { cases: RequestCase[] };
const blob = new Uint8Array(readFileSync(join(DIR, "cases.bin")));
const f32At = (e: BlobEntry): Float32Array => new Float32Array(blob.slice(e.offset, e.offset + e.length).buffer);
const file = (name: string): Uint8Array => new Uint8Array(readFileSync(join(DIR, name)));

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => gpu?.destroy());

const SEQ = 3;

function processor(pp: Record<string, unknown>, patchSize: number, imageSize: number, ctx?: () => GpuContext): Idefics2Processor {
  const preprocess = parseIdefics2Preprocess(pp, { image_seq_len: SEQ });
  return new Idefics2Processor({ patchSize, imageSize, imageTokenId: 7, fakeTokenId: 8, preprocess }, ctx);
}

const image = (source: Uint8Array): MediaRef => ({ kind: "image", source, options: {} });

function payloadOf(m: PreparedMedia): Idefics2ImagePayload {
  assert.ok(isIdefics2Payload(m.payload), "an Idefics2 payload");
  return m.payload;
}

/** Each crop's rows: host values, or read back from the image's one tensor at the crop's row offset. */
async function cropRows(m: PreparedMedia): Promise<Float32Array[]> {
  const p = payloadOf(m);
  if (m.device !== "gpu") return p.crops.map((c) => c.patchRows as Float32Array);
  assert.ok(p.pixels && isTensor(p.pixels) && p.rowOffsets, "GPU payload: one tensor and row offsets");
  const all = await readF32(gpu, p.pixels);
  const cols = p.pixels.shape[1];
  let expect = 0;
  const rows = p.crops.map((c, k) => {
    const n = c.patchesH * c.patchesW;
    assert.equal(p.rowOffsets![k], expect, `crop ${k} row offset`);
    const t = c.patchRows as Tensor;
    assert.ok(isTensor(t) && t.buffer === p.pixels!.buffer, `crop ${k}: a view of the image's tensor`);
    assert.deepEqual([t.offset, ...t.shape], [p.pixels!.offset + expect * cols * 4, n, cols], `crop ${k} view`);
    expect += n;
    return all.subarray(p.rowOffsets![k] * cols, (p.rowOffsets![k] + n) * cols);
  });
  assert.equal(expect, p.pixels.shape[0], "the crops fill the image's tensor");
  return rows;
}


/** GPU media equal CPU media: device, tokens, crop sizes/grids/position ids, and every row bit for bit. */
async function assertSameMedia(onGpu: PreparedMedia[], onCpu: PreparedMedia[], what: string, device: "gpu" | "cpu" = "gpu"): Promise<void> {
  assert.equal(onGpu.length, onCpu.length);
  for (const [i, g] of onGpu.entries()) {
    const c = onCpu[i];
    assert.equal(g.device, device, `${what} item ${i}: device`);
    assert.equal(c.device, "cpu");
    assert.equal(g.tokens, c.tokens, `${what} item ${i}: tokens`);
    const gp = payloadOf(g);
    const cp = payloadOf(c);
    const shape = (p: Idefics2ImagePayload) => p.crops.map((x) => [x.height, x.width, x.patchesH, x.patchesW]);
    assert.deepEqual(shape(gp), shape(cp), `${what} item ${i}: crop sizes`);
    gp.crops.forEach((x, k) => assert.deepEqual(x.positionIds, cp.crops[k].positionIds, `${what} item ${i} crop ${k}: position ids`));
    const [gr, cr] = [await cropRows(g), await cropRows(c)];
    gr.forEach((r, k) => assertSameBits(r, cr[k], `${what} item ${i} crop ${k}`));
  }
}

const release = (items: readonly PreparedMedia[]): void => items.forEach((m) => m.release?.());

test("every fixture case on the GPU equals numpy's patch rows and the CPU path, bit for bit (split, alpha, EXIF, bicubic/CLIP)", async () => {
  assert.ok(cases.length >= 9);
  for (const c of cases) {
    const onGpuProc = processor(c.preprocessor_config, c.patch_size, c.image_size, () => gpu);
    const refs = c.images.map((f) => image(file(f)));
    const onGpu = await onGpuProc.prepare(refs);
    const onCpu = await processor(c.preprocessor_config, c.patch_size, c.image_size).prepare(refs);
    await assertSameMedia(onGpu, onCpu, c.name);
    const rows = (await Promise.all(onGpu.map(cropRows))).flat();
    assert.equal(rows.length, c.crops.length, c.name);
    rows.forEach((r, k) => assertSameBits(r, f32At(c.crops[k].patch_rows), `${c.name} crop ${k} vs numpy`));
    assert.deepEqual(onGpuProc.placeholders(onGpu), onGpuProc.placeholders(onCpu), c.name);
    release(onGpu);
    onGpuProc.dispose();
  }
});

/** Seeded RGB (or RGBA) noise with a gradient, as a PNG. */
function png(w: number, h: number, seed: number, channels: 3 | 4 = 3): Uint8Array {
  const data = new Uint8Array(w * h * channels);
  let s = seed >>> 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let ch = 0; ch < channels; ch++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        const i = (y * w + x) * channels + ch;
        data[i] = ch === 3 ? (s >>> 24) & 0xf0 : ((x * 9 + y * 5 + ch * 70) + (s >>> 28)) & 255;
      }
    }
  }
  return encodePng({ width: w, height: h, data, channels, depth: 8 });
}

test("tiling cases on the GPU equal the CPU path: odd sizes, extreme aspect ratios, crops kept in place, fixed size, one-axis resizes, the real 980/378 rule", async () => {
  const edges = (longest_edge: number, shortest_edge: number) => ({ size: { longest_edge, shortest_edge } });
  const t0 = Date.now();
  const runs: { what: string; pp: Record<string, unknown>; p: number; s: number; images: Uint8Array[] }[] = [
    // Odd sizes, split and not: the odd row/column goes to the bottom/right crops, each resized.
    { what: "odd 53x41 split", pp: { ...edges(48, 20), do_image_splitting: true }, p: 4, s: 32, images: [png(53, 41, 1)] },
    { what: "odd 53x41", pp: edges(48, 20), p: 5, s: 40, images: [png(53, 41, 1)] },
    // Extreme aspect ratios: one axis shrunk, the other stretched to the floor (crops too).
    { what: "wide 300x9 split", pp: { ...edges(64, 16), do_image_splitting: true }, p: 4, s: 32, images: [png(300, 9, 2)] },
    { what: "tall 9x300 split", pp: { ...edges(64, 16), do_image_splitting: true }, p: 4, s: 32, images: [png(9, 300, 3)] },
    // No resize: every crop cut in place from the decoded image (x0/y0 of the crop), partial patches dropped.
    { what: "do_resize false split", pp: { do_resize: false, do_image_splitting: true }, p: 7, s: 28, images: [png(61, 45, 4)] },
    // The full image keeps its size (read in place) while its crops are resized on one axis only.
    { what: "one-axis crops", pp: { ...edges(48, 20), do_image_splitting: true }, p: 4, s: 24, images: [png(48, 30, 5)] },
    // A fixed size rule, bicubic, CLIP mean/std.
    {
      what: "fixed bicubic split",
      pp: { size: { height: 28, width: 35 }, resample: 3, do_image_splitting: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711] },
      p: 7, s: 28, images: [png(70, 33, 6)],
    },
    // RGBA: alpha dropped as convert("RGB") does; two images in one request.
    { what: "rgba + rgb", pp: { ...edges(40, 16), do_image_splitting: true }, p: 5, s: 35, images: [png(37, 29, 7, 4), png(23, 50, 8)] },
    // idefics2-8b's preprocessor_config (980/378, bilinear, split) with patch 14: crops stretched to 378.
    { what: "idefics2-8b rule", pp: { ...edges(980, 378), do_image_splitting: true }, p: 14, s: 980, images: [png(500, 300, 9)] },
  ];
  for (const r of runs) {
    const proc = processor(r.pp, r.p, r.s, () => gpu);
    const refs = r.images.map(image);
    const onGpu = await proc.prepare(refs);
    await assertSameMedia(onGpu, await processor(r.pp, r.p, r.s).prepare(refs), r.what);
    release(onGpu);
    proc.dispose();
  }
  const ms = Date.now() - t0;
  assert.ok(ms < 60_000, `${ms} ms`);
});

test("an item past the device's binding limit falls back to the CPU path with the same values; its neighbour stays on the GPU", async () => {
  const small = { ...gpu, limits: { ...gpu.limits, maxStorageBufferBindingSize: 4096 } } as GpuContext;
  const pp = { size: { longest_edge: 48, shortest_edge: 20 }, do_image_splitting: true };
  const proc = processor(pp, 4, 32, () => small);
  // 4096 bytes hold 21 rows of 3 * 4 * 4 floats: the 60x44 image's crops (resized) need far more.
  const big = image(png(60, 44, 10));
  const [m] = await proc.prepare([big]);
  assert.equal(m.device, "cpu");
  assert.equal(m.release, undefined);
  await assertSameMedia([m], await processor(pp, 4, 32).prepare([big]), "fallback", "cpu");
  proc.dispose();
  // Unresized, a 9x9 image is 4 one-patch crops + a 2x2-patch full image: 8 rows, on the GPU.
  const tinyPp = { do_resize: false, do_image_splitting: true };
  const mixedProc = processor(tinyPp, 4, 32, () => small);
  const mixed = await mixedProc.prepare([image(png(9, 9, 11)), big]);
  assert.deepEqual(mixed.map((x) => x.device), ["gpu", "cpu"]);
  const cpu = await processor(tinyPp, 4, 32).prepare([image(png(9, 9, 11)), big]);
  await assertSameMedia(mixed.slice(0, 1), cpu.slice(0, 1), "mixed (GPU item)", "gpu");
  await assertSameMedia(mixed.slice(1), cpu.slice(1), "mixed (fallback item)", "cpu");
  mixedProc.dispose();
  release(mixed);
});

test("errors are the CPU path's; no GPU buffer leaks; aborts; content keys follow pixels and grids; release is idempotent", async () => {
  const live = (): number => (gpu.pool as unknown as { live: Set<GPUBuffer> }).live.size;
  const before = live();
  const split = { do_resize: false, do_image_splitting: true };
  const messages = async (p: Promise<unknown>): Promise<string> => {
    try {
      await p;
    } catch (e) {
      assert.ok(e instanceof WebvlmError);
      return `${e.code}: ${e.message}`;
    }
    return assert.fail("no error");
  };
  for (const [pp, img] of [[split, png(1, 9, 1)], [split, png(30, 20, 2)], [{ do_resize: false }, png(30, 5, 3)]] as const) {
    const onGpu = await messages(processor(pp, 14, 56, () => gpu).prepare([image(img)]));
    assert.equal(onGpu, await messages(processor(pp, 14, 56).prepare([image(img)])));
    assert.match(onGpu, /^bad_request: /);
  }
  // A later item failing releases the earlier items' tensors.
  const failing = processor(split, 4, 16, () => gpu);
  await assert.rejects(failing.prepare([image(png(20, 20, 4)), image(png(1, 9, 1))]), /too small to split/);
  failing.dispose();
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(processor(split, 4, 16, () => gpu).prepare([image(png(20, 20, 4))], ac.signal), (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
  assert.equal(live(), before, "no buffer left behind");

  // Equal pixels, equal keys; uniform images of transposed shapes have equal rows but other grids: other keys.
  const proc = processor({ do_resize: false }, 4, 32, () => gpu);
  const solid = (w: number, h: number): Uint8Array => encodePng({ width: w, height: h, data: new Uint8Array(w * h * 3).fill(77), channels: 3, depth: 8 });
  const items = await proc.prepare([image(png(20, 12, 5)), image(png(20, 12, 5)), image(png(20, 12, 6)), image(solid(16, 8)), image(solid(8, 16))]);
  assert.equal(items[0].hash, items[1].hash);
  assert.notEqual(items[0].hash, items[2].hash);
  assert.notEqual(items[3].hash, items[4].hash);
  assert.ok(live() > before);
  for (const m of items) {
    m.release?.();
    m.release?.();
  }
  proc.dispose();
  assert.equal(live(), before, "released");
});
