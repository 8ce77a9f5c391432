// Turns a request's image sources into RGB8 pixels, in Node or in a browser.
// Node decoders (and node:fs) load through a computed import so browser bundles never include them.
//
// Hostile or careless input is bounded before it costs memory:
//   - encoded bytes: at most maxBytes (DEFAULT_MAX_IMAGE_BYTES = 64 MiB) are read from a
//     file, an HTTP body, a data: URL or a Blob; files and bodies are streamed and the read
//     stops (the body is cancelled) as soon as the limit is passed -> limit_exceeded;
//   - pixels: the size the header declares (PNG, JPEG, WebP, GIF, BMP) is checked against
//     maxPixels (MAX_DECODE_PIXELS, PIL's bomb limit) before any decode -> limit_exceeded;
//   - the request's AbortSignal reaches fetch and file reads, and is checked between the
//     stages (read, header, decode, hand-back) -> aborted.
import { WebvlmError } from "../api/errors.ts";
import { isNode } from "../platform.ts";
import type { DecodedImage } from "./decode_node.ts";
import type * as DecodeNodeModule from "./decode_node.ts";
import { decodeImageBrowser, describeFetchFailure, type BrowserImageInput } from "./decode_browser.ts";
import { compositeOverBackground } from "./alpha.ts";
import { applyExifOrientation, exifOrientation } from "./exif_orientation.ts";
import { MAX_DECODE_PIXELS, precheckImage } from "./image_header.ts";

export { MAX_DECODE_PIXELS };

/** Default limit on an image's encoded size: 64 MiB. Raise it with LoadImageOptions.maxBytes. */
export const DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024;

export interface LoadImageOptions {
  /**
   * Largest encoded image accepted, in bytes (default DEFAULT_MAX_IMAGE_BYTES, 64 MiB).
   * Reading stops once it is passed and the image fails with limit_exceeded.
   */
  maxBytes?: number;
  /**
   * Largest image accepted, in pixels (width * height; default MAX_DECODE_PIXELS, about
   * 179 million, PIL's decompression-bomb limit). Checked on the header before decoding.
   */
  maxPixels?: number;
  /** How error messages name the image, e.g. "image 2"; default: its URL or path, or "image". */
  label?: string;
  /**
   * Apply the EXIF orientation like PIL's ImageOps.exif_transpose (transformers' load_image does;
   * default false: PIL's open() alone does not). The same in Node and browsers for encoded
   * sources (URLs, bytes, Blobs); <img>, canvas, ImageBitmap and ImageData are taken as displayed.
   */
  exifOrientation?: boolean;
  /**
   * Composite transparent images over this opaque RGB colour, as Pillow's alpha_composite over
   * Image.new("RGBA", size, background) then convert("RGB") (transformers' Mllama/Idefics2
   * convert_to_rgb uses white). Default: alpha is dropped, as PIL's convert("RGB").
   */
  alphaBackground?: readonly [number, number, number];
}

const DECODE_NODE = "./decode_node.ts";
const CHUNK = 1 << 20;

async function nodeDecoder(): Promise<typeof DecodeNodeModule> {
  return (await import(/* @vite-ignore */ new URL(DECODE_NODE, import.meta.url).href)) as typeof DecodeNodeModule;
}

/** A request's resolved limits and options (resolveLimits). */
export interface Limits {
  maxBytes: number;
  maxPixels: number;
  label: string;
  exifOrientation: boolean;
  alphaBackground: readonly [number, number, number] | undefined;
}

export function resolveLimits(opts: LoadImageOptions, fallbackLabel: string): Limits {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_IMAGE_BYTES;
  const maxPixels = opts.maxPixels ?? MAX_DECODE_PIXELS;
  if (!(maxBytes > 0) || !(maxPixels > 0)) {
    throw new WebvlmError("bad_request", `bad image limits: maxBytes ${maxBytes}, maxPixels ${maxPixels}`, { maxBytes, maxPixels });
  }
  const bg = opts.alphaBackground;
  if (bg !== undefined && !(Array.isArray(bg) && bg.length === 3 && bg.every((v) => Number.isInteger(v) && v >= 0 && v <= 255))) {
    throw new WebvlmError("bad_request", `bad alphaBackground ${JSON.stringify(bg)}: three integers in 0..255`, { alphaBackground: bg });
  }
  return { maxBytes, maxPixels, label: opts.label ?? fallbackLabel, exifOrientation: opts.exifOrientation ?? false, alphaBackground: bg };
}

function abortError(label: string, stage: string): WebvlmError {
  return new WebvlmError("aborted", `request aborted while ${stage} ${label}`, { image: label, stage });
}

export function checkAbort(signal: AbortSignal | undefined, label: string, stage: string): void {
  if (signal?.aborted) throw abortError(label, stage);
}

/** limit_exceeded for an encoded image over maxBytes; `seen` is how much was read (or declared). */
export function bytesLimitError(label: string, limit: number, seen: number, declared?: number): WebvlmError {
  const mib = (n: number) => (n / (1024 * 1024)).toFixed(n % (1024 * 1024) === 0 ? 0 : 1);
  return new WebvlmError(
    "limit_exceeded",
    `${label} is larger than the image size limit of ${limit} bytes (${mib(limit)} MiB)` +
      (declared !== undefined ? `: it is ${declared} bytes` : `; stopped reading after ${seen} bytes`) +
      `. Raise the limit with the maxBytes option of loadImage if the image is meant to be this large.`,
    { limit, read: seen, ...(declared !== undefined ? { declared } : {}), image: label },
  );
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1 && chunks[0].length === total) return chunks[0];
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

export function decodeDataUrl(url: string, lim: Limits): Uint8Array {
  const comma = url.indexOf(",");
  if (comma < 0) throw new WebvlmError("bad_request", `${lim.label}: malformed data: URL (no comma)`, { image: lim.label });
  const meta = url.slice(5, comma);
  const payloadLength = url.length - comma - 1;
  const base64 = meta.endsWith(";base64");
  const estimate = base64 ? Math.floor((payloadLength * 3) / 4) - 2 : Math.floor(payloadLength / 3);
  if (estimate > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, 0, estimate);
  const payload = url.slice(comma + 1);
  let out: Uint8Array;
  if (base64) {
    try {
      const bin = atob(payload);
      out = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    } catch {
      throw new WebvlmError("image_decode_failed", `${lim.label}: data: URL has invalid base64`, { image: lim.label });
    }
  } else {
    out = new TextEncoder().encode(decodeURIComponent(payload));
  }
  if (out.length > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, out.length, out.length);
  return out;
}

/** Reads an HTTP(S)/blob: URL's body as a stream, cancelling it once it passes maxBytes. */
export async function fetchBytes(url: string, lim: Limits, signal?: AbortSignal): Promise<Uint8Array> {
  checkAbort(signal, lim.label, "fetching");
  let res: Response;
  try {
    res = await fetch(url, { signal });
  } catch (e) {
    if (signal?.aborted) throw abortError(lim.label, "fetching");
    throw describeFetchFailure(e, url, lim.label);
  }
  if (!res.ok) {
    void res.body?.cancel().catch(() => {});
    throw new WebvlmError(res.status === 404 ? "bad_request" : "download_failed", `${lim.label}: HTTP ${res.status} from ${url}`, {
      url,
      status: res.status,
      image: lim.label,
    });
  }
  const declared = Number(res.headers.get("content-length") ?? NaN);
  if (declared > lim.maxBytes) {
    void res.body?.cancel().catch(() => {});
    throw bytesLimitError(lim.label, lim.maxBytes, 0, declared);
  }
  if (!res.body) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw abortError(lim.label, "downloading");
        throw new WebvlmError("download_failed", `${lim.label}: the download of ${url} failed: ${(e as Error).message}`, { url, image: lim.label });
      }
      if (r.done) break;
      total += r.value.length;
      if (total > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, total);
      chunks.push(r.value);
      checkAbort(signal, lim.label, "downloading");
    }
  } catch (e) {
    void reader.cancel().catch(() => {});
    throw e;
  }
  return concat(chunks, total);
}

/** Reads a file in chunks (so /dev/zero or a FIFO cannot grow memory past maxBytes). */
async function readFileBytes(source: string, lim: Limits, signal?: AbortSignal): Promise<Uint8Array> {
  const { open } = (await import(/* @vite-ignore */ "node:fs/promises")) as typeof import("node:fs/promises");
  const path = source.startsWith("file://") ? new URL(source) : source;
  const unreadable = (e: unknown) =>
    new WebvlmError("bad_request", `cannot read image file ${source}: ${(e as Error).message}`, { path: source, image: lim.label });
  checkAbort(signal, lim.label, "reading");
  let fh: import("node:fs/promises").FileHandle;
  try {
    fh = await open(path, "r");
  } catch (e) {
    throw unreadable(e);
  }
  try {
    let size = 0;
    try {
      const st = await fh.stat();
      if (st.isFile()) size = st.size;
    } catch {
      /* size stays unknown */
    }
    if (size > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, 0, size);
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      checkAbort(signal, lim.label, "reading");
      // One byte past the limit tells "exactly maxBytes" from "more".
      const want = Math.min(CHUNK, lim.maxBytes + 1 - total);
      const buf = new Uint8Array(want);
      let n: number;
      try {
        ({ bytesRead: n } = await fh.read(buf, 0, want, null));
      } catch (e) {
        throw unreadable(e);
      }
      if (n === 0) break;
      total += n;
      if (total > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, total);
      chunks.push(n === want ? buf : buf.subarray(0, n));
    }
    return concat(chunks, total);
  } finally {
    await fh.close().catch(() => {});
  }
}

/** The decoded image over lim.alphaBackground when it came with alpha; RGB only either way. */
function flatten(img: DecodedImage, lim: Limits): DecodedImage {
  if (img.alpha === undefined) return img;
  const { alpha, ...rgbOnly } = img;
  return lim.alphaBackground === undefined ? rgbOnly : { ...rgbOnly, rgb: compositeOverBackground(img.rgb, alpha, lim.alphaBackground) };
}

async function decodeBytes(bytes: Uint8Array, lim: Limits, signal?: AbortSignal): Promise<DecodedImage> {
  checkAbort(signal, lim.label, "reading");
  if (bytes.length > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, bytes.length, bytes.length);
  // The declared size, before anything is allocated for pixels.
  precheckImage(bytes, lim.maxPixels, lim.label);
  checkAbort(signal, lim.label, "decoding");
  if (!isNode) {
    const img = await decodeImageBrowser(bytes, {
      maxPixels: lim.maxPixels,
      label: lim.label,
      keepAlpha: lim.alphaBackground !== undefined,
      exifOrientation: lim.exifOrientation,
    });
    checkAbort(signal, lim.label, "decoding");
    return flatten(img, lim);
  }
  const img = flatten(await (await nodeDecoder()).decodeImageNode(bytes, { maxPixels: lim.maxPixels, label: lim.label, keepAlpha: lim.alphaBackground !== undefined }), lim);
  checkAbort(signal, lim.label, "decoding");
  return lim.exifOrientation ? applyExifOrientation(img, exifOrientation(bytes)) : img;
}

/**
 * An image source: a URL string (http(s), data:, blob:, file: or — in Node — a
 * path), raw bytes, or (browser) a Blob/File/ImageBitmap/ImageData/canvas/<img>.
 * `options` bounds what it may cost (see LoadImageOptions); errors are WebvlmErrors
 * whose messages name the image (options.label, else its URL or path).
 */
export async function loadImage(source: unknown, signal?: AbortSignal, options: LoadImageOptions = {}): Promise<DecodedImage> {
  if (typeof source === "string") {
    if (source.startsWith("data:")) {
      const lim = resolveLimits(options, "image (data: URL)");
      checkAbort(signal, lim.label, "reading");
      return decodeBytes(decodeDataUrl(source, lim), lim, signal);
    }
    const lim = resolveLimits(options, `image ${source.length > 200 ? source.slice(0, 200) + "…" : source}`);
    if (/^(https?|blob):/i.test(source)) return decodeBytes(await fetchBytes(source, lim, signal), lim, signal);
    if (isNode) return decodeBytes(await readFileBytes(source, lim, signal), lim, signal);
    return decodeBytes(await fetchBytes(new URL(source, location.href).href, lim, signal), lim, signal);
  }
  const lim = resolveLimits(options, "image");
  checkAbort(signal, lim.label, "reading");
  if (source instanceof Uint8Array) return decodeBytes(source, lim, signal);
  if (source instanceof ArrayBuffer) return decodeBytes(new Uint8Array(source), lim, signal);
  if (!isNode && source !== null && typeof source === "object") {
    if (typeof Blob !== "undefined" && source instanceof Blob && source.size > lim.maxBytes) {
      throw bytesLimitError(lim.label, lim.maxBytes, 0, source.size);
    }
    const img = await decodeImageBrowser(source as BrowserImageInput, {
      maxPixels: lim.maxPixels,
      label: lim.label,
      keepAlpha: lim.alphaBackground !== undefined,
      exifOrientation: lim.exifOrientation,
    });
    checkAbort(signal, lim.label, "decoding");
    return flatten(img, lim);
  }
  throw new WebvlmError(
    "bad_request",
    `unsupported ${lim.label} source: give a URL, a data: URL, bytes, or (in a browser) a Blob/ImageBitmap/canvas`,
    { image: lim.label },
  );
}
