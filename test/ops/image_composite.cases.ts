// GPU alpha compositing (ops/image_composite.ts) against the CPU port of Pillow's
// alpha_composite (vision/alpha.ts): every byte equal, every alpha value 0..255 covered.
import { Recorder } from "../../src/gpu/recorder.ts";
import { compositeImage } from "../../src/ops/image_composite.ts";
import { compositeOverBackground } from "../../src/vision/alpha.ts";
import { releaseImage, uploadImage8 } from "../../src/vision/gpu_image.ts";
import type { KernelCase } from "../util/cases.ts";
import { firstDiff, noiseImage, readRgb } from "./image_resample.cases.ts";

const backgrounds: [number, number, number][] = [[255, 255, 255], [0, 0, 0], [17, 200, 93]];

export const cases: KernelCase[] = backgrounds.map((bg, i) => ({
  name: `rgba over (${bg.join(", ")})`,
  async run(gpu) {
    const w = 64;
    const h = 33;
    const rgba = noiseImage(w, h, 4, 300 + i);
    // Every alpha value appears (the first 256 pixels), the rest is noise.
    for (let p = 0; p < 256; p++) rgba[p * 4 + 3] = p;
    const rgb = new Uint8Array(w * h * 3);
    const alpha = new Uint8Array(w * h);
    for (let p = 0; p < w * h; p++) {
      rgb.set(rgba.subarray(p * 4, p * 4 + 3), p * 3);
      alpha[p] = rgba[p * 4 + 3];
    }
    const want = compositeOverBackground(rgb, alpha, bg);
    const src = uploadImage8(gpu, rgba, w, h, 4, true);
    const rec = new Recorder(gpu);
    const out = compositeImage(rec, src, bg);
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
