// EXIF orientation, as PIL's ImageOps.exif_transpose applies it (transformers' load_image calls
// it before convert("RGB")): tag 0x0112 of IFD0, from a JPEG's first "Exif" APP1 segment, a PNG's
// eXIf chunk or a WebP's EXIF chunk; 2..8 map to a flip/rotate, anything else (absent, 1,
// unreadable EXIF) leaves the image as it is. XMP-only orientation (tiff:Orientation) is not read.
import type { DecodedImage } from "./decode_node.ts";

const ORIENTATION_TAG = 0x0112;

/** The orientation tag of a TIFF block ("II"/"MM" header), or 1 when absent or malformed. */
function tiffOrientation(b: Uint8Array, start: number, end: number): number {
  if (end - start < 8) return 1;
  const little = b[start] === 0x49 && b[start + 1] === 0x49;
  const big = b[start] === 0x4d && b[start + 1] === 0x4d;
  if (!little && !big) return 1;
  const u16 = (o: number) => (little ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]);
  const u32 = (o: number) => (little ? (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 2 ** 24 : b[o] * 2 ** 24 + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]));
  if (u16(start + 2) !== 42) return 1;
  const ifd = start + u32(start + 4);
  if (ifd + 2 > end) return 1;
  const count = u16(ifd);
  for (let i = 0; i < count; i++) {
    const e = ifd + 2 + i * 12;
    if (e + 12 > end) return 1;
    if (u16(e) !== ORIENTATION_TAG) continue;
    const type = u16(e + 2);
    if (u32(e + 4) !== 1) return 1;
    // SHORT (3) sits in the value field's first two bytes; LONG (4) fills it.
    if (type === 3) return u16(e + 8);
    if (type === 4) return u32(e + 8);
    return 1;
  }
  return 1;
}

/** Offset past an "Exif\0\0" prefix (PIL's Exif.load strips it when present). */
function skipExifPrefix(b: Uint8Array, start: number, end: number): number {
  const prefixed = end - start >= 6 && b[start] === 0x45 && b[start + 1] === 0x78 && b[start + 2] === 0x69 && b[start + 3] === 0x66 && b[start + 4] === 0 && b[start + 5] === 0;
  return prefixed ? start + 6 : start;
}

function jpegOrientation(b: Uint8Array): number {
  let o = 2;
  while (o + 4 <= b.length) {
    if (b[o] !== 0xff) return 1;
    const marker = b[o + 1];
    if (marker === 0xff) { o++; continue; } // fill byte
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { o += 2; continue; }
    if (marker === 0xda || marker === 0xd9) return 1; // scan data: no more header segments
    const len = (b[o + 2] << 8) | b[o + 3];
    const start = o + 4;
    const end = Math.min(o + 2 + len, b.length);
    // PIL keeps the first APP1 that starts with "Exif\0".
    if (marker === 0xe1 && end - start >= 6 && b[start] === 0x45 && b[start + 1] === 0x78 && b[start + 2] === 0x69 && b[start + 3] === 0x66 && b[start + 4] === 0) {
      return tiffOrientation(b, start + 6, end);
    }
    o += 2 + len;
  }
  return 1;
}

function fourcc(b: Uint8Array, o: number): string {
  return String.fromCharCode(b[o], b[o + 1], b[o + 2], b[o + 3]);
}

function pngOrientation(b: Uint8Array): number {
  let o = 8;
  while (o + 12 <= b.length) {
    const len = ((b[o] << 24) >>> 0) + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]);
    const type = fourcc(b, o + 4);
    const start = o + 8;
    const end = Math.min(start + len, b.length);
    if (type === "eXIf") return tiffOrientation(b, skipExifPrefix(b, start, end), end);
    if (type === "IEND") return 1;
    o = start + len + 4;
  }
  return 1;
}

function webpOrientation(b: Uint8Array): number {
  let o = 12;
  while (o + 8 <= b.length) {
    const len = b[o + 4] | (b[o + 5] << 8) | (b[o + 6] << 16) | (b[o + 7] * 2 ** 24);
    const start = o + 8;
    const end = Math.min(start + len, b.length);
    if (fourcc(b, o) === "EXIF") return tiffOrientation(b, skipExifPrefix(b, start, end), end);
    o = start + len + (len & 1);
  }
  return 1;
}

/** The EXIF orientation (1..8) of encoded JPEG, PNG or WebP bytes; 1 when there is none. */
export function exifOrientation(bytes: Uint8Array): number {
  const b = bytes;
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) return jpegOrientation(b);
  if (b.length >= 8 && b[0] === 0x89 && fourcc(b, 1) === "PNG\r") return pngOrientation(b);
  if (b.length >= 12 && fourcc(b, 0) === "RIFF" && fourcc(b, 8) === "WEBP") return webpOrientation(b);
  return 1;
}

/**
 * The image as PIL's exif_transpose leaves it for `orientation`: 2 FLIP_LEFT_RIGHT,
 * 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90
 * (PIL's rotations are counter-clockwise); other values return the image unchanged.
 */
export function applyExifOrientation(img: DecodedImage, orientation: number): DecodedImage {
  if (!Number.isInteger(orientation) || orientation < 2 || orientation > 8) return img;
  const { width: w, height: h, rgb } = img;
  const swap = orientation >= 5;
  const ow = swap ? h : w;
  const oh = swap ? w : h;
  // Source (x, y) of output pixel (x, y), per orientation.
  const source: (x: number, y: number) => number = {
    2: (x: number, y: number) => y * w + (w - 1 - x),
    3: (x: number, y: number) => (h - 1 - y) * w + (w - 1 - x),
    4: (x: number, y: number) => (h - 1 - y) * w + x,
    5: (x: number, y: number) => x * w + y,
    6: (x: number, y: number) => (h - 1 - x) * w + y,
    7: (x: number, y: number) => (h - 1 - x) * w + (w - 1 - y),
    8: (x: number, y: number) => x * w + (w - 1 - y),
  }[orientation] as (x: number, y: number) => number;
  const out = new Uint8Array(rgb.length);
  for (let y = 0, o = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++, o += 3) {
      const s = source(x, y) * 3;
      out[o] = rgb[s];
      out[o + 1] = rgb[s + 1];
      out[o + 2] = rgb[s + 2];
    }
  }
  return { rgb: out, width: ow, height: oh };
}
