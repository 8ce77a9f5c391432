// Qwen2-VL patch layout (transformers Qwen2VLImageProcessor._preprocess):
//   patches.reshape(gt, tps, C, gh/m, m, ps, gw/m, m, ps)
//          .transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
//          .reshape(gt*gh*gw, C*tps*ps*ps)
// Rows: merge windows row-major, then the m*m patches inside a window
// row-major, so m*m consecutive rows form one LLM token. Columns: (c, frame, py, px).
import { WebvlmError } from "../../api/errors.ts";

export interface PatchifyOptions {
  patchSize?: number;
  temporalPatchSize?: number;
  mergeSize?: number;
  channels?: number;
}

export interface Patches {
  /** [t*h*w rows, channels*temporalPatchSize*patchSize^2 columns], row-major */
  pixelValues: Float32Array;
  /** grid_thw: (frames / temporalPatchSize, height / patchSize, width / patchSize) */
  grid: [number, number, number];
}

/**
 * `frames` are planar CHW float32 images (normalizeRgb8ToChw's output), all
 * `height` x `width`. A frame count that is not a multiple of the temporal
 * patch size is padded by repeating the last frame (a still image -> 2 frames).
 */
export function patchify(
  frames: readonly Float32Array[], height: number, width: number, opts: PatchifyOptions = {},
): Patches {
  const ps = opts.patchSize ?? 14;
  const tps = opts.temporalPatchSize ?? 2;
  const m = opts.mergeSize ?? 2;
  const C = opts.channels ?? 3;
  if (frames.length === 0) throw new WebvlmError("bad_request", "patchify: no frames");
  if (height % (ps * m) !== 0 || width % (ps * m) !== 0) {
    throw new WebvlmError("shape_mismatch", `patchify: ${width}x${height} is not a multiple of ${ps * m}`);
  }
  const plane = height * width;
  for (const f of frames) {
    if (f.length !== C * plane) {
      throw new WebvlmError("shape_mismatch", `patchify: frame has ${f.length} values, expected ${C * plane}`);
    }
  }
  const padded = frames.slice();
  while (padded.length % tps !== 0) padded.push(frames[frames.length - 1]);

  const gt = padded.length / tps;
  const gh = height / ps;
  const gw = width / ps;
  const cols = C * tps * ps * ps;
  const out = new Float32Array(gt * gh * gw * cols);
  let o = 0;
  for (let t = 0; t < gt; t++) {
    for (let bh = 0; bh < gh / m; bh++) {
      for (let bw = 0; bw < gw / m; bw++) {
        for (let mh = 0; mh < m; mh++) {
          for (let mw = 0; mw < m; mw++) {
            const y0 = (bh * m + mh) * ps;
            const x0 = (bw * m + mw) * ps;
            for (let c = 0; c < C; c++) {
              for (let f = 0; f < tps; f++) {
                const src = padded[t * tps + f];
                for (let py = 0; py < ps; py++) {
                  const row = c * plane + (y0 + py) * width + x0;
                  for (let px = 0; px < ps; px++) out[o++] = src[row + px];
                }
              }
            }
          }
        }
      }
    }
  }
  return { pixelValues: out, grid: [gt, gh, gw] };
}
