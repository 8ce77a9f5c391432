// Browser image decoding to RGB8 with createImageBitmap + OffscreenCanvas (works in workers).
// Alpha is dropped like PIL's convert("RGB"); but the canvas stores colour premultiplied in 8
// bits, so under alpha < 255 the RGB read back is quantised (measured: up to 127 levels off at
// small alpha, and 0 under alpha 0, where PIL keeps the colour); composited over a background
// the loss mostly vanishes (within 1). gpu_image_browser.ts's texture copy has no such loss.
// The declared size is checked against the pixel limit before the browser decodes
// (header bytes for Blobs/bytes, naturalWidth/width for elements and bitmaps), and the
// browser's raw DOMExceptions (tainted canvas, uncloneable bitmap, failed fetch) become
// WebvlmErrors that name the image and the likely fix.
//
// EXIF orientation: Chromium orients JPEGs and PNGs (eXIf) while decoding, even with
// imageOrientation "none", and leaves WebPs as stored; PIL's open() never orients. So for
// encoded input (bytes, Blob/File) the orientation entries are rewritten to 1 in a copy of
// the head before the browser sees it, and the pixels are oriented here, as in Node, only
// when asked (BrowserDecodeOptions.exifOrientation). Already-decoded inputs (<img>, canvas,
// ImageBitmap, ImageData) carry no EXIF and are taken as displayed (browsers orient <img>).
import { WebvlmError } from "../api/errors.ts";
import type { DecodedImage } from "./decode_node.ts";
import { applyExifOrientation, scanExifOrientation, withoutExifOrientation } from "./exif_orientation.ts";
import { MAX_DECODE_PIXELS, checkPixelLimit, precheckImage } from "./image_header.ts";

/** Anything a page can hand over as an image. */
export type BrowserImageInput =
  | Blob
  | ArrayBuffer
  | Uint8Array
  | ImageBitmap
  | ImageData
  | OffscreenCanvas
  | HTMLCanvasElement
  | HTMLImageElement;

export interface BrowserDecodeOptions {
  /** Pixel limit (width * height); default MAX_DECODE_PIXELS. */
  maxPixels?: number;
  /** How errors name the image ("image 2", a URL); default "image". */
  label?: string;
  /** Also return the alpha (DecodedImage.alpha) when some pixel is not opaque. */
  keepAlpha?: boolean;
  /**
   * For bytes and Blobs: apply the EXIF orientation like PIL's exif_transpose (default false:
   * the pixels as stored, like PIL's open()), whatever the browser would do by itself.
   */
  exifOrientation?: boolean;
}

/** How much of a Blob is read first for its header and EXIF orientation. */
const HEAD_BYTES = 1 << 16;

const CORS_FIX =
  'serve it with an Access-Control-Allow-Origin header that allows this page, and load it with crossorigin="anonymous" ' +
  '(<img crossorigin="anonymous" src=...> or img.crossOrigin = "anonymous" before setting src); ' +
  "or fetch the bytes yourself and pass a Blob";

function errorName(e: unknown): string {
  return e !== null && typeof e === "object" && "name" in e ? String((e as { name: unknown }).name) : "";
}

function errorMessage(e: unknown): string {
  return e instanceof Error || (e !== null && typeof e === "object" && "message" in e)
    ? String((e as { message: unknown }).message)
    : String(e);
}

/**
 * A browser failure while reading an image's pixels or handing it to the worker, as a
 * WebvlmError naming the image and the fix: a tainted canvas (SecurityError) or an
 * uncloneable cross-origin ImageBitmap (DataCloneError) -> bad_request with CORS advice.
 * Anything else -> image_decode_failed. A WebvlmError passes through unchanged.
 */
export function describeBrowserImageError(e: unknown, label = "image"): WebvlmError {
  if (e instanceof WebvlmError) return e;
  const name = errorName(e);
  const msg = errorMessage(e);
  if (name === "SecurityError" || name === "DataCloneError" || /tainted|origin-clean|cross-origin/i.test(msg)) {
    return new WebvlmError(
      "bad_request",
      `${label} is cross-origin and was loaded without CORS, so the browser does not let its pixels be read ` +
        `(${name || "error"}: ${msg}). To fix: ${CORS_FIX}.`,
      { image: label, cause: name || msg, hint: "cors" },
    );
  }
  return new WebvlmError("image_decode_failed", `the browser could not decode ${label}: ${msg || name || "unknown error"}`, { image: label });
}

/**
 * A failed fetch() of an image URL. Browsers report a CORS refusal as a bare
 * "TypeError: Failed to fetch", indistinguishable from a network error, so for a
 * cross-origin URL the message names CORS as the likely cause (bad_request); otherwise
 * download_failed.
 */
export function describeFetchFailure(e: unknown, url: string, label = `image ${url}`, pageOrigin?: string): WebvlmError {
  if (e instanceof WebvlmError) return e;
  const msg = errorMessage(e);
  const origin = pageOrigin ?? (typeof location !== "undefined" && /^https?:$/.test(location.protocol) ? location.origin : undefined);
  let crossOrigin = false;
  try {
    crossOrigin = origin !== undefined && /^https?:/i.test(url) && new URL(url).origin !== origin;
  } catch {
    /* not a URL: leave it same-origin */
  }
  if (crossOrigin) {
    return new WebvlmError(
      "bad_request",
      `could not fetch ${label} (${msg}): it is on another origin than this page (${origin}), and the usual cause is a ` +
        `server that does not send CORS headers; serve it with Access-Control-Allow-Origin allowing ${origin}, ` +
        "or fetch the bytes yourself and pass a Blob",
      { url, image: label, hint: "cors" },
    );
  }
  return new WebvlmError("download_failed", `could not fetch ${label}: ${msg}`, { url, image: label });
}

function rgbaToRgb(rgba: Uint8ClampedArray, width: number, height: number, keepAlpha = false): DecodedImage {
  const rgb = new Uint8Array(width * height * 3);
  let alpha: Uint8Array | undefined;
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgb[i] = rgba[j];
    rgb[i + 1] = rgba[j + 1];
    rgb[i + 2] = rgba[j + 2];
    if (keepAlpha && rgba[j + 3] !== 255) (alpha ??= new Uint8Array(width * height).fill(255))[j >> 2] = rgba[j + 3];
  }
  return alpha ? { rgb, width, height, alpha } : { rgb, width, height };
}

async function toBitmap(input: Exclude<BrowserImageInput, ImageData>, label: string): Promise<ImageBitmap> {
  if (typeof ImageBitmap !== "undefined" && input instanceof ImageBitmap) return input;
  const source: ImageBitmapSource =
    input instanceof ArrayBuffer || input instanceof Uint8Array ? new Blob([input as BlobPart]) : (input as ImageBitmapSource);
  try {
    return await createImageBitmap(source, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  } catch (e) {
    throw describeBrowserImageError(e, label);
  }
}

function isImageData(input: BrowserImageInput): input is ImageData {
  return typeof ImageData !== "undefined" && input instanceof ImageData;
}

/** The size an input declares without decoding it, or null when only decoding can tell. */
export async function declaredSize(input: BrowserImageInput): Promise<[number, number] | null> {
  if (typeof HTMLImageElement !== "undefined" && input instanceof HTMLImageElement) return [input.naturalWidth, input.naturalHeight];
  const wh = input as { width?: unknown; height?: unknown };
  return typeof wh.width === "number" && typeof wh.height === "number" ? [wh.width, wh.height] : null;
}

/**
 * Encoded input as a Blob whose EXIF orientation entries read 1 (so the browser cannot orient
 * it), with its head (for the header check) and the orientation PIL would read. A Blob is read
 * whole only when its first HEAD_BYTES do not settle the orientation (a PNG or WebP whose EXIF
 * comes late, or none); otherwise the rest is sliced on unread.
 */
export async function neutralEncoded(input: Blob | ArrayBuffer | Uint8Array): Promise<{ blob: Blob; head: Uint8Array; orientation: number }> {
  let bytes: Uint8Array;
  let type = "";
  if (input instanceof ArrayBuffer || input instanceof Uint8Array) {
    bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : input;
  } else {
    const head = new Uint8Array(await input.slice(0, HEAD_BYTES).arrayBuffer());
    const scan = scanExifOrientation(head);
    if (scan.decided || head.length >= input.size) {
      const patched = withoutExifOrientation(head, scan.fields);
      const blob = patched === head ? input : new Blob([patched as BlobPart, input.slice(head.length)], { type: input.type });
      return { blob, head, orientation: scan.orientation };
    }
    bytes = new Uint8Array(await input.arrayBuffer());
    type = input.type;
  }
  const scan = scanExifOrientation(bytes);
  return { blob: new Blob([withoutExifOrientation(bytes, scan.fields) as BlobPart], { type }), head: bytes, orientation: scan.orientation };
}

function isEncoded(input: BrowserImageInput): input is Blob | ArrayBuffer | Uint8Array {
  return input instanceof ArrayBuffer || input instanceof Uint8Array || (typeof Blob !== "undefined" && input instanceof Blob);
}

export async function decodeImageBrowser(input: BrowserImageInput, opts: BrowserDecodeOptions = {}): Promise<DecodedImage> {
  const label = opts.label ?? "image";
  const maxPixels = opts.maxPixels ?? MAX_DECODE_PIXELS;
  if (isEncoded(input)) {
    const { blob, head, orientation } = await neutralEncoded(input);
    const h = precheckImage(head, Infinity);
    if (h) checkPixelLimit(h.width, h.height, maxPixels, label);
    const img = await readBitmap(await toBitmap(blob, label), input, label, maxPixels, opts.keepAlpha);
    return opts.exifOrientation ? applyExifOrientation(img, orientation) : img;
  }
  const declared = await declaredSize(input);
  if (declared) checkPixelLimit(declared[0], declared[1], maxPixels, label);
  if (isImageData(input)) return rgbaToRgb(input.data, input.width, input.height, opts.keepAlpha);
  return readBitmap(await toBitmap(input, label), input, label, maxPixels, opts.keepAlpha);
}

/** A bitmap's pixels as RGB8 (closing it unless it is the caller's own input). */
async function readBitmap(bitmap: ImageBitmap, input: BrowserImageInput, label: string, maxPixels: number, keepAlpha?: boolean): Promise<DecodedImage> {
  const { width, height } = bitmap;
  try {
    if (width === 0 || height === 0) throw new WebvlmError("image_decode_failed", `${label} has no pixels`, { image: label });
    checkPixelLimit(width, height, maxPixels, label);
    const canvas = new OffscreenCanvas(width, height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    if (!ctx) throw new WebvlmError("image_decode_failed", `no 2D canvas context to read the pixels of ${label}`, { image: label });
    ctx.drawImage(bitmap, 0, 0);
    let data: Uint8ClampedArray;
    try {
      data = ctx.getImageData(0, 0, width, height).data;
    } catch (e) {
      const img = typeof HTMLImageElement !== "undefined" && input instanceof HTMLImageElement ? input : null;
      throw describeBrowserImageError(e, img ? `${label} (<img src="${img.currentSrc || img.src}">)` : label);
    }
    return rgbaToRgb(data, width, height, keepAlpha);
  } finally {
    if (bitmap !== input) bitmap.close();
  }
}

/**
 * An <img>, canvas or ImageBitmap as an ImageBitmap that can be transferred to the worker.
 * A cross-origin image loaded without CORS gives a tainted bitmap that postMessage refuses
 * with a raw DataCloneError; this checks the bitmap first (reading one pixel) and fails
 * with describeBrowserImageError's bad_request naming the image and the CORS fix instead.
 * For the worker proxy's request conversion (engine/create.ts bitmapsForWorker).
 */
export async function transferableBitmap(
  input: HTMLImageElement | HTMLCanvasElement | OffscreenCanvas | ImageBitmap,
  label = "image",
  maxPixels: number = MAX_DECODE_PIXELS,
): Promise<ImageBitmap> {
  const isImg = typeof HTMLImageElement !== "undefined" && input instanceof HTMLImageElement;
  if (isImg) {
    try {
      await input.decode();
    } catch (e) {
      throw new WebvlmError(
        "image_decode_failed",
        `${label} (<img src="${input.currentSrc || input.src}">) could not be loaded or decoded: ${errorMessage(e)}`,
        { image: label, src: input.currentSrc || input.src },
      );
    }
  }
  const declared = await declaredSize(input);
  if (declared) checkPixelLimit(declared[0], declared[1], maxPixels, label);
  const bitmap = await toBitmap(input, label);
  try {
    const probe = new OffscreenCanvas(1, 1).getContext("2d");
    probe?.drawImage(bitmap, 0, 0, 1, 1, 0, 0, 1, 1);
    probe?.getImageData(0, 0, 1, 1);
  } catch (e) {
    if (bitmap !== input) bitmap.close();
    throw describeBrowserImageError(e, isImg ? `${label} (<img src="${input.currentSrc || input.src}">)` : label);
  }
  return bitmap;
}
