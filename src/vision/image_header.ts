// Image dimensions read from the first bytes of a file, before any decoding, so a
// small file that declares a huge canvas (a decompression bomb) is refused without
// allocating its pixels. Platform-neutral: used by the Node and the browser paths.
import { WebvlmError } from "../api/errors.ts";

export type ImageFormat = "png" | "jpeg" | "gif" | "webp" | "bmp";

/**
 * Default pixel limit (width * height) for one image: PIL's Image.MAX_IMAGE_PIXELS * 2,
 * above which PIL raises DecompressionBombError. Raise it per call with
 * loadImage(..., { maxPixels }) / decodeImageNode(bytes, { maxPixels }).
 */
export const MAX_DECODE_PIXELS = 2 * 89478485;

export interface ImageHeader {
  format: ImageFormat;
  width: number;
  height: number;
}

export function sniffImageFormat(b: Uint8Array): ImageFormat | null {
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return "png";
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  if (b.length >= 6 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x38) return "gif";
  const tag = (o: number) => String.fromCharCode(b[o], b[o + 1], b[o + 2], b[o + 3]);
  if (b.length >= 12 && tag(0) === "RIFF" && tag(8) === "WEBP") return "webp";
  if (b.length >= 26 && b[0] === 0x42 && b[1] === 0x4d) return "bmp";
  return null;
}

const be16 = (b: Uint8Array, o: number) => (b[o] << 8) | b[o + 1];
const le16 = (b: Uint8Array, o: number) => b[o] | (b[o + 1] << 8);
const be32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
const le32 = (b: Uint8Array, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;

function pngSize(b: Uint8Array): [number, number] | null {
  // Signature, then the IHDR chunk: length, "IHDR", width, height (big-endian).
  if (b.length < 24 || String.fromCharCode(b[12], b[13], b[14], b[15]) !== "IHDR") return null;
  return [be32(b, 16), be32(b, 20)];
}

function jpegSize(b: Uint8Array): [number, number] | null {
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) return null;
    const m = b[p + 1];
    if (m === 0xff) { p++; continue; } // fill byte
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) { p += 2; continue; } // no length
    if (m === 0xda || m === 0xd9) return null; // scan / end before any frame header
    const len = be16(b, p + 2);
    // SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC): precision, height, width.
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      if (p + 9 > b.length) return null;
      return [be16(b, p + 7), be16(b, p + 5)];
    }
    p += 2 + len;
  }
  return null;
}

function webpSize(b: Uint8Array): [number, number] | null {
  if (b.length < 30) return null;
  const chunk = String.fromCharCode(b[12], b[13], b[14], b[15]);
  const d = 20;
  if (chunk === "VP8 ") {
    // frame tag (3 bytes), start code 9d 01 2a, then 14-bit width and height.
    if (b[d + 3] !== 0x9d || b[d + 4] !== 0x01 || b[d + 5] !== 0x2a) return null;
    return [le16(b, d + 6) & 0x3fff, le16(b, d + 8) & 0x3fff];
  }
  if (chunk === "VP8L") {
    if (b[d] !== 0x2f) return null;
    const bits = le32(b, d + 1);
    return [(bits & 0x3fff) + 1, ((bits >>> 14) & 0x3fff) + 1];
  }
  if (chunk === "VP8X") {
    const w = b[d + 4] | (b[d + 5] << 8) | (b[d + 6] << 16);
    const h = b[d + 7] | (b[d + 8] << 8) | (b[d + 9] << 16);
    return [w + 1, h + 1];
  }
  return null;
}

function gifSize(b: Uint8Array): [number, number] | null {
  if (b.length < 13) return null;
  let width = le16(b, 6);
  let height = le16(b, 8);
  // The first frame may lie outside the logical screen; the decoder grows the canvas to it.
  let p = 13;
  if (b[10] & 0x80) p += 3 << ((b[10] & 7) + 1);
  while (p < b.length) {
    const tag = b[p];
    if (tag === 0x21) {
      p += 2;
      while (p < b.length && b[p] !== 0) p += 1 + b[p];
      p++;
    } else if (tag === 0x2c) {
      if (p + 9 > b.length) break;
      width = Math.max(width, le16(b, p + 1) + le16(b, p + 5));
      height = Math.max(height, le16(b, p + 3) + le16(b, p + 7));
      break;
    } else {
      break;
    }
  }
  return [width, height];
}

function bmpSize(b: Uint8Array): [number, number] | null {
  const dib = le32(b, 14);
  if (dib === 12) return [le16(b, 18), le16(b, 20)]; // BITMAPCOREHEADER
  if (dib < 40) return null;
  const h = le32(b, 22) | 0; // negative = top-down rows
  return [le32(b, 18) | 0, Math.abs(h)];
}

/** Format and declared size, or null when the bytes are no known format or too short to tell. */
export function readImageHeader(b: Uint8Array): ImageHeader | null {
  const format = sniffImageFormat(b);
  if (!format) return null;
  const size =
    format === "png" ? pngSize(b)
    : format === "jpeg" ? jpegSize(b)
    : format === "webp" ? webpSize(b)
    : format === "gif" ? gifSize(b)
    : bmpSize(b);
  return size ? { format, width: size[0], height: size[1] } : null;
}

/** Throws limit_exceeded when width*height is over maxPixels; names the image, its size and the limit. */
export function checkPixelLimit(
  width: number, height: number, maxPixels: number = MAX_DECODE_PIXELS, label = "the image",
): void {
  if (width * height > maxPixels) {
    throw new WebvlmError(
      "limit_exceeded",
      `${label} is ${width}x${height} (${width * height} pixels), over the limit of ${maxPixels} pixels; ` +
        `downscale it, or raise the limit with the maxPixels option of loadImage`,
      { width, height, pixels: width * height, limit: maxPixels },
    );
  }
}

/**
 * Reads the declared size from the header and refuses the image before any decode if
 * it is over maxPixels. Returns the header (null when it cannot be read: the decoder
 * then reports the problem, and checks the decoded size against the same limit).
 */
export function precheckImage(bytes: Uint8Array, maxPixels: number = MAX_DECODE_PIXELS, label = "the image"): ImageHeader | null {
  const h = readImageHeader(bytes);
  if (h) checkPixelLimit(h.width, h.height, maxPixels, label);
  return h;
}
