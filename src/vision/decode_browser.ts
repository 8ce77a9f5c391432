// Browser image decoding to RGB8 with createImageBitmap + OffscreenCanvas (works in workers).
// Alpha is dropped like PIL's convert("RGB"); for pixels with alpha < 255 the canvas's
// premultiplied storage can round RGB by a level, which PIL would not (documented limit).
import { WebvlmError } from "../api/errors.ts";
import type { DecodedImage } from "./decode_node.ts";

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

function rgbaToRgb(rgba: Uint8ClampedArray, width: number, height: number): DecodedImage {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgb[i] = rgba[j];
    rgb[i + 1] = rgba[j + 1];
    rgb[i + 2] = rgba[j + 2];
  }
  return { rgb, width, height };
}

async function toBitmap(input: Exclude<BrowserImageInput, ImageData>): Promise<ImageBitmap> {
  if (typeof ImageBitmap !== "undefined" && input instanceof ImageBitmap) return input;
  const source: ImageBitmapSource =
    input instanceof ArrayBuffer || input instanceof Uint8Array ? new Blob([input as BlobPart]) : (input as ImageBitmapSource);
  try {
    return await createImageBitmap(source, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  } catch (e) {
    throw new WebvlmError("image_decode_failed", `the browser could not decode the image: ${(e as Error).message}`);
  }
}

function isImageData(input: BrowserImageInput): input is ImageData {
  return typeof ImageData !== "undefined" && input instanceof ImageData;
}

export async function decodeImageBrowser(input: BrowserImageInput): Promise<DecodedImage> {
  if (isImageData(input)) return rgbaToRgb(input.data, input.width, input.height);
  const bitmap = await toBitmap(input);
  const { width, height } = bitmap;
  if (width === 0 || height === 0) throw new WebvlmError("image_decode_failed", "the image has no pixels");
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  if (!ctx) throw new WebvlmError("image_decode_failed", "no 2D canvas context to read pixels");
  ctx.drawImage(bitmap, 0, 0);
  if (bitmap !== input) bitmap.close();
  return rgbaToRgb(ctx.getImageData(0, 0, width, height).data, width, height);
}
