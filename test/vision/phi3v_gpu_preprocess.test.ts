// Phi-3.5-vision's GPU preprocessing (src/models/phi3_v/gpu_preprocess.ts) in Node (Dawn): the
// processor's GPU payload (patch rows as a GPU tensor) against the CPU path's, bit for bit, on the
// family's fixture images at every num_crops case the fixtures hold, and on odd sizes, extreme
// aspect ratios (portraits: the transposed frame's resize done pass by pass), passes that are
// copies, alpha and EXIF images; the GPU's HD image and global view against the numpy/PIL
// reference (scripts/make_phi3v_fixtures.py); the per-item CPU fallback; keys and release.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { gunzipSync } from "node:zlib";
import { encode as encodePng } from "fast-png";
import { WebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { isTensor, type Tensor } from "../../src/gpu/tensor.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import type { MediaRef, PreparedMedia } from "../../src/models/family.ts";
import { phi3vHdGeometry, parsePhi3VPreprocess } from "../../src/models/phi3_v/image_processor.ts";
import { isPhi3VPayload, Phi3VProcessor, type Phi3VImagePayload } from "../../src/models/phi3_v/processor.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import { normalizeTable } from "../../src/vision/normalize.ts";
import { FIXTURES, lcgImage } from "./fixtures.ts";
import { assertSameBits } from "../util/compare.ts";

const DIR = join(FIXTURES, "phi3v");

interface Entry { offset: number; count: number; dtype: string }
interface Case {
  name: string; image: string; numCrops: number; imageSize: [number, number]; hc: number; wc: number; numImgTokens: number;
  transposed: boolean; hdSha256: string; cropSums: [number, number][][]; globalSamples: Entry; hdFile?: string;
}
interface Fixtures { mean: number[]; std: number[]; samplePositions: Entry; cases: Case[] }

const fx = JSON.parse(readFileSync(join(DIR, "cases.json"), "utf8")) as Fixtures;
const blob = new Uint8Array(readFileSync(join(DIR, "cases.bin")));
const f32 = (e: Entry): Float32Array => (assert.equal(e.dtype, "float32"), new Float32Array(blob.slice(e.offset, e.offset + e.count * 4).buffer));
const i32 = (e: Entry): Int32Array => (assert.equal(e.dtype, "int32"), new Int32Array(blob.slice(e.offset, e.offset + e.count * 4).buffer));
const file = (dir: string, name: string): Uint8Array => new Uint8Array(readFileSync(join(dir, name)));
const pre = (numCrops: number) => parsePhi3VPreprocess({ num_crops: numCrops, image_mean: fx.mean, image_std: fx.std, do_convert_rgb: true });
const image = (source: unknown, numCrops?: number): MediaRef => ({ kind: "image", source, options: numCrops === undefined ? {} : { numCrops } });

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => gpu?.destroy());


const payloadOf = (m: PreparedMedia): Phi3VImagePayload => {
  assert.ok(isPhi3VPayload(m.payload), "a phi3_v payload");
  return m.payload;
};

async function rowsOf(m: PreparedMedia): Promise<Float32Array> {
  const p = payloadOf(m).patchRows;
  return p instanceof Float32Array ? p : readF32(gpu, p);
}

/** GPU items against CPU items of the same refs: device, sizes, tokens, patch rows bit for bit. */
async function assertSameMedia(onGpu: PreparedMedia[], onCpu: PreparedMedia[], names: string[]): Promise<void> {
  assert.equal(onGpu.length, onCpu.length);
  for (const [i, m] of onGpu.entries()) {
    const g = payloadOf(m);
    const c = payloadOf(onCpu[i]);
    assert.equal(m.device, "gpu", `${names[i]}: prepared on the GPU`);
    assert.ok(isTensor(g.patchRows), `${names[i]}: patch rows stay on the GPU`);
    assert.equal(onCpu[i].device, "cpu");
    assert.deepEqual([g.height, g.width, g.hc, g.wc, g.numImgTokens, m.tokens, m.kind], [c.height, c.width, c.hc, c.wc, c.numImgTokens, onCpu[i].tokens, "image"], names[i]);
    assert.deepEqual((g.patchRows as Tensor).shape, [(1 + c.hc * c.wc) * 576, 588], `${names[i]}: tensor shape`);
    assertSameBits(await rowsOf(m), c.patchRows as Float32Array, `${names[i]} patch rows`);
  }
}

async function imageSize(bytes: Uint8Array): Promise<[number, number]> {
  const img = await loadImage(bytes);
  return [img.width, img.height];
}

/** The HD image [3, H, W] and the global view [3, 336, 336] whose patch rows `rows` are (phi3vPatchRows' inverse). */
function unpatch(rows: Float32Array, hc: number, wc: number): { hd: Float32Array; global: Float32Array } {
  const H = hc * 336;
  const W = wc * 336;
  const hd = new Float32Array(3 * H * W);
  const global = new Float32Array(3 * 336 * 336);
  for (let t = 0; t <= hc * wc; t++) {
    const [out, width, height, top, left] = t === 0 ? [global, 336, 336, 0, 0] : [hd, W, H, Math.floor((t - 1) / wc) * 336, ((t - 1) % wc) * 336];
    for (let r = 0; r < 576; r++) {
      for (let k = 0; k < 588; k++) {
        const ch = Math.floor(k / 196);
        const y = top + Math.floor(r / 24) * 14 + Math.floor((k % 196) / 14);
        const x = left + (r % 24) * 14 + (k % 14);
        out[(ch * height + y) * width + x] = rows[(t * 576 + r) * 588 + k];
      }
    }
  }
  return { hd, global };
}

/** The uint8 HD image behind a normalized [3, H, W] tensor (the normalize table is strictly increasing per channel). */
function denormalize(chw: Float32Array, H: number, W: number, lut: Float32Array): Uint8Array {
  const inverse = Array.from({ length: 3 }, (_, c) => new Map(Array.from({ length: 256 }, (_, x) => [lut[c * 256 + x], x] as const)));
  const out = new Uint8Array(H * W * 3);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < H * W; i++) {
      const x = inverse[c].get(chw[c * H * W + i]);
      assert.ok(x !== undefined, `value ${chw[c * H * W + i]} at (${c}, ${i}) is not a normalized byte`);
      out[i * 3 + c] = x;
    }
  }
  return out;
}

test("fixture images at every num_crops case: GPU patch rows equal the CPU path's, bit for bit; the GPU's HD image and global view equal the PIL/numpy reference", async (t) => {
  const positions = i32(fx.samplePositions);
  const n = positions.length / 2;
  const lut = normalizeTable(3, { mean: fx.mean, std: fx.std });
  const seen = new Set<string>();
  // One processor per path; each case's num_crops comes with the request.
  const procGpu = new Phi3VProcessor({ imageTokenId: 32044, preprocess: pre(4) }, () => gpu);
  const procCpu = new Phi3VProcessor({ imageTokenId: 32044, preprocess: pre(4) });
  for (const c of fx.cases) {
    const bytes = file(DIR, c.image);
    // The processor's GPU path against its CPU path.
    const onGpu = await procGpu.prepare([image(bytes, c.numCrops)]);
    const onCpu = await procCpu.prepare([image(bytes, c.numCrops)]);
    await assertSameMedia(onGpu, onCpu, [c.name]);
    const p = payloadOf(onGpu[0]);
    assert.deepEqual([p.height, p.width, p.hc, p.wc, p.numImgTokens], [...c.imageSize, c.hc, c.wc, c.numImgTokens], c.name);
    // The GPU's HD image and global view, put back together from its patch rows: Pillow's uint8
    // image, numpy/torch's values.
    const [H, W] = c.imageSize;
    assert.equal(phi3vHdGeometry(...(await imageSize(bytes)), c.numCrops).transposed, c.transposed);
    const { hd, global } = unpatch(await rowsOf(onGpu[0]), c.hc, c.wc);
    onGpu[0].release?.();
    const hd8 = denormalize(hd, H, W, lut);
    assert.equal(createHash("sha256").update(hd8).digest("hex"), c.hdSha256, `${c.name}: the GPU's uint8 HD image is Pillow's (bilinear, white padding)`);
    if (c.hdFile) assert.deepEqual(hd8, new Uint8Array(gunzipSync(readFileSync(join(DIR, c.hdFile)))), `${c.name}: whole HD image`);
    let worst = 0;
    const want = f32(c.globalSamples);
    for (let ch = 0; ch < 3; ch++) {
      for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(global[(ch * 336 + positions[2 * i]) * 336 + positions[2 * i + 1]] - want[ch * n + i]));
    }
    assert.ok(worst <= 1e-6, `${c.name} global view samples: max abs error ${worst} vs numpy/torch`);
    seen.add(`${c.transposed ? "portrait" : "landscape"} ${c.hc}x${c.wc}`);
  }
  procGpu.dispose();
  t.diagnostic(`${fx.cases.length} cases; grids ${[...seen].join(", ")}`);
});

/** A PNG of seeded noise (or a ramp), RGB or RGBA. */
function png(w: number, h: number, seed: number, channels: 3 | 4 = 3): Uint8Array {
  return encodePng({ width: w, height: h, data: lcgImage(w, h, channels, seed, seed % 2 ? "noise" : "ramp"), channels, depth: 8 });
}

test("odd sizes, extreme aspect ratios, copy passes, alpha and EXIF images in one request: GPU equals CPU bit for bit", async (t) => {
  const cases: { name: string; source: Uint8Array; numCrops?: number }[] = [
    { name: "1x1", source: png(1, 1, 3) },
    { name: "333x1 (extreme wide)", source: png(333, 1, 5), numCrops: 4 },
    { name: "3x700 (extreme tall, 6 crops)", source: png(3, 700, 7), numCrops: 6 },
    { name: "200x336 portrait: the height pass is a copy", source: png(200, 336, 9), numCrops: 1 },
    { name: "336x200: the width pass is skipped", source: png(336, 200, 11), numCrops: 1 },
    { name: "337x601 odd portrait, 9 crops", source: png(337, 601, 13), numCrops: 9 },
    { name: "517x83 odd landscape, 7 crops", source: png(517, 83, 2), numCrops: 7 },
    { name: "RGBA 61x47 (alpha dropped)", source: png(61, 47, 15, 4), numCrops: 2 },
    { name: "alpha_90x70.png", source: file(FIXTURES, "alpha_90x70.png") },
    { name: "orient6 JPEG (EXIF not applied)", source: file(join(FIXTURES, "exif"), "orient6_9x6.jpg"), numCrops: 3 },
    { name: "gray.jpg", source: file(FIXTURES, "gray.jpg"), numCrops: 1 },
  ];
  const refs = cases.map((c) => image(c.source, c.numCrops));
  const opts = pre(4);
  const proc = new Phi3VProcessor({ imageTokenId: 7, preprocess: opts }, () => gpu);
  const onGpu = await proc.prepare(refs);
  const onCpu = await new Phi3VProcessor({ imageTokenId: 7, preprocess: opts }).prepare(refs);
  await assertSameMedia(onGpu, onCpu, cases.map((c) => c.name));
  // The geometry cases are what their names say.
  assert.ok(phi3vHdGeometry(3, 700, 6).transposed && phi3vHdGeometry(200, 336, 1).resizedWidth === 336 && phi3vHdGeometry(336, 200, 1).resizedWidth === 336);
  assert.deepEqual(proc.placeholders(onGpu), [{ tokenId: 7, counts: onCpu.map((m) => m.tokens), kind: "image" }]);
  for (const m of onGpu) m.release?.();
  proc.dispose();
  t.diagnostic(onGpu.map((m, i) => `${cases[i].name}: ${payloadOf(m).hc}x${payloadOf(m).wc}`).join("; "));
});

test("an item past the device's binding limit falls back to the CPU path with the same values; others stay on the GPU", async () => {
  // 64 KiB: a 1x1-crop image's HD tensor (1.35 MB) does not fit; the 1x1 source alone would, but not its rows.
  const small = { ...gpu, limits: { ...gpu.limits, maxStorageBufferBindingSize: 64 * 1024 } } as GpuContext;
  const bytes = file(DIR, "wide_120x50.png");
  const [m] = await new Phi3VProcessor({ imageTokenId: 7, preprocess: pre(4) }, () => small).prepare([image(bytes)]);
  assert.equal(m.device, "cpu");
  assert.equal(m.release, undefined);
  const [cpu] = await new Phi3VProcessor({ imageTokenId: 7, preprocess: pre(4) }).prepare([image(bytes)]);
  assertSameBits(payloadOf(m).patchRows as Float32Array, payloadOf(cpu).patchRows as Float32Array, "fallback");
  assert.equal(m.hash, cpu.hash);
  // A device whose limit holds one 4-crop image but not a 16-crop one: per item.
  const mid = { ...gpu, limits: { ...gpu.limits, maxStorageBufferBindingSize: 8 * 1024 * 1024 } } as GpuContext;
  const proc = new Phi3VProcessor({ imageTokenId: 7, preprocess: pre(4) }, () => mid);
  const items = await proc.prepare([image(bytes, 4), image(bytes, 16)]);
  assert.deepEqual(items.map((x) => x.device), ["gpu", "cpu"]);
  const cpuItems = await new Phi3VProcessor({ imageTokenId: 7, preprocess: pre(4) }).prepare([image(bytes, 4), image(bytes, 16)]);
  for (const [i, x] of items.entries()) assertSameBits(await rowsOf(x), payloadOf(cpuItems[i]).patchRows as Float32Array, `item ${i}`);
  for (const x of items) x.release?.();
  proc.dispose();
});

test("GPU items: equal pixels give equal keys, release is idempotent and frees the rows; a failing item releases the earlier ones", async () => {
  const proc = new Phi3VProcessor({ imageTokenId: 7, preprocess: pre(4) }, () => gpu);
  const tiny = file(DIR, "tiny_40x30.png");
  const [a, b, c] = await proc.prepare([image(tiny), image(tiny, 1), image(tiny)]);
  assert.equal(a.hash, c.hash, "same image, same key");
  assert.notEqual(a.hash, b.hash, "other num_crops, other key");
  for (const m of [a, b, c]) {
    m.release?.();
    m.release?.();
  }
  // A later item that fails to decode: the error is typed and no buffer of the request stays live
  // (the first item's GPU rows are released with the rest).
  const live = new Set<GPUBuffer>();
  const pool = gpu.pool;
  const { acquire, release } = pool;
  pool.acquire = (bytes, label, forUpload) => {
    const buf = acquire.call(pool, bytes, label, forUpload);
    live.add(buf);
    return buf;
  };
  pool.release = (buf) => {
    live.delete(buf);
    release.call(pool, buf);
  };
  try {
    await assert.rejects(proc.prepare([image(tiny), image(new Uint8Array([1, 2, 3, 4]))]), (e: unknown) => e instanceof WebvlmError && e.code !== "internal");
  } finally {
    pool.acquire = acquire;
    pool.release = release;
  }
  assert.equal(live.size, 0, "buffers left live after a failed request");
  proc.dispose();
});
