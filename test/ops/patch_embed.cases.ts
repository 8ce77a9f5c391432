import { Recorder } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import { linear, linearKernel } from "../../src/ops/linear.ts";
import type { Weight, WeightFormat } from "../../src/quant/formats.ts";
import { roundTripValues, uploadWeight, weightTensors } from "../../src/quant/pack.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, randomArray } from "../util/compare.ts";

// Qwen2-VL patch embedding: Conv3d(3 -> C, kernel = stride = (2, 14, 14), no bias) equals a
// linear layer on 1176-wide patch rows (channel, frame, py, px) with the kernel reshaped to
// [C, 1176]. f32 accumulation over 1176 terms vs an f64 reference: tolerance 1e-10.
const TOL = 1e-10;
const C_IN = 3;
const TPS = 2; // temporal_patch_size
const P = 14; // patch_size
const C_OUT = 48;
// Frames x height x width of the clip; the patch grid (4 x 6) is even so 2x2 merge windows exist.
const T = 2;
const H = 56;
const W = 84;
const GT = T / TPS;
const GH = H / P;
const GW = W / P;
const ROW = C_IN * TPS * P * P; // 1176

/** numpy-style transpose of a row-major array of `shape` by `perm`. */
function transpose(src: Float32Array, shape: number[], perm: number[]): Float32Array {
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const outShape = perm.map((p) => shape[p]);
  const out = new Float32Array(src.length);
  const idx = new Array<number>(outShape.length).fill(0);
  for (let o = 0; o < out.length; o++) {
    let s = 0;
    for (let d = 0; d < idx.length; d++) s += idx[d] * strides[perm[d]];
    out[o] = src[s];
    for (let d = idx.length - 1; d >= 0; d--) {
      if (++idx[d] < outShape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

/** Patch rows from frames [T, C, H, W], as QWEN2VL.md's numpy form (reshape, transpose, reshape). */
function patchify(frames: Float32Array): Float32Array {
  const shape = [GT, TPS, C_IN, GH / 2, 2, P, GW / 2, 2, P];
  return transpose(frames, shape, [0, 3, 6, 4, 7, 2, 1, 5, 8]);
}

/** Direct Conv3d on the clip, output rows in merge-window order: [GT*GH*GW, C_OUT], f64. */
function conv3dReference(frames: Float32Array, weight: Float32Array): Float64Array {
  const out = new Float64Array(GT * GH * GW * C_OUT);
  for (let tp = 0; tp < GT; tp++) {
    for (let hp = 0; hp < GH; hp++) {
      for (let wp = 0; wp < GW; wp++) {
        // Window (hp/2, wp/2) row-major, then the 4 patches inside it row-major.
        const window = Math.floor(hp / 2) * (GW / 2) + Math.floor(wp / 2);
        const row = tp * GH * GW + window * 4 + (hp % 2) * 2 + (wp % 2);
        for (let o = 0; o < C_OUT; o++) {
          let s = 0;
          for (let c = 0; c < C_IN; c++) {
            for (let t = 0; t < TPS; t++) {
              for (let y = 0; y < P; y++) {
                for (let x = 0; x < P; x++) {
                  const pixel = frames[(((tp * TPS + t) * C_IN + c) * H + hp * P + y) * W + wp * P + x];
                  s += pixel * weight[(((o * C_IN + c) * TPS + t) * P + y) * P + x];
                }
              }
            }
          }
          out[row * C_OUT + o] = s;
        }
      }
    }
  }
  return out;
}

function patchEmbedCase(format: WeightFormat): KernelCase {
  return {
    name: `patch_embed conv3d as linear ${format} [${C_IN}, ${T}, ${H}, ${W}] -> ${C_OUT}`,
    async run(gpu) {
      const frames = randomArray(T * C_IN * H * W, 70, -2, 2); // normalized pixels, [T, C, H, W]
      const kernel = randomArray(C_OUT * ROW, 71, -0.05, 0.05); // [C_OUT, 3, 2, 14, 14]
      const rows = patchify(frames);
      const M = GT * GH * GW;
      const w = uploadWeight(gpu, kernel, C_OUT, ROW, format) as Weight; // the reshape to [C, 1176] is free
      const x = uploadTensor(gpu, rows, [M, ROW], "f32");
      const rec = new Recorder(gpu);
      const y = linear(rec, x, w);
      // One patch row alone (row 5, a 1176-float = 4704-byte offset is not bindable: copy it).
      const one = uploadTensor(gpu, rows.subarray(5 * ROW, 6 * ROW), [1, ROW], "f32");
      const y1 = linear(rec, one, w);
      rec.submit();
      const got = await readF32(gpu, y);
      const got1 = await readF32(gpu, y1);
      for (const t of [x, y, one, y1, ...weightTensors(w)]) gpu.pool.release(t.buffer);

      const ref = conv3dReference(frames, roundTripValues(kernel, C_OUT, ROW, format));
      const e = expectClose(`patch embed ${format}`, got, ref, TOL);
      const e1 = expectClose(`patch embed ${format} row 5`, got1, ref.subarray(5 * C_OUT, 6 * C_OUT), TOL);
      return `${linearKernel(M, w)} nmse=${e.toExponential(2)}; single row ${linearKernel(1, w)} nmse=${e1.toExponential(2)}`;
    },
  };
}

export const cases: KernelCase[] = [patchEmbedCase("f32"), patchEmbedCase("f16")];
