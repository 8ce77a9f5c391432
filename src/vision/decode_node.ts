// Image bytes -> RGB8 in Node, matching PIL's `Image.open(f).convert("RGB")`
// (what transformers feeds the Qwen2-VL processor):
//   PNG  fast-png; 16-bit samples keep their high byte (PIL's ";16B" rawmodes),
//        except 16-bit grayscale, which PIL opens as mode "I" and clips to 255;
//        1/2/4-bit gray scales to 0..255; palette looked up; alpha dropped.
//   JPEG @jsquash/jpeg (mozjpeg = libjpeg-turbo's decoder in wasm: ISLOW IDCT,
//        fancy upsampling), bit-identical to PIL's libjpeg-turbo; EXIF
//        orientation is not applied (PIL's open() does not either). jpeg-js
//        was measured off by up to 140 levels on 4:2:0 files. 4-component
//        (CMYK/YCCK) JPEGs, which this build of mozjpeg cannot turn into RGBA,
//        go through jpeg_cmyk.ts (see there for the CMYK->RGB rule).
//   GIF  gifuct-js, first frame, PIL's rules: canvas = logical screen grown to
//        the frame, filled with the transparent index (else 0); every index,
//        transparent or not, is looked up in the palette.
//   WebP @jsquash/webp (libwebp in wasm).
// The two wasm codecs are compiled from the packages' .wasm files on first use.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { decode as decodePngRaw } from "fast-png";
import { decompressFrame, parseGIF } from "gifuct-js";
import decodeJpegRaw, { init as initJpeg } from "@jsquash/jpeg/decode.js";
import decodeWebpRaw, { init as initWebp } from "@jsquash/webp/decode.js";
import { WebvlmError } from "../api/errors.ts";
import { MAX_DECODE_PIXELS, checkPixelLimit, precheckImage, sniffImageFormat, type ImageFormat } from "./image_header.ts";
import { decodeJpeg4, jpegComponentCount } from "./jpeg_cmyk.ts";

export { MAX_DECODE_PIXELS, sniffImageFormat, type ImageFormat };

/** Per-call decode options. */
export interface DecodeOptions {
  /** Pixel limit (width * height); default MAX_DECODE_PIXELS (PIL's bomb limit, ~179 MP). */
  maxPixels?: number;
  /** How errors name the input ("image 2", a path or URL); default "image". */
  label?: string;
  /**
   * Also return the image's alpha (DecodedImage.alpha) when it has transparency: an alpha
   * channel, a PNG palette or 8-bit colour key (tRNS), a GIF transparent index, WebP alpha.
   */
  keepAlpha?: boolean;
}

export interface DecodedImage {
  /** RGB8, interleaved, row-major */
  rgb: Uint8Array;
  width: number;
  height: number;
  /** Per-pixel alpha (PIL's convert("RGBA")), only with DecodeOptions.keepAlpha and when some pixel is not opaque. */
  alpha?: Uint8Array;
}

/** The decoded image with its alpha attached when asked for and not all opaque. */
function withAlpha(img: DecodedImage, alpha: Uint8Array | null, opts: DecodeOptions): DecodedImage {
  return opts.keepAlpha && alpha !== null && alpha.some((a) => a !== 255) ? { ...img, alpha } : img;
}

// Last line a wasm codec printed to stderr (libjpeg/libwebp say why they failed
// there and throw a bare object).
let codecMessage = "";

/** A decoder's message made readable: no dangling ":" when the library gave no detail. */
function tidy(msg: string): string {
  return msg.trim().replace(/[\s:;,-]+$/, "");
}

function fail(format: string, cause: unknown, label = "image"): WebvlmError {
  if (cause instanceof WebvlmError) return cause;
  let msg = tidy(cause instanceof Error ? cause.message : codecMessage || "");
  const extra = tidy(codecMessage);
  if (extra && cause instanceof Error && extra !== msg) msg = msg ? `${msg} (${extra})` : extra;
  codecMessage = "";
  if (!msg) msg = "decoder error";
  if (format === "png" && /decompress|inflate|unexpected end|truncat|outside the bounds|out of range/i.test(msg)) msg += " (the file is truncated or corrupt)";
  return new WebvlmError("image_decode_failed", `cannot decode ${label} as ${format.toUpperCase()}: ${msg}`, { format, image: label });
}

function checkSize(width: number, height: number, opts: DecodeOptions = {}): void {
  if (!(width > 0 && height > 0)) throw new Error(`bad size ${width}x${height}`);
  checkPixelLimit(width, height, opts.maxPixels ?? MAX_DECODE_PIXELS, opts.label ?? "image");
}

// ---------------------------------------------------------------- PNG
export function decodePng(bytes: Uint8Array, opts: DecodeOptions = {}): DecodedImage {
  try {
    precheckImage(bytes, opts.maxPixels, opts.label);
    const png = decodePngRaw(bytes, { checkCrc: true });
    const { width, height, depth, channels, data, palette } = png;
    checkSize(width, height, opts);
    const n = width * height;
    const rgb = new Uint8Array(n * 3);
    const alpha = opts.keepAlpha ? pngAlpha(png, n) : null;
    if (depth < 8) {
      // Sub-byte samples are packed MSB first; each row starts on a byte.
      const rowBytes = Math.ceil((width * depth) / 8);
      if (data.length < rowBytes * height) throw new Error("truncated image data");
      const mask = (1 << depth) - 1;
      const scale = 255 / mask;
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const bit = x * depth;
          const v = (data[y * rowBytes + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
          writeIndexedOrGray(rgb, (y * width + x) * 3, v, palette, scale);
          if (alpha && palette) alpha[y * width + x] = palette[v]?.[3] ?? 255;
        }
      }
      return withAlpha({ rgb, width, height }, alpha, opts);
    }
    if (data.length < n * channels) throw new Error("truncated image data");
    // 16-bit: keep the high byte; gray16 is mode "I" in PIL and clips instead.
    const gray16 = depth === 16 && channels <= 2 && !palette;
    for (let i = 0; i < n; i++) {
      const s = i * channels;
      const o = i * 3;
      if (channels >= 3) {
        for (let c = 0; c < 3; c++) rgb[o + c] = depth === 16 ? data[s + c] >> 8 : data[s + c];
      } else if (gray16 && channels === 1) {
        const v = Math.min(data[s], 255);
        rgb[o] = rgb[o + 1] = rgb[o + 2] = v;
      } else {
        const v = depth === 16 ? data[s] >> 8 : data[s];
        writeIndexedOrGray(rgb, o, v, palette, 1);
        if (alpha && palette) alpha[i] = palette[v]?.[3] ?? 255;
      }
    }
    if (alpha && depth === 8 && !palette && (channels === 1 || channels === 3) && png.transparency?.length === channels) {
      // An 8-bit colour key: pixels equal to it are transparent (PIL's convert_transparent).
      const key = png.transparency;
      for (let i = 0; i < n; i++) {
        if (rgb[i * 3] === key[0] && (channels === 1 || (rgb[i * 3 + 1] === key[1] && rgb[i * 3 + 2] === key[2]))) alpha[i] = 0;
      }
    }
    return withAlpha({ rgb, width, height }, alpha, opts);
  } catch (e) {
    throw fail("png", e, opts.label);
  }
}

/** Alpha of a PNG with an alpha channel (high byte of 16-bit samples); 255 elsewhere, filled in by the caller. */
function pngAlpha(png: { data: ArrayLike<number>; channels: number; depth: number }, n: number): Uint8Array {
  const alpha = new Uint8Array(n).fill(255);
  const { data, channels, depth } = png;
  if ((channels === 2 || channels === 4) && data.length >= n * channels) {
    for (let i = 0; i < n; i++) alpha[i] = depth === 16 ? data[i * channels + channels - 1] >> 8 : data[i * channels + channels - 1];
  }
  return alpha;
}

function writeIndexedOrGray(
  rgb: Uint8Array, o: number, v: number, palette: number[][] | undefined, scale: number,
): void {
  if (palette) {
    const p = palette[v];
    rgb[o] = p ? p[0] : 0;
    rgb[o + 1] = p ? p[1] : 0;
    rgb[o + 2] = p ? p[2] : 0;
  } else {
    const g = Math.round(v * scale);
    rgb[o] = rgb[o + 1] = rgb[o + 2] = g;
  }
}

// ---------------------------------------------------------------- GIF
// gifuct-js zero-fills a cut-off frame; PIL raises "image file is truncated".
// Walk the blocks up to the end of the first image's data to tell.
function assertFirstGifFrameComplete(b: Uint8Array): void {
  const need = (p: number) => { if (p > b.length) throw new Error("image file is truncated"); };
  const subBlocks = (p: number) => {
    for (;;) {
      need(p + 1);
      const n = b[p];
      p += 1 + n;
      if (n === 0) return p;
    }
  };
  let p = 13;
  need(p);
  if (b[10] & 0x80) p += 3 << ((b[10] & 7) + 1);
  for (;;) {
    need(p + 1);
    const tag = b[p];
    if (tag === 0x21) {
      p = subBlocks(p + 2);
    } else if (tag === 0x2c) {
      need(p + 10);
      const flags = b[p + 9];
      p += 10;
      if (flags & 0x80) p += 3 << ((flags & 7) + 1);
      subBlocks(p + 1); // after the LZW minimum code size
      return;
    } else {
      throw new Error(`unexpected GIF block 0x${tag.toString(16)}`);
    }
  }
}

export function decodeGif(bytes: Uint8Array, opts: DecodeOptions = {}): DecodedImage {
  try {
    precheckImage(bytes, opts.maxPixels, opts.label);
    assertFirstGifFrameComplete(bytes);
    const copy = bytes.slice().buffer;
    const gif = parseGIF(copy);
    const first = gif.frames.find((f) => "image" in f);
    if (!first || !("image" in first)) throw new Error("no image frame");
    const fr = decompressFrame(first, gif.gct, false);
    const { left, top, width: fw, height: fh } = fr.dims;
    if (fr.pixels.length !== fw * fh) throw new Error("truncated image data");
    const width = Math.max(gif.lsd.width, left + fw);
    const height = Math.max(gif.lsd.height, top + fh);
    checkSize(width, height, opts);
    const table = fr.colorTable;
    const hasPalette = Array.isArray(table) && table.length > 0;
    const fill = fr.transparentIndex ?? 0;
    const idx = new Uint8Array(width * height).fill(fill);
    for (let y = 0; y < fh; y++) {
      for (let x = 0; x < fw; x++) idx[(top + y) * width + left + x] = fr.pixels[y * fw + x];
    }
    const rgb = new Uint8Array(width * height * 3);
    for (let i = 0; i < idx.length; i++) {
      const v = idx[i];
      const p = hasPalette ? table[v] : undefined;
      // No palette at all: PIL opens the frame as mode "L" (index = gray).
      rgb[i * 3] = p ? p[0] : hasPalette ? 0 : v;
      rgb[i * 3 + 1] = p ? p[1] : hasPalette ? 0 : v;
      rgb[i * 3 + 2] = p ? p[2] : hasPalette ? 0 : v;
    }
    let alpha: Uint8Array | null = null;
    if (opts.keepAlpha && hasPalette && fr.transparentIndex !== undefined && fr.transparentIndex !== null) {
      alpha = new Uint8Array(idx.length);
      for (let i = 0; i < idx.length; i++) alpha[i] = idx[i] === fr.transparentIndex ? 0 : 255;
    }
    return withAlpha({ rgb, width, height }, alpha, opts);
  } catch (e) {
    throw fail("gif", e, opts.label);
  }
}

// ---------------------------------------------------------------- JPEG, WebP (wasm)
interface CodecOptions {
  print: (s: string) => void;
  printErr: (s: string) => void;
}
type WasmInit = (m: WebAssembly.Module, opts: CodecOptions) => Promise<void>;
const JPEG_WASM = "@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm";
const WEBP_WASM = "@jsquash/webp/codec/dec/webp_dec.wasm";
// The packages' .d.ts omit init's (module, options) overload.
const initJpegModule = initJpeg as unknown as WasmInit;
const initWebpModule = initWebp as unknown as WasmInit;
const codecOptions: CodecOptions = {
  print: () => {},
  printErr: (s) => { codecMessage = s; },
};
const wasmReady = new Map<string, Promise<void>>();

function loadWasm(wasmPath: string, init: WasmInit): Promise<void> {
  let p = wasmReady.get(wasmPath);
  if (!p) {
    p = (async () => {
      // Node's fetch cannot read file: URLs, so hand the codec a compiled module.
      const file = createRequire(import.meta.url).resolve(wasmPath);
      await init(await WebAssembly.compile(readFileSync(file)), codecOptions);
    })();
    p.catch(() => wasmReady.delete(wasmPath)); // let a later call retry
    wasmReady.set(wasmPath, p);
  }
  return p;
}

function rgbaToRgb(img: { data: Uint8ClampedArray; width: number; height: number }, opts: DecodeOptions): DecodedImage {
  checkSize(img.width, img.height, opts);
  const n = img.width * img.height;
  if (img.data.length !== n * 4) throw new Error("decoder returned a bad buffer");
  const rgb = new Uint8Array(n * 3);
  const alpha = opts.keepAlpha ? new Uint8Array(n) : null;
  for (let i = 0; i < n; i++) {
    rgb[i * 3] = img.data[i * 4];
    rgb[i * 3 + 1] = img.data[i * 4 + 1];
    rgb[i * 3 + 2] = img.data[i * 4 + 2];
    if (alpha) alpha[i] = img.data[i * 4 + 3];
  }
  return withAlpha({ rgb, width: img.width, height: img.height }, alpha, opts);
}

export async function decodeJpeg(bytes: Uint8Array, opts: DecodeOptions = {}): Promise<DecodedImage> {
  try {
    precheckImage(bytes, opts.maxPixels, opts.label);
    if (jpegComponentCount(bytes) === 4) {
      const img = decodeJpeg4(bytes);
      checkSize(img.width, img.height, opts);
      return img;
    }
    await loadWasm(JPEG_WASM, initJpegModule);
    codecMessage = "";
    const img = await decodeJpegRaw(bytes.slice().buffer, { preserveOrientation: false });
    // libjpeg only warns and pads with gray; PIL raises "image file is truncated".
    if (/premature end/i.test(codecMessage)) throw new Error("image file is truncated");
    return rgbaToRgb(img, opts);
  } catch (e) {
    throw fail("jpeg", e, opts.label);
  }
}

export async function decodeWebp(bytes: Uint8Array, opts: DecodeOptions = {}): Promise<DecodedImage> {
  try {
    precheckImage(bytes, opts.maxPixels, opts.label);
    await loadWasm(WEBP_WASM, initWebpModule);
    codecMessage = "";
    return rgbaToRgb(await decodeWebpRaw(bytes.slice().buffer), opts);
  } catch (e) {
    throw fail("webp", e, opts.label);
  }
}

/**
 * Decode PNG/JPEG/GIF (first frame)/WebP bytes to RGB8; alpha is dropped. The size the
 * header declares is checked against opts.maxPixels before anything is decoded.
 */
export async function decodeImageNode(bytes: Uint8Array, opts: DecodeOptions = {}): Promise<DecodedImage> {
  const label = opts.label ?? "image";
  const format = sniffImageFormat(bytes);
  switch (format) {
    case "png": return decodePng(bytes, opts);
    case "jpeg": return decodeJpeg(bytes, opts);
    case "gif": return decodeGif(bytes, opts);
    case "webp": return decodeWebp(bytes, opts);
    case "bmp":
      precheckImage(bytes, opts.maxPixels, label);
      throw new WebvlmError("image_decode_failed", `cannot decode ${label}: BMP is not supported in Node (convert it to PNG)`, { format, image: label });
    default:
      throw new WebvlmError(
        "image_decode_failed",
        `cannot decode ${label}: unrecognized image format (expected PNG, JPEG, GIF or WebP)` +
          (bytes.length === 0 ? "; it is empty" : ""),
        { image: label },
      );
  }
}
