// The GPU resize (ops/image_resample.ts) against the CPU port of Pillow (vision/resize.ts, itself
// checked byte for byte against Pillow in test/vision/resize_pillow.test.ts): every output byte
// equal, for both filters, up and down, odd sizes, extreme aspect ratios, boxes, crops, copies,
// and RGB8 / padded RGBA8 sources.
import { Recorder } from "../../src/gpu/recorder.ts";
import { readBytes } from "../../src/gpu/transfer.ts";
import { resizeImage } from "../../src/ops/image_resample.ts";
import { releaseImage, uploadImage8, type GpuImage } from "../../src/vision/gpu_image.ts";
import { resize8, type ResampleFilter, type ResizeBox } from "../../src/vision/resize.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import type { KernelCase } from "../util/cases.ts";

/** Noise with hard 0/255 edges (bicubic overshoots there, so clipping is exercised). */
export function noiseImage(w: number, h: number, c: number, seed: number): Uint8Array {
  const out = new Uint8Array(w * h * c);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const a = s >>> 24;
    out[i] = a < 40 ? 0 : a >= 216 ? 255 : (Math.imul(s, 2654435761) >>> 24);
  }
  return out;
}

/** A GPU image's RGB bytes, row padding and the 4th channel dropped. */
export async function readRgb(gpu: GpuContext, img: GpuImage): Promise<Uint8Array> {
  const raw = new Uint8Array(await readBytes(gpu, img.buffer, 0, Math.ceil((img.rowBytes * img.height) / 4) * 4));
  const out = new Uint8Array(img.width * img.height * 3);
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const p = y * img.rowBytes + x * img.channels;
      out.set(raw.subarray(p, p + 3), (y * img.width + x) * 3);
    }
  }
  return out;
}

export function firstDiff(got: Uint8Array, want: Uint8Array): string | null {
  if (got.length !== want.length) return `length ${got.length} vs ${want.length}`;
  let n = 0;
  let first = -1;
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      n++;
    }
  }
  return n ? `${n} bytes differ, first at ${first}: ${got[first]} vs ${want[first]}` : null;
}

interface Shape { w: number; h: number; nw: number; nh: number; filter: ResampleFilter; box?: ResizeBox; rgba?: boolean }

const shapes: Shape[] = [
  { w: 64, h: 48, nw: 28, nh: 28, filter: "bicubic" },
  { w: 37, h: 23, nw: 113, nh: 71, filter: "bicubic" },
  { w: 37, h: 23, nw: 113, nh: 71, filter: "bilinear" },
  { w: 640, h: 480, nw: 448, nh: 336, filter: "bicubic" },
  { w: 333, h: 251, nw: 980, nh: 739, filter: "bilinear" },
  { w: 1, h: 1, nw: 5, nh: 3, filter: "bicubic" },
  { w: 500, h: 7, nw: 28, nh: 56, filter: "bicubic" },
  { w: 9, h: 700, nw: 56, nh: 1372, filter: "bilinear" },
  { w: 64, h: 48, nw: 64, nh: 20, filter: "bicubic" },
  { w: 64, h: 48, nw: 21, nh: 48, filter: "bilinear" },
  { w: 64, h: 48, nw: 64, nh: 48, filter: "bicubic" },
  { w: 64, h: 48, nw: 30, nh: 20, filter: "bicubic", box: [10, 5, 40, 25] },
  { w: 64, h: 48, nw: 50, nh: 40, filter: "bilinear", box: [3.5, 1.25, 60.75, 47] },
  { w: 101, h: 67, nw: 60, nh: 33, filter: "bicubic", rgba: true },
  { w: 255, h: 3, nw: 17, nh: 9, filter: "bilinear", rgba: true },
];

export const cases: KernelCase[] = shapes.map((s, i) => ({
  name: `${s.filter} ${s.w}x${s.h}${s.rgba ? " rgba" : ""} -> ${s.nw}x${s.nh}${s.box ? ` box ${s.box.join(",")}` : ""}`,
  async run(gpu) {
    const rgb = noiseImage(s.w, s.h, 3, 1000 + i);
    const want = resize8(rgb, s.w, s.h, s.nw, s.nh, 3, { filter: s.filter, box: s.box });
    let src: GpuImage;
    if (s.rgba) {
      // A 4-channel source whose 4th byte is noise: it must not leak into RGB.
      const rgba = noiseImage(s.w, s.h, 4, 7 + i);
      for (let p = 0; p < s.w * s.h; p++) rgba.set(rgb.subarray(p * 3, p * 3 + 3), p * 4);
      src = uploadImage8(gpu, rgba, s.w, s.h, 4);
    } else {
      src = uploadImage8(gpu, rgb, s.w, s.h, 3);
    }
    const rec = new Recorder(gpu);
    const out = resizeImage(rec, src, s.nw, s.nh, { filter: s.filter, box: s.box });
    rec.submit();
    const got = await readRgb(gpu, out);
    releaseImage(gpu, src);
    releaseImage(gpu, out);
    const d = firstDiff(got, want);
    if (d) throw new Error(d);
    return `${want.length} bytes identical`;
  },
}));

/** Every case also runs in Chromium (they are fast, and preprocessing must match the CPU path there too). */
export const browserEvery = 1;
