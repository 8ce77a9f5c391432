// Transparent pixels over an opaque background colour, bit-exact with Pillow's
// Image.alpha_composite(Image.new("RGBA", size, background), image.convert("RGBA")) followed by
// convert("RGB") (libImaging/AlphaComposite.c: 7 extra bits of precision, divisions by 255 done
// as shift-adds with rounding). transformers' Mllama/Idefics2 convert_to_rgb does exactly this
// with white, where PIL's plain convert("RGB") would keep the colour under a transparent pixel.
import { WebvlmError } from "../api/errors.ts";

const PRECISION_BITS = 7;

/** Pillow's SHIFTFORDIV255: x / 255 for the ranges AlphaComposite.c uses it on. */
const shiftForDiv255 = (x: number): number => (((x >>> 8) + x) >>> 8);

/**
 * RGB8 pixels with a per-pixel alpha (0..255) -> RGB8 over an opaque `background` RGB colour.
 * `alpha[i]` belongs to pixel i (rgb[3i..3i+2]). Returns a new array.
 */
export function compositeOverBackground(rgb: Uint8Array, alpha: Uint8Array, background: readonly [number, number, number]): Uint8Array {
  const n = alpha.length;
  if (rgb.length !== n * 3) throw new WebvlmError("shape_mismatch", `alpha composite: ${rgb.length} RGB bytes for ${n} alpha values`);
  if (!background.every((v) => Number.isInteger(v) && v >= 0 && v <= 255)) {
    throw new WebvlmError("bad_request", `alpha composite: background ${JSON.stringify(background)} is not three integers in 0..255`);
  }
  const out = new Uint8Array(rgb.length);
  const one = 1 << PRECISION_BITS;
  for (let i = 0; i < n; i++) {
    const a = alpha[i];
    const o = i * 3;
    if (a === 0) {
      out[o] = background[0];
      out[o + 1] = background[1];
      out[o + 2] = background[2];
      continue;
    }
    // The destination (background) is opaque: dst.a = 255.
    const blend = 255 * (255 - a);
    const outA255 = a * 255 + blend;
    const coef1 = Math.floor((a * 255 * 255 * one) / outA255);
    const coef2 = 255 * one - coef1;
    for (let c = 0; c < 3; c++) {
      const tmp = rgb[o + c] * coef1 + background[c] * coef2;
      out[o + c] = shiftForDiv255(tmp + (0x80 << PRECISION_BITS)) >>> PRECISION_BITS;
    }
  }
  return out;
}
