// Turns a request's image sources into RGB8 pixels, in Node or in a browser.
// Node decoders (and node:fs) load through a computed import so browser bundles never include them.
import { WebvlmError } from "../api/errors.ts";
import { isNode } from "../platform.ts";
import type { DecodedImage } from "./decode_node.ts";
import type * as DecodeNodeModule from "./decode_node.ts";
import { decodeImageBrowser, type BrowserImageInput } from "./decode_browser.ts";

const DECODE_NODE = "./decode_node.ts";

async function nodeDecoder(): Promise<typeof DecodeNodeModule> {
  return (await import(/* @vite-ignore */ new URL(DECODE_NODE, import.meta.url).href)) as typeof DecodeNodeModule;
}

function decodeDataUrl(url: string): Uint8Array {
  const comma = url.indexOf(",");
  if (comma < 0) throw new WebvlmError("bad_request", "malformed data: URL (no comma)");
  const meta = url.slice(5, comma);
  const payload = url.slice(comma + 1);
  if (meta.endsWith(";base64")) {
    try {
      const bin = atob(payload);
      const out = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    } catch {
      throw new WebvlmError("image_decode_failed", "data: URL has invalid base64");
    }
  }
  return new TextEncoder().encode(decodeURIComponent(payload));
}

async function fetchBytes(url: string, signal?: AbortSignal): Promise<Uint8Array> {
  let res: Response;
  try {
    res = await fetch(url, { signal });
  } catch (e) {
    if (signal?.aborted) throw new WebvlmError("aborted", "request aborted while fetching an image");
    throw new WebvlmError("download_failed", `could not fetch image ${url}: ${(e as Error).message}`, { url });
  }
  if (!res.ok) {
    throw new WebvlmError(res.status === 404 ? "bad_request" : "download_failed", `image ${url}: HTTP ${res.status}`, {
      url,
      status: res.status,
    });
  }
  return new Uint8Array(await res.arrayBuffer());
}

async function decodeBytes(bytes: Uint8Array): Promise<DecodedImage> {
  if (isNode) return (await nodeDecoder()).decodeImageNode(bytes);
  return decodeImageBrowser(bytes);
}

/**
 * An image source: a URL string (http(s), data:, blob:, file: or — in Node — a
 * path), raw bytes, or (browser) a Blob/File/ImageBitmap/ImageData/canvas/<img>.
 */
export async function loadImage(source: unknown, signal?: AbortSignal): Promise<DecodedImage> {
  if (typeof source === "string") {
    if (source.startsWith("data:")) return decodeBytes(decodeDataUrl(source));
    if (/^(https?|blob):/i.test(source)) return decodeBytes(await fetchBytes(source, signal));
    if (isNode) {
      const { readFile } = await import(/* @vite-ignore */ "node:fs/promises");
      const path = source.startsWith("file://") ? new URL(source) : source;
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await readFile(path));
      } catch (e) {
        throw new WebvlmError("bad_request", `cannot read image file ${source}: ${(e as Error).message}`, { path: source });
      }
      return decodeBytes(bytes);
    }
    return decodeBytes(await fetchBytes(new URL(source, location.href).href, signal));
  }
  if (source instanceof Uint8Array) return decodeBytes(source);
  if (source instanceof ArrayBuffer) return decodeBytes(new Uint8Array(source));
  if (!isNode && source !== null && typeof source === "object") return decodeImageBrowser(source as BrowserImageInput);
  throw new WebvlmError("bad_request", "unsupported image source: give a URL, a data: URL, bytes, or (in a browser) a Blob/ImageBitmap/canvas");
}
