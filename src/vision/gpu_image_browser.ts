// An image source straight onto the GPU as a GpuImage (gpu_image.ts), with no per-pixel CPU loop
// in a browser: the browser decodes (createImageBitmap, the same options as decode_browser.ts),
// copyExternalImageToTexture puts the pixels in an rgba8unorm texture, and copyTextureToBuffer
// lays them out as RGBA8 rows (256-byte aligned, as buffer copies require) in a pooled buffer.
//
// The bytes are the CPU path's (load_image.ts loadImage) with two differences, both measured in
// test/e2e/gpu-image-in-chromium.test.ts:
//   - alpha is kept in channel 3 (hasAlpha when the family asked for compositing, i.e.
//     LoadImageOptions.alphaBackground is set; otherwise channel 3 is padding and alpha is
//     dropped like PIL's convert("RGB")): the GPU kernels composite, not the CPU;
//   - pixels with 0 < alpha < 255 keep their exact straight RGB. The CPU path draws into a 2D
//     canvas, whose premultiplied storage rounds such colours (decode_browser.ts); the texture
//     copy with premultipliedAlpha false never premultiplies an ImageBitmap decoded with
//     premultiplyAlpha "none", so these bytes are the decoder's, like Node's / PIL's.
// Byte handling, limits, abort points and errors are loadImage's (the same exported helpers):
// a decode failure is image_decode_failed, a CORS-tainted image bad_request with the CORS fix,
// size limits limit_exceeded, an abort aborted.
// In Node there is no copyExternalImageToTexture: loadImage decodes and the RGB8 bytes are
// uploaded as they are (channels 3).
import { WebvlmError } from "../api/errors.ts";
import { assertAlive, type GpuContext } from "../gpu/device.ts";
import { isNode } from "../platform.ts";
import { declaredSize, describeBrowserImageError, neutralEncoded } from "./decode_browser.ts";
import type { DecodedImage } from "./decode_node.ts";
import { gpuImageBytes, releaseImage, uploadImage8, type GpuImage } from "./gpu_image.ts";
import { checkPixelLimit, precheckImage } from "./image_header.ts";
import {
  bytesLimitError, checkAbort, decodeDataUrl, fetchBytes, loadImage, resolveLimits, type Limits, type LoadImageOptions,
} from "./load_image.ts";

// WebGPU's numeric flags (the GPUTextureUsage global may be missing when this module loads).
const TEXTURE_COPY_SRC = 0x01;
const TEXTURE_COPY_DST = 0x02;
const TEXTURE_RENDER_ATTACHMENT = 0x10;
/** copyExternalImageToTexture needs COPY_DST and RENDER_ATTACHMENT; the buffer copy COPY_SRC. */
const TEXTURE_USAGE = TEXTURE_COPY_SRC | TEXTURE_COPY_DST | TEXTURE_RENDER_ATTACHMENT;
/** bytesPerRow of a texture-to-buffer copy must be a multiple of this. */
const ROW_ALIGN = 256;
/** decode_browser.ts's options: straight alpha, no colour management (PIL does none). */
const BITMAP_OPTIONS: ImageBitmapOptions = { premultiplyAlpha: "none", colorSpaceConversion: "none" };

/** Sources copyExternalImageToTexture takes as they are (<img> and VideoFrame go through a bitmap first). */
type DirectSource = ImageBitmap | HTMLCanvasElement | OffscreenCanvas;

const has = (name: string): boolean => typeof (globalThis as Record<string, unknown>)[name] === "function";

/**
 * Loads an image source onto the GPU: a URL string (http(s), data:, blob:, relative; a path in
 * Node), bytes (Uint8Array, ArrayBuffer), or in a browser a Blob/File, ImageBitmap, ImageData,
 * canvas, OffscreenCanvas, <img> or VideoFrame. Options, limits and errors as loadImage.
 * Browser: channels 4, rowBytes a multiple of 256 (ImageData: rowBytes width * 4), hasAlpha when
 * options.alphaBackground is set. Node: loadImage's RGB8 (already composited), channels 3.
 * The caller owns the result (releaseImage).
 */
export async function loadImageToGpu(
  ctx: GpuContext, source: unknown, signal?: AbortSignal, options: LoadImageOptions = {},
): Promise<GpuImage> {
  if (isNode) return uploadDecoded(ctx, await loadImage(source, signal, options));
  if (typeof source === "string") {
    if (source.startsWith("data:")) {
      const lim = resolveLimits(options, "image (data: URL)");
      checkAbort(signal, lim.label, "reading");
      return fromBytes(ctx, decodeDataUrl(source, lim), lim, signal);
    }
    // The same default label and URL resolution as loadImage.
    const lim = resolveLimits(options, `image ${source.length > 200 ? source.slice(0, 200) + "…" : source}`);
    const url = /^(https?|blob):/i.test(source) ? source : new URL(source, location.href).href;
    return fromBytes(ctx, await fetchBytes(url, lim, signal), lim, signal);
  }
  const lim = resolveLimits(options, "image");
  checkAbort(signal, lim.label, "reading");
  if (source instanceof Uint8Array) return fromBytes(ctx, source, lim, signal);
  if (source instanceof ArrayBuffer) return fromBytes(ctx, new Uint8Array(source), lim, signal);
  if (has("Blob") && source instanceof Blob) {
    if (source.size > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, 0, source.size);
    return fromEncoded(ctx, source, lim, signal);
  }
  if (has("ImageData") && source instanceof ImageData) {
    checkPixelLimit(source.width, source.height, lim.maxPixels, lim.label);
    // Already RGBA8 on the CPU: one writeBuffer, alpha straight as the page gave it.
    return afterDecode(ctx, uploadImage8(ctx, source.data, source.width, source.height, 4, lim.alphaBackground !== undefined), lim, signal);
  }
  if (has("HTMLImageElement") && source instanceof HTMLImageElement) return fromViaBitmap(ctx, source, lim, signal);
  if (has("VideoFrame") && source instanceof VideoFrame) return fromViaBitmap(ctx, source, lim, signal);
  if (
    (has("ImageBitmap") && source instanceof ImageBitmap) ||
    (has("HTMLCanvasElement") && source instanceof HTMLCanvasElement) ||
    (has("OffscreenCanvas") && source instanceof OffscreenCanvas)
  ) {
    return fromDirect(ctx, source as DirectSource, lim, signal);
  }
  // Anything else (an HTMLVideoElement, a non-image): loadImage decodes it or refuses it with its own error.
  return uploadDecoded(ctx, await loadImage(source, signal, options));
}

/** loadImage's checks on encoded bytes (decodeBytes), then the GPU decode. */
async function fromBytes(ctx: GpuContext, bytes: Uint8Array, lim: Limits, signal?: AbortSignal): Promise<GpuImage> {
  checkAbort(signal, lim.label, "reading");
  if (bytes.length > lim.maxBytes) throw bytesLimitError(lim.label, lim.maxBytes, bytes.length, bytes.length);
  precheckImage(bytes, lim.maxPixels, lim.label);
  checkAbort(signal, lim.label, "decoding");
  return fromEncoded(ctx, bytes, lim, signal);
}

/** Bytes or a Blob, EXIF orientation neutralised as decodeImageBrowser does, decoded by the browser. */
async function fromEncoded(ctx: GpuContext, input: Uint8Array | Blob, lim: Limits, signal?: AbortSignal): Promise<GpuImage> {
  const { blob, head, orientation } = await neutralEncoded(input);
  const h = precheckImage(head, Infinity);
  if (h) checkPixelLimit(h.width, h.height, lim.maxPixels, lim.label);
  if (lim.exifOrientation && orientation >= 2 && orientation <= 8) {
    // Orienting needs the pixels turned (applyExifOrientation, PIL's exif_transpose). Only
    // Idefics 2 asks for it and such photos are rare, so they take the CPU path and upload its
    // RGB8 rather than a rotating copy kernel being kept for them.
    return cpuFallback(ctx, input, lim, signal);
  }
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob, BITMAP_OPTIONS);
  } catch (e) {
    throw describeBrowserImageError(e, lim.label);
  }
  let img: GpuImage | null;
  try {
    img = copyToGpu(ctx, bitmap, bitmap.width, bitmap.height, lim, lim.label);
  } finally {
    bitmap.close();
  }
  return img ? afterDecode(ctx, img, lim, signal) : cpuFallback(ctx, input, lim, signal);
}

/**
 * An <img> or a VideoFrame goes through createImageBitmap with decode_browser.ts's options, as
 * on the CPU path. Copied as it is, an <img> gives its displayed pixels, which Chromium may
 * colour-convert (the CPU path asks for colorSpaceConversion "none"); and Chromium on SwiftShader refuses to copy a
 * VideoFrame ("Failed to copy content from video element", measured), while its bitmap copies.
 */
async function fromViaBitmap(ctx: GpuContext, source: HTMLImageElement | VideoFrame, lim: Limits, signal?: AbortSignal): Promise<GpuImage> {
  const isImg = has("HTMLImageElement") && source instanceof HTMLImageElement;
  if (isImg) checkPixelLimit(source.naturalWidth, source.naturalHeight, lim.maxPixels, lim.label);
  else checkPixelLimit((source as VideoFrame).displayWidth, (source as VideoFrame).displayHeight, lim.maxPixels, lim.label);
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(source, BITMAP_OPTIONS);
  } catch (e) {
    throw describeBrowserImageError(e, lim.label);
  }
  let out: GpuImage | null;
  try {
    const errorLabel = isImg ? `${lim.label} (<img src="${source.currentSrc || source.src}">)` : lim.label;
    out = copyToGpu(ctx, bitmap, bitmap.width, bitmap.height, lim, errorLabel);
  } finally {
    bitmap.close();
  }
  return out ? afterDecode(ctx, out, lim, signal) : cpuFallback(ctx, source, lim, signal);
}

/** ImageBitmaps and canvases are copied as they are (the caller keeps them). */
async function fromDirect(ctx: GpuContext, source: DirectSource, lim: Limits, signal?: AbortSignal): Promise<GpuImage> {
  const declared = await declaredSize(source);
  if (declared) checkPixelLimit(declared[0], declared[1], lim.maxPixels, lim.label);
  const img = copyToGpu(ctx, source, source.width, source.height, lim, lim.label);
  return img ? afterDecode(ctx, img, lim, signal) : cpuFallback(ctx, source, lim, signal);
}

/**
 * The texture copy and the buffer copy, submitted together; the texture is destroyed once the
 * work is submitted (WebGPU keeps it alive for that work). Null when the image is too large for
 * a texture or buffer on this device: the caller then takes the CPU path (3 bytes a pixel).
 */
function copyToGpu(
  ctx: GpuContext, source: GPUCopyExternalImageSource, width: number, height: number, lim: Limits, errorLabel: string,
): GpuImage | null {
  if (width === 0 || height === 0) throw new WebvlmError("image_decode_failed", `${lim.label} has no pixels`, { image: lim.label });
  checkPixelLimit(width, height, lim.maxPixels, lim.label);
  assertAlive(ctx);
  const { device } = ctx;
  const rowBytes = Math.ceil((width * 4) / ROW_ALIGN) * ROW_ALIGN;
  const bytes = gpuImageBytes(rowBytes, height);
  const maxDim = device.limits.maxTextureDimension2D;
  if (width > maxDim || height > maxDim || bytes > device.limits.maxBufferSize) return null;
  const texture = device.createTexture({ size: [width, height], format: "rgba8unorm", usage: TEXTURE_USAGE, label: "image.external" });
  let buffer: GPUBuffer | null = null;
  try {
    try {
      device.queue.copyExternalImageToTexture({ source }, { texture, premultipliedAlpha: false }, [width, height]);
    } catch (e) {
      // A tainted (cross-origin, no CORS) source is a SecurityError here, as getImageData's is.
      throw describeBrowserImageError(e, errorLabel);
    }
    buffer = ctx.pool.acquire(bytes, "image.external");
    const enc = device.createCommandEncoder({ label: "image.external" });
    enc.copyTextureToBuffer({ texture }, { buffer, bytesPerRow: rowBytes, rowsPerImage: height }, [width, height]);
    device.queue.submit([enc.finish()]);
    ctx.pool.markSubmitted();
  } catch (e) {
    if (buffer) ctx.pool.release(buffer);
    throw e;
  } finally {
    texture.destroy();
  }
  return { buffer, width, height, channels: 4, rowBytes, hasAlpha: lim.alphaBackground !== undefined };
}

/** loadImage's abort check after decoding; the image is released if it fires. */
function afterDecode(ctx: GpuContext, img: GpuImage, lim: Limits, signal?: AbortSignal): GpuImage {
  try {
    checkAbort(signal, lim.label, "decoding");
  } catch (e) {
    releaseImage(ctx, img);
    throw e;
  }
  return img;
}

/** The CPU path for one source with these resolved options, then its RGB8 uploaded. */
async function cpuFallback(ctx: GpuContext, source: unknown, lim: Limits, signal?: AbortSignal): Promise<GpuImage> {
  const options: LoadImageOptions = {
    maxBytes: lim.maxBytes, maxPixels: lim.maxPixels, label: lim.label, exifOrientation: lim.exifOrientation, alphaBackground: lim.alphaBackground,
  };
  return uploadDecoded(ctx, await loadImage(source, signal, options));
}

/** loadImage's result (RGB8, alpha already composited or dropped) uploaded as it is. */
function uploadDecoded(ctx: GpuContext, img: DecodedImage): GpuImage {
  return uploadImage8(ctx, img.rgb, img.width, img.height, 3);
}
