// GPU normalize + patchify (ops/image_patches.ts, ops/chw_patches.ts) against the CPU path:
// Qwen2-VL's layout against patchify(normalize8ToChw(...)) (the processor's own functions), and
// the padded-region layouts the other families cut (tiles, crops) against plain loops over a
// padded copy of the image. Values must be bit-identical.
import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { chwPatches } from "../../src/ops/chw_patches.ts";
import { imagePatches, imageToChw, uploadNormalizeTable } from "../../src/ops/image_patches.ts";
import { patchify } from "../../src/models/qwen2_vl/patchify.ts";
import { releaseImage, uploadImage8, type GpuImage } from "../../src/vision/gpu_image.ts";
import { normalize8ToChw, type NormalizeOptions } from "../../src/vision/normalize.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import type { KernelCase } from "../util/cases.ts";
import { noiseImage } from "./image_resample.cases.ts";

const SIGLIP: NormalizeOptions = { mean: 0.5, std: 0.5 };

function sameBits(got: Float32Array, want: Float32Array): string {
  if (got.length !== want.length) throw new Error(`length ${got.length} vs ${want.length}`);
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) throw new Error(`value ${i}: ${got[i]} vs ${want[i]}`);
  return `${got.length} values bit-identical`;
}

/** The w x h region at (x0, y0) of an RGB8 image, pixels outside it set to `pad`. */
function paddedRegion(rgb: Uint8Array, w: number, h: number, x0: number, y0: number, rw: number, rh: number, pad: readonly number[]): Uint8Array {
  const out = new Uint8Array(rw * rh * 3);
  for (let y = 0; y < rh; y++) {
    for (let x = 0; x < rw; x++) {
      const sx = x0 + x;
      const sy = y0 + y;
      const inside = sx >= 0 && sy >= 0 && sx < w && sy < h;
      for (let c = 0; c < 3; c++) out[(y * rw + x) * 3 + c] = inside ? rgb[(sy * w + sx) * 3 + c] : pad[c];
    }
  }
  return out;
}

/** Row-major patch rows (c, py, px) of a planar CHW image. */
function rowMajorPatches(chw: Float32Array, w: number, h: number, p: number): Float32Array {
  const gw = w / p;
  const gh = h / p;
  const out = new Float32Array(gw * gh * 3 * p * p);
  let o = 0;
  for (let r = 0; r < gh; r++) {
    for (let q = 0; q < gw; q++) {
      for (let c = 0; c < 3; c++) for (let y = 0; y < p; y++) for (let x = 0; x < p; x++) out[o++] = chw[c * w * h + (r * p + y) * w + q * p + x];
    }
  }
  return out;
}

async function run(gpu: GpuContext, build: (rec: Recorder) => Tensor, release: (GpuImage | Tensor)[]): Promise<Float32Array> {
  const rec = new Recorder(gpu);
  const out = build(rec);
  rec.submit();
  const got = await readF32(gpu, out);
  for (const t of [...release, out]) gpu.pool.release(t.buffer);
  return got;
}

const qwen = [
  { w: 56, h: 28, frames: 1, norm: {} as NormalizeOptions },
  { w: 84, h: 112, frames: 2, norm: {} },
  { w: 140, h: 56, frames: 2, norm: SIGLIP, rgba: true },
];

const regions = [
  // Phi-3.5-vision: white padding centred around a resized image (negative origin).
  { w: 50, h: 30, x0: 0, y0: -9, rw: 56, rh: 56, p: 14, pad: [255, 255, 255], norm: {} as NormalizeOptions },
  // Llama 3.2 Vision: a tile of a zero-padded canvas, partly past the image's right/bottom edge.
  { w: 45, h: 33, x0: 28, y0: 28, rw: 28, rh: 28, p: 7, pad: [0, 0, 0], norm: {} },
  // Idefics2: a crop inside the image, SigLIP's mean/std.
  { w: 61, h: 47, x0: 30, y0: 23, rw: 28, rh: 14, p: 14, pad: [0, 0, 0], norm: SIGLIP },
];

export const cases: KernelCase[] = [
  ...qwen.map((s, i) => ({
    name: `qwen2-vl layout ${s.w}x${s.h}, ${s.frames} frame(s)${s.rgba ? ", rgba source" : ""}`,
    async run(gpu: GpuContext) {
      const rgbs = Array.from({ length: s.frames }, (_, f) => noiseImage(s.w, s.h, 3, 40 + i * 2 + f));
      const want = patchify(rgbs.map((rgb) => normalize8ToChw(rgb, s.w, s.h, 3, s.norm)), s.h, s.w, { patchSize: 14, temporalPatchSize: 2, mergeSize: 2 }).pixelValues;
      const frames = rgbs.map((rgb) => {
        if (!s.rgba) return uploadImage8(gpu, rgb, s.w, s.h, 3);
        const rgba = new Uint8Array(s.w * s.h * 4).fill(9);
        for (let p = 0; p < s.w * s.h; p++) rgba.set(rgb.subarray(p * 3, p * 3 + 3), p * 4);
        return uploadImage8(gpu, rgba, s.w, s.h, 4);
      });
      const table = uploadNormalizeTable(gpu, s.norm);
      // A still image is its own temporal pair: the same frame twice.
      const pair = frames.length === 1 ? [frames[0], frames[0]] : frames;
      const got = await run(gpu, (rec) => imagePatches(rec, pair, table, { patchSize: 14, gridW: s.w / 14, gridH: s.h / 14, mergeSize: 2 }), [...frames, table]);
      return sameBits(got, want);
    },
  })),
  ...regions.map((s, i) => ({
    name: `padded region ${s.rw}x${s.rh} at (${s.x0}, ${s.y0}) of ${s.w}x${s.h}, patch ${s.p}`,
    async run(gpu: GpuContext) {
      const rgb = noiseImage(s.w, s.h, 3, 70 + i);
      const chw = normalize8ToChw(paddedRegion(rgb, s.w, s.h, s.x0, s.y0, s.rw, s.rh, s.pad), s.rw, s.rh, 3, s.norm);
      const img = uploadImage8(gpu, rgb, s.w, s.h, 3);
      const table = uploadNormalizeTable(gpu, s.norm);
      const pad = s.pad as [number, number, number];
      // Written at a row offset into a larger tensor, as a family concatenates its tiles.
      const rows = (s.rw / s.p) * (s.rh / s.p);
      const cols = 3 * s.p * s.p;
      const big = uploadTensor(gpu, new Float32Array((rows + 3) * cols).fill(-7), [rows + 3, cols], "f32");
      const patches = await run(gpu, (rec) => imagePatches(rec, [img], table, { patchSize: s.p, gridW: s.rw / s.p, gridH: s.rh / s.p, x0: s.x0, y0: s.y0, pad }, { out: big, rowOffset: 2 }), []);
      const planar = await run(gpu, (rec) => imageToChw(rec, img, table, { x0: s.x0, y0: s.y0, width: s.rw, height: s.rh, pad }), [img, table]);
      const rowsWant = rowMajorPatches(chw, s.rw, s.rh, s.p);
      for (const k of [...patches.subarray(0, 2 * cols), ...patches.subarray((rows + 2) * cols)]) if (k !== -7) throw new Error("wrote outside its rows");
      sameBits(planar, chw);
      return sameBits(patches.subarray(2 * cols, (rows + 2) * cols), rowsWant);
    },
  })),
  {
    name: "chw patches of an f32 image, grid at an offset",
    async run(gpu: GpuContext) {
      const w = 70;
      const h = 42;
      const chw = Float32Array.from({ length: 3 * w * h }, (_, i) => Math.sin(i) * 3);
      const t = uploadTensor(gpu, chw, [3, h, w], "f32");
      const got = await run(gpu, (rec) => chwPatches(rec, t, { patchSize: 14, gridW: 4, gridH: 2, x0: 14, y0: 14 }), [t]);
      const region = new Float32Array(3 * 56 * 28);
      for (let c = 0; c < 3; c++) for (let y = 0; y < 28; y++) for (let x = 0; x < 56; x++) region[c * 56 * 28 + y * 56 + x] = chw[c * w * h + (14 + y) * w + 14 + x];
      return sameBits(got, rowMajorPatches(region, 56, 28, 14));
    },
  },
];

/** Every case also runs in Chromium (they are fast, and preprocessing must match the CPU path there too). */
export const browserEvery = 1;
