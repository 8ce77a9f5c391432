// EXIF orientation, as PIL's ImageOps.exif_transpose applies it (transformers' load_image calls
// it before convert("RGB")): tag 0x0112 of IFD0, from a JPEG's first "Exif" APP1 segment, a PNG's
// eXIf chunk or a WebP's EXIF chunk; 2..8 map to a flip/rotate, anything else (absent, 1,
// unreadable EXIF) leaves the image as it is. XMP-only orientation (tiff:Orientation) is not read.
// The browser decoder also uses scanExifOrientation/withoutExifOrientation to stop the browser
// from orienting by itself (decode_browser.ts), so both platforms give the same pixels.
import type { DecodedImage } from "./decode_node.ts";

const ORIENTATION_TAG = 0x0112;

/** Where an IFD0 orientation entry's value sits, so a copy of the bytes can be rewritten to 1. */
export interface OrientationField {
  at: number;
  size: 2 | 4;
  little: boolean;
  value: number;
  /** PNG: the eXIf chunk's type+data range, whose CRC (stored at `end`) must follow the rewrite. */
  crc?: { start: number; end: number };
}

/**
 * What a scan of encoded bytes found. `orientation` is what PIL uses (the first EXIF block's
 * tag, else 1); `fields` are the orientation entries of every EXIF block seen (a JPEG may have
 * several APP1s and a browser need not read the same one as PIL); `decided` is false when
 * the bytes ran out before the container said there is no more EXIF (a Blob's head).
 */
export interface ExifScan {
  orientation: number;
  fields: OrientationField[];
  decided: boolean;
}

/** The orientation entry of a TIFF block ("II"/"MM" header), or null when absent or malformed. */
function tiffField(b: Uint8Array, start: number, end: number): OrientationField | null {
  if (end - start < 8) return null;
  const little = b[start] === 0x49 && b[start + 1] === 0x49;
  const big = b[start] === 0x4d && b[start + 1] === 0x4d;
  if (!little && !big) return null;
  const u16 = (o: number) => (little ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]);
  const u32 = (o: number) => (little ? (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 2 ** 24 : b[o] * 2 ** 24 + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]));
  if (u16(start + 2) !== 42) return null;
  const ifd = start + u32(start + 4);
  if (ifd + 2 > end) return null;
  const count = u16(ifd);
  for (let i = 0; i < count; i++) {
    const e = ifd + 2 + i * 12;
    if (e + 12 > end) return null;
    if (u16(e) !== ORIENTATION_TAG) continue;
    const type = u16(e + 2);
    if (u32(e + 4) !== 1) return null;
    // SHORT (3) sits in the value field's first two bytes; LONG (4) fills it.
    if (type === 3) return { at: e + 8, size: 2, little, value: u16(e + 8) };
    if (type === 4) return { at: e + 8, size: 4, little, value: u32(e + 8) };
    return null;
  }
  return null;
}

/** Offset past an "Exif\0\0" prefix (PIL's Exif.load strips it when present). */
function skipExifPrefix(b: Uint8Array, start: number, end: number): number {
  const prefixed = end - start >= 6 && b[start] === 0x45 && b[start + 1] === 0x78 && b[start + 2] === 0x69 && b[start + 3] === 0x66 && b[start + 4] === 0 && b[start + 5] === 0;
  return prefixed ? start + 6 : start;
}

/** A scan that found (at most) one EXIF block. */
function single(field: OrientationField | null, decided: boolean): ExifScan {
  return { orientation: field?.value ?? 1, fields: field ? [field] : [], decided };
}

function jpegScan(b: Uint8Array): ExifScan {
  const fields: OrientationField[] = [];
  let orientation: number | undefined;
  const done = (decided: boolean): ExifScan => ({ orientation: orientation ?? 1, fields, decided });
  let o = 2;
  while (o + 4 <= b.length) {
    if (b[o] !== 0xff) return done(true);
    const marker = b[o + 1];
    if (marker === 0xff) { o++; continue; } // fill byte
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { o += 2; continue; }
    if (marker === 0xda || marker === 0xd9) return done(true); // scan data: no more header segments
    const len = (b[o + 2] << 8) | b[o + 3];
    const start = o + 4;
    const end = Math.min(o + 2 + len, b.length);
    // PIL keeps the first APP1 that starts with "Exif\0"; later ones are collected for rewriting only.
    if (marker === 0xe1 && end - start >= 6 && b[start] === 0x45 && b[start + 1] === 0x78 && b[start + 2] === 0x69 && b[start + 3] === 0x66 && b[start + 4] === 0) {
      const f = tiffField(b, start + 6, end);
      if (f) fields.push(f);
      orientation ??= f?.value ?? 1;
    }
    if (o + 2 + len > b.length) return done(false);
    o += 2 + len;
  }
  return done(false);
}

function fourcc(b: Uint8Array, o: number): string {
  return String.fromCharCode(b[o], b[o + 1], b[o + 2], b[o + 3]);
}

function pngScan(b: Uint8Array): ExifScan {
  let o = 8;
  while (o + 12 <= b.length) {
    const len = ((b[o] << 24) >>> 0) + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]);
    const type = fourcc(b, o + 4);
    const start = o + 8;
    const end = Math.min(start + len, b.length);
    if (type === "eXIf") {
      const whole = start + len + 4 <= b.length; // data and CRC
      const f = tiffField(b, skipExifPrefix(b, start, end), end);
      return single(f && whole ? { ...f, crc: { start: o + 4, end: start + len } } : f, whole);
    }
    if (type === "IEND") return single(null, true);
    o = start + len + 4;
  }
  return single(null, false);
}

let crcTable: Uint32Array | undefined;

/** CRC-32 as PNG uses it (ISO 3309), over b[start, end). */
function crc32(b: Uint8Array, start: number, end: number): number {
  const table = (crcTable ??= Uint32Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  }));
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = table[(c ^ b[i]) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const readU32BE = (b: Uint8Array, o: number) => ((b[o] << 24) >>> 0) + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]);

function webpScan(b: Uint8Array): ExifScan {
  let o = 12;
  while (o + 8 <= b.length) {
    const len = b[o + 4] | (b[o + 5] << 8) | (b[o + 6] << 16) | (b[o + 7] * 2 ** 24);
    const start = o + 8;
    const end = Math.min(start + len, b.length);
    if (fourcc(b, o) === "EXIF") return single(tiffField(b, skipExifPrefix(b, start, end), end), start + len <= b.length);
    o = start + len + (len & 1);
  }
  return single(null, false);
}

/**
 * The EXIF orientation of JPEG, PNG or WebP bytes (or their head) and where its entries are.
 * Other formats: orientation 1, decided.
 */
export function scanExifOrientation(bytes: Uint8Array): ExifScan {
  const b = bytes;
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) return jpegScan(b);
  if (b.length >= 8 && b[0] === 0x89 && fourcc(b, 1) === "PNG\r") return pngScan(b);
  if (b.length >= 12 && fourcc(b, 0) === "RIFF" && fourcc(b, 8) === "WEBP") return webpScan(b);
  // A head too short to tell the format is undecided; anything longer is not an EXIF carrier.
  return single(null, b.length >= 12);
}

/** The EXIF orientation (1..8) of encoded JPEG, PNG or WebP bytes; 1 when there is none. */
export function exifOrientation(bytes: Uint8Array): number {
  return scanExifOrientation(bytes).orientation;
}

/**
 * A copy of `bytes` whose orientation entries (from scanExifOrientation) all read 1, or
 * `bytes` itself when none needs it. Browsers apply EXIF orientation while decoding
 * (Chromium for JPEG and PNG, whatever imageOrientation says) and not for every format, so
 * the browser decoder hands them neutral bytes and orients the pixels itself, as Node does.
 */
export function withoutExifOrientation(bytes: Uint8Array, fields: readonly OrientationField[]): Uint8Array {
  const todo = fields.filter((f) => f.value !== 1 && f.at + f.size <= bytes.length);
  if (todo.length === 0) return bytes;
  const out = bytes.slice();
  for (const f of todo) {
    // A PNG chunk's CRC is refreshed only when it was right (a broken file stays broken).
    const crcOk = f.crc !== undefined && f.crc.end + 4 <= out.length && crc32(out, f.crc.start, f.crc.end) === readU32BE(out, f.crc.end);
    out.fill(0, f.at, f.at + f.size);
    out[f.little ? f.at : f.at + f.size - 1] = 1;
    if (f.crc && crcOk) {
      const c = crc32(out, f.crc.start, f.crc.end);
      out.set([c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255, c & 255], f.crc.end);
    }
  }
  return out;
}

/**
 * The image as PIL's exif_transpose leaves it for `orientation`: 2 FLIP_LEFT_RIGHT,
 * 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90
 * (PIL's rotations are counter-clockwise); other values return the image unchanged.
 * An alpha plane (DecodedImage.alpha), when present, moves with the pixels.
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
  const alpha = img.alpha;
  const outAlpha = alpha ? new Uint8Array(alpha.length) : undefined;
  for (let y = 0, o = 0, p = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++, o += 3, p++) {
      const i = source(x, y);
      const s = i * 3;
      out[o] = rgb[s];
      out[o + 1] = rgb[s + 1];
      out[o + 2] = rgb[s + 2];
      if (outAlpha) outAlpha[p] = (alpha as Uint8Array)[i];
    }
  }
  return outAlpha ? { rgb: out, width: ow, height: oh, alpha: outAlpha } : { rgb: out, width: ow, height: oh };
}
