// An 8-bit image held in a GPU storage buffer: what the GPU preprocessing kernels
// (shaders/image_*.wgsl) read and write. Decoded pixels reach the GPU once — uploaded as the
// decoder gave them (Node: RGB8 bytes; ImageData: RGBA8) or copied from a browser image with
// copyExternalImageToTexture (gpu_image_browser.ts) — and never come back to the CPU.
//
// Layout: byte (y * rowBytes + x * channels + c) of the buffer, starting at byte 0, is channel c
// of pixel (x, y); WGSL reads it from array<u32> as (word >> 8 * (byte % 4)) & 255. Channels are
// R, G, B and, with channels 4, either alpha (hasAlpha) or padding. Kernels write 4 channels
// (RGBX: one u32 per pixel, so no two invocations share a word) with rowBytes = width * 4.
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import { writeBytes } from "../gpu/transfer.ts";

export interface GpuImage {
  readonly buffer: GPUBuffer;
  readonly width: number;
  readonly height: number;
  /** Bytes per pixel: 3 (RGB8 as decoded in Node) or 4 (RGBA8 / RGBX). */
  readonly channels: 3 | 4;
  /** Bytes from one row to the next: >= width * channels (256-aligned after a texture copy). */
  readonly rowBytes: number;
  /** Channel 3 is alpha that still has to be composited (only with channels 4). */
  readonly hasAlpha: boolean;
}

/** Bytes a GPU image's buffer needs (rows padded to whole u32 words at the end). */
export function gpuImageBytes(rowBytes: number, height: number): number {
  return Math.ceil((rowBytes * height) / 4) * 4;
}

/** A pooled buffer for a kernel-written RGBX image of width x height. */
export function allocRgbxImage(ctx: GpuContext, width: number, height: number, label = "image.rgbx"): GpuImage {
  checkSize(width, height);
  return { buffer: ctx.pool.acquire(width * height * 4, label), width, height, channels: 4, rowBytes: width * 4, hasAlpha: false };
}

/**
 * Uploads interleaved 8-bit pixels as they are (one writeBuffer, no per-pixel CPU loop):
 * RGB8 (channels 3), or RGBA8 (channels 4, alpha when `hasAlpha`).
 */
export function uploadImage8(
  ctx: GpuContext, bytes: Uint8Array | Uint8ClampedArray, width: number, height: number, channels: 3 | 4, hasAlpha = false,
): GpuImage {
  checkSize(width, height);
  if (bytes.length !== width * height * channels) {
    throw new WebvlmError("shape_mismatch", `image upload: ${bytes.length} bytes for ${width}x${height}x${channels}`);
  }
  const rowBytes = width * channels;
  const buffer = ctx.pool.acquire(gpuImageBytes(rowBytes, height), "image.upload", true);
  writeBytes(ctx, buffer, 0, bytes);
  return { buffer, width, height, channels, rowBytes, hasAlpha: hasAlpha && channels === 4 };
}

/** Returns a GPU image's buffer to the pool. */
export function releaseImage(ctx: GpuContext, img: GpuImage): void {
  ctx.pool.release(img.buffer);
}

function checkSize(width: number, height: number): void {
  if (!Number.isSafeInteger(width) || !Number.isSafeInteger(height) || width <= 0 || height <= 0) {
    throw new WebvlmError("bad_request", `GPU image: bad size ${width}x${height}`);
  }
}
