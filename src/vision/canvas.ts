// Pad to a canvas, crop a rectangle, split into a grid of tiles: the geometry
// the VLM processors share (Llama 3.2 Vision pads top-left and tiles; Idefics 2
// pads bottom/right with a pixel mask and crops; Phi-3.5-vision pads centered
// with white; LLaVA-style expand-to-square pads centered). Two layouts: HWC
// uint8 (before rescale/normalize) and CHW float32 (after).
import { WebvlmError } from "../api/errors.ts";

/** Interleaved 8-bit image: data[(y * width + x) * channels + c]. */
export interface Hwc8 {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

/** Planar float32 image: data[(c * height + y) * width + x]. */
export interface Chw32 {
  data: Float32Array;
  width: number;
  height: number;
  channels: number;
}

/**
 * Where the image sits on the canvas. "center" rounds the offset down
 * ((canvas - size) // 2, as Phi-3.5's padding_336 and LLaVA's expand2square),
 * so an odd leftover goes to the right / bottom.
 */
export type PadPosition = "top-left" | "center" | { readonly left: number; readonly top: number };

export interface PadOptions {
  /** Fill value: one for all channels or one per channel (default 0). */
  value?: number | readonly number[];
  position?: PadPosition;
}

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** rows * cols tiles in row-major order, stored back to back. */
export interface Tiles<T extends Uint8Array | Float32Array> {
  /** HWC8: [count, tileHeight, tileWidth, channels]; CHW32: [count, channels, tileHeight, tileWidth] */
  data: T;
  count: number;
  rows: number;
  cols: number;
  tileWidth: number;
  tileHeight: number;
  channels: number;
}

const isPosInt = (v: number): boolean => Number.isSafeInteger(v) && v > 0;

function checkImage(what: string, img: Hwc8 | Chw32): void {
  const { width, height, channels, data } = img;
  if (!isPosInt(width) || !isPosInt(height) || !isPosInt(channels)) {
    throw new WebvlmError("bad_request", `${what}: bad image size ${width}x${height}x${channels}`);
  }
  if (data.length !== width * height * channels) {
    throw new WebvlmError("shape_mismatch", `${what}: ${width}x${height}x${channels} needs ${width * height * channels} values, got ${data.length}`);
  }
}

// Row-by-row copy of a w x h region: the rows are contiguous in both layouts
// (HWC: w * channels values; CHW: w values per channel plane).
function blitHwc(
  src: Uint8Array, sw: number, sx: number, sy: number,
  dst: Uint8Array, dw: number, dx: number, dy: number, w: number, h: number, c: number,
): void {
  for (let y = 0; y < h; y++) {
    const from = ((sy + y) * sw + sx) * c;
    dst.set(src.subarray(from, from + w * c), ((dy + y) * dw + dx) * c);
  }
}

function blitChw(
  src: Float32Array, sw: number, sh: number, sx: number, sy: number,
  dst: Float32Array, dw: number, dh: number, dx: number, dy: number, w: number, h: number, c: number,
): void {
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < h; y++) {
      const from = (ch * sh + sy + y) * sw + sx;
      dst.set(src.subarray(from, from + w), (ch * dh + dy + y) * dw + dx);
    }
  }
}

/** Offsets of a width x height image on a canvasWidth x canvasHeight canvas. */
export function padOffsets(
  width: number, height: number, canvasWidth: number, canvasHeight: number, position: PadPosition = "top-left",
): { left: number; top: number } {
  if (!isPosInt(canvasWidth) || !isPosInt(canvasHeight) || canvasWidth < width || canvasHeight < height) {
    throw new WebvlmError("bad_request", `pad: a ${width}x${height} image does not fit a ${canvasWidth}x${canvasHeight} canvas`);
  }
  let left: number;
  let top: number;
  if (position === "top-left") [left, top] = [0, 0];
  else if (position === "center") [left, top] = [Math.floor((canvasWidth - width) / 2), Math.floor((canvasHeight - height) / 2)];
  else [left, top] = [position.left, position.top];
  if (!Number.isSafeInteger(left) || !Number.isSafeInteger(top) || left < 0 || top < 0
    || left + width > canvasWidth || top + height > canvasHeight) {
    throw new WebvlmError("bad_request", `pad: offset (${left}, ${top}) puts a ${width}x${height} image outside a ${canvasWidth}x${canvasHeight} canvas`);
  }
  return { left, top };
}

function fillValues(value: number | readonly number[] | undefined, channels: number, u8: boolean): number[] {
  const v = value === undefined ? [0] : typeof value === "number" ? [value] : Array.from(value);
  const per = v.length === 1 ? new Array<number>(channels).fill(v[0]) : v;
  if (per.length !== channels) {
    throw new WebvlmError("shape_mismatch", `pad: ${per.length} fill values for ${channels} channels`);
  }
  for (const x of per) {
    if (u8 ? !(Number.isInteger(x) && x >= 0 && x <= 255) : !Number.isFinite(x)) {
      throw new WebvlmError("bad_request", `pad: fill value ${x} is not ${u8 ? "an integer in 0..255" : "finite"}`);
    }
  }
  return per;
}

/** Place `img` on a canvas filled with `value`. */
export function padHwc8(img: Hwc8, canvasWidth: number, canvasHeight: number, opts: PadOptions = {}): Hwc8 {
  checkImage("pad", img);
  const { width, height, channels: c } = img;
  const { left, top } = padOffsets(width, height, canvasWidth, canvasHeight, opts.position);
  const fill = fillValues(opts.value, c, true);
  const data = new Uint8Array(canvasWidth * canvasHeight * c);
  if (fill.some((v) => v !== 0)) {
    for (let i = 0; i < data.length; i += c) for (let ch = 0; ch < c; ch++) data[i + ch] = fill[ch];
  }
  blitHwc(img.data, width, 0, 0, data, canvasWidth, left, top, width, height, c);
  return { data, width: canvasWidth, height: canvasHeight, channels: c };
}

/** Place `img` on a canvas filled with `value` (rounded to float32). */
export function padChw32(img: Chw32, canvasWidth: number, canvasHeight: number, opts: PadOptions = {}): Chw32 {
  checkImage("pad", img);
  const { width, height, channels: c } = img;
  const { left, top } = padOffsets(width, height, canvasWidth, canvasHeight, opts.position);
  const fill = fillValues(opts.value, c, false);
  const plane = canvasWidth * canvasHeight;
  const data = new Float32Array(plane * c);
  for (let ch = 0; ch < c; ch++) if (fill[ch] !== 0) data.fill(fill[ch], ch * plane, (ch + 1) * plane);
  blitChw(img.data, width, height, 0, 0, data, canvasWidth, canvasHeight, left, top, width, height, c);
  return { data, width: canvasWidth, height: canvasHeight, channels: c };
}

/**
 * canvasHeight x canvasWidth mask, 1 where the padded image has pixels and 0
 * on the padding (the pixel_attention_mask Idefics 2 builds).
 */
export function padMask(
  width: number, height: number, canvasWidth: number, canvasHeight: number, position: PadPosition = "top-left",
): Uint8Array {
  const { left, top } = padOffsets(width, height, canvasWidth, canvasHeight, position);
  const mask = new Uint8Array(canvasWidth * canvasHeight);
  for (let y = top; y < top + height; y++) mask.fill(1, y * canvasWidth + left, y * canvasWidth + left + width);
  return mask;
}

function checkRect(img: Hwc8 | Chw32, r: Rect): void {
  const ok = [r.x, r.y].every((v) => Number.isSafeInteger(v) && v >= 0) && isPosInt(r.width) && isPosInt(r.height)
    && r.x + r.width <= img.width && r.y + r.height <= img.height;
  if (!ok) {
    throw new WebvlmError("bad_request", `crop: ${r.width}x${r.height} at (${r.x}, ${r.y}) is not inside ${img.width}x${img.height}`);
  }
}

/** The pixels of `rect` (which must lie inside the image). */
export function cropHwc8(img: Hwc8, rect: Rect): Hwc8 {
  checkImage("crop", img);
  checkRect(img, rect);
  const data = new Uint8Array(rect.width * rect.height * img.channels);
  blitHwc(img.data, img.width, rect.x, rect.y, data, rect.width, 0, 0, rect.width, rect.height, img.channels);
  return { data, width: rect.width, height: rect.height, channels: img.channels };
}

/** The pixels of `rect` (which must lie inside the image). */
export function cropChw32(img: Chw32, rect: Rect): Chw32 {
  checkImage("crop", img);
  checkRect(img, rect);
  const data = new Float32Array(rect.width * rect.height * img.channels);
  blitChw(img.data, img.width, img.height, rect.x, rect.y, data, rect.width, rect.height, 0, 0, rect.width, rect.height, img.channels);
  return { data, width: rect.width, height: rect.height, channels: img.channels };
}

function tileSize(img: Hwc8 | Chw32, rows: number, cols: number): [number, number] {
  if (!isPosInt(rows) || !isPosInt(cols) || img.width % cols !== 0 || img.height % rows !== 0) {
    throw new WebvlmError("shape_mismatch", `tiles: ${img.width}x${img.height} does not split into ${rows} rows x ${cols} columns`);
  }
  return [img.width / cols, img.height / rows];
}

/** Split into rows x cols equal tiles, row-major: [count, tileHeight, tileWidth, channels]. */
export function tilesHwc8(img: Hwc8, rows: number, cols: number): Tiles<Uint8Array> {
  checkImage("tiles", img);
  const [tw, th] = tileSize(img, rows, cols);
  const c = img.channels;
  const size = tw * th * c;
  const data = new Uint8Array(img.data.length);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols; k++) {
      const tile = data.subarray((r * cols + k) * size, (r * cols + k + 1) * size);
      blitHwc(img.data, img.width, k * tw, r * th, tile, tw, 0, 0, tw, th, c);
    }
  }
  return { data, count: rows * cols, rows, cols, tileWidth: tw, tileHeight: th, channels: c };
}

/**
 * Split into rows x cols equal tiles, row-major: [count, channels, tileHeight,
 * tileWidth], the layout of transformers' Mllama split_to_tiles.
 */
export function tilesChw32(img: Chw32, rows: number, cols: number): Tiles<Float32Array> {
  checkImage("tiles", img);
  const [tw, th] = tileSize(img, rows, cols);
  const c = img.channels;
  const size = tw * th * c;
  const data = new Float32Array(img.data.length);
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols; k++) {
      const tile = data.subarray((r * cols + k) * size, (r * cols + k + 1) * size);
      blitChw(img.data, img.width, img.height, k * tw, r * th, tile, tw, th, 0, 0, tw, th, c);
    }
  }
  return { data, count: rows * cols, rows, cols, tileWidth: tw, tileHeight: th, channels: c };
}
