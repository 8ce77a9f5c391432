// MllamaImageProcessor (transformers' image_processing_mllama.py, the PIL path), per image as
// /work/shared/MLLAMA.md §3 specifies it: the supported aspect ratios for max_image_tiles, the
// optimal tiled canvas, the fit-to-canvas size (float64), Pillow's resize, pad bottom/right with
// uint8 0, rescale + normalize (float32), split into row-major tiles, pack to max_image_tiles.
// RGB conversion (RGBA over opaque white) happens at decode time (processor.ts, loadImage's
// alphaBackground).
import { WebvlmError } from "../../api/errors.ts";
import { padHwc8, tilesChw32, type Hwc8 } from "../../vision/canvas.ts";
import { normalize8ToChw, normalizeOptionsFromConfig } from "../../vision/normalize.ts";
import { resize8, type ResampleFilter } from "../../vision/resize.ts";
import {
  absent, badField, checkRescaleFactor, flagField, positiveInt, PREPROCESSOR_CONFIG_FILE, resampleField, rgbTriple,
} from "../common/preprocess_config.ts";

/** The checkpoint's preprocessing settings (preprocessor_config.json). */
export interface MllamaPreprocessOptions {
  /** size.height == size.width: the tile side in pixels (560 for the released checkpoints). */
  tileSize: number;
  /** max_image_tiles: N, the tiles every image is packed to (must equal vision_config.max_num_tiles). */
  maxImageTiles: number;
  /** PIL resample 2 (BILINEAR, the default) or 3 (BICUBIC). */
  resample: ResampleFilter;
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  imageMean: readonly [number, number, number];
  imageStd: readonly [number, number, number];
  /** Transparent images are composited over opaque white (convert_to_rgb); false: alpha dropped. */
  doConvertRgb: boolean;
}

/** Class defaults of MllamaImageProcessor (size 224, IMAGENET_STANDARD mean/std 0.5). */
export const MLLAMA_DEFAULT_PREPROCESS: Readonly<MllamaPreprocessOptions> = {
  tileSize: 224,
  maxImageTiles: 4,
  resample: "bilinear",
  doRescale: true,
  rescaleFactor: 1 / 255,
  doNormalize: true,
  imageMean: [0.5, 0.5, 0.5],
  imageStd: [0.5, 0.5, 0.5],
  doConvertRgb: true,
};

const PP_FILE = PREPROCESSOR_CONFIG_FILE;

function tileSizeField(v: unknown): number {
  if (absent(v)) return MLLAMA_DEFAULT_PREPROCESS.tileSize;
  if (typeof v !== "object" || Array.isArray(v)) throw badField(PP_FILE, "size", "an object {height, width}", v);
  const s = v as Record<string, unknown>;
  if (absent(s.height) || absent(s.width)) throw badField(PP_FILE, "size", "an object with keys height and width", v);
  const height = positiveInt(PP_FILE, "size.height", s.height);
  const width = positiveInt(PP_FILE, "size.width", s.width);
  // validate_size: tiles are square.
  if (height !== width) throw badField(PP_FILE, "size", "square (height == width)", v);
  return height;
}

/** A required-true flag (validate_mllama_preprocess_arguments rejects false). */
function mustBeTrue(pp: Readonly<Record<string, unknown>>, field: string): void {
  if (!flagField(pp, field, true)) {
    throw new WebvlmError("unsupported_feature", `${PP_FILE}: ${field} false is not supported (MllamaImageProcessor requires it)`, { file: PP_FILE, field, value: false });
  }
}

/**
 * Typed options from preprocessor_config.json ({} when absent): absent fields take the class
 * defaults; malformed values throw bad_request naming the file and field; do_resize / do_pad
 * false (which transformers rejects) throw unsupported_feature.
 */
export function parseMllamaPreprocess(pp: Readonly<Record<string, unknown>>): MllamaPreprocessOptions {
  const d = MLLAMA_DEFAULT_PREPROCESS;
  mustBeTrue(pp, "do_resize");
  mustBeTrue(pp, "do_pad");
  const norm = normalizeOptionsFromConfig(pp);
  checkRescaleFactor(norm.rescaleFactor);
  return {
    tileSize: tileSizeField(pp.size),
    maxImageTiles: absent(pp.max_image_tiles) ? d.maxImageTiles : positiveInt(PP_FILE, "max_image_tiles", pp.max_image_tiles),
    resample: resampleField(pp.resample, d.resample),
    doRescale: norm.doRescale ?? d.doRescale,
    rescaleFactor: norm.rescaleFactor ?? d.rescaleFactor,
    doNormalize: norm.doNormalize ?? d.doNormalize,
    imageMean: rgbTriple("image_mean", norm.mean, d.imageMean),
    imageStd: rgbTriple("image_std", norm.std, d.imageStd),
    doConvertRgb: flagField(pp, "do_convert_rgb", d.doConvertRgb),
  };
}

/** A tile arrangement: tiles vertically (rows) x horizontally (cols). */
export interface TileGrid {
  rows: number;
  cols: number;
}

/**
 * get_all_supported_aspect_ratios: every (a, b) with a, b in 1..N and a*b <= N, a outer. Each
 * pair is (rows, cols); aspect_ratio_id = index + 1 (0 means "no image").
 */
export function supportedAspectRatios(maxImageTiles: number): TileGrid[] {
  if (!Number.isSafeInteger(maxImageTiles) || maxImageTiles < 1) {
    throw new WebvlmError("bad_request", `max_image_tiles must be a positive integer, got ${maxImageTiles}`, { maxImageTiles });
  }
  const out: TileGrid[] = [];
  for (let a = 1; a <= maxImageTiles; a++) for (let b = 1; b <= maxImageTiles; b++) if (a * b <= maxImageTiles) out.push({ rows: a, cols: b });
  return out;
}

/** aspect_ratio_id of a grid (index in supportedAspectRatios + 1). */
export function aspectRatioId(grid: TileGrid, maxImageTiles: number): number {
  const i = supportedAspectRatios(maxImageTiles).findIndex((g) => g.rows === grid.rows && g.cols === grid.cols);
  if (i < 0) throw new WebvlmError("bad_request", `a ${grid.rows}x${grid.cols} tile grid is not supported with max_image_tiles ${maxImageTiles}`, { ...grid, maxImageTiles });
  return i + 1;
}

/**
 * get_optimal_tiled_canvas (float64): per arrangement the limiting scale min(canvas_h/h,
 * canvas_w/w) (the h-scale when w's is larger, else the w-scale); the smallest scale >= 1 if any,
 * else the largest; among arrangements with exactly that scale, the smallest canvas area, first
 * in aspect-ratio order on ties.
 */
export function optimalTileGrid(height: number, width: number, maxImageTiles: number, tileSize: number): TileGrid {
  const grids = supportedAspectRatios(maxImageTiles);
  const scales = grids.map((g) => {
    const sh = (g.rows * tileSize) / height;
    const sw = (g.cols * tileSize) / width;
    return sw > sh ? sh : sw;
  });
  const up = scales.filter((s) => s >= 1);
  const chosen = up.length > 0 ? Math.min(...up) : Math.max(...scales);
  let best = -1;
  grids.forEach((g, i) => {
    if (scales[i] !== chosen) return;
    if (best < 0 || g.rows * g.cols < grids[best].rows * grids[best].cols) best = i;
  });
  return grids[best];
}

/**
 * get_image_size_fit_to_canvas (float64, Python semantics): the target clamps each side to
 * [tile, canvas]; the side with the smaller scale takes its target and the other is
 * min(floor(side * scale), its target). The scale is computed first (floor(h * (tw / w)), not
 * floor(h * tw / w): they differ).
 */
export function fitToCanvasSize(
  height: number, width: number, canvasHeight: number, canvasWidth: number, tileSize: number,
): { height: number; width: number } {
  const clamp = (v: number, lo: number, hi: number): number => Math.min(Math.max(v, lo), hi);
  const tw = clamp(width, tileSize, canvasWidth);
  const th = clamp(height, tileSize, canvasHeight);
  const sh = th / height;
  const sw = tw / width;
  if (sw < sh) return { width: tw, height: Math.min(Math.floor(height * sw), th) };
  return { height: th, width: Math.min(Math.floor(width * sh), tw) };
}

/** The geometry of one image: its tile grid, aspect ratio id and resized size. */
export interface MllamaImageLayout {
  grid: TileGrid;
  aspectRatioId: number;
  numTiles: number;
  resizedHeight: number;
  resizedWidth: number;
}

/** The canvas, aspect ratio id and resized size of an h x w image (§3.1-3.3). */
export function mllamaImageLayout(height: number, width: number, opts: Pick<MllamaPreprocessOptions, "tileSize" | "maxImageTiles">): MllamaImageLayout {
  if (!Number.isSafeInteger(height) || !Number.isSafeInteger(width) || height < 1 || width < 1) {
    throw new WebvlmError("bad_request", `bad image size ${width}x${height}`, { width, height });
  }
  const { tileSize, maxImageTiles } = opts;
  const grid = optimalTileGrid(height, width, maxImageTiles, tileSize);
  const size = fitToCanvasSize(height, width, grid.rows * tileSize, grid.cols * tileSize, tileSize);
  return {
    grid,
    aspectRatioId: aspectRatioId(grid, maxImageTiles),
    numTiles: grid.rows * grid.cols,
    resizedHeight: size.height,
    resizedWidth: size.width,
  };
}

/** One image after MllamaImageProcessor, packed to max_image_tiles. */
export interface MllamaProcessedImage extends MllamaImageLayout {
  /** pixel_values of the image: [maxImageTiles, 3, tile, tile]; tiles numTiles.. are exact zeros. */
  pixelValues: Float32Array;
  /** aspect_ratio_mask of the image: [maxImageTiles], 1 for tiles < numTiles. */
  aspectRatioMask: Uint8Array;
}

/**
 * One decoded RGB8 image (already converted to RGB) -> its tiles (§3.4-3.9): resize with Pillow,
 * pad bottom/right with uint8 0 to the canvas, rescale + normalize to float32 CHW, split into
 * row-major tiles of [3, tile, tile], zero tiles up to max_image_tiles.
 */
export function processMllamaImage(
  image: { rgb: Uint8Array; width: number; height: number },
  opts: MllamaPreprocessOptions,
): MllamaProcessedImage {
  const layout = mllamaImageLayout(image.height, image.width, opts);
  const { grid, resizedHeight: rh, resizedWidth: rw } = layout;
  const tile = opts.tileSize;
  // Image.resize is always called; an unchanged size is a copy (resize8 does the same).
  const resized: Hwc8 = { data: resize8(image.rgb, image.width, image.height, rw, rh, 3, { filter: opts.resample }), width: rw, height: rh, channels: 3 };
  const canvasW = grid.cols * tile;
  const canvasH = grid.rows * tile;
  const padded = padHwc8(resized, canvasW, canvasH, { value: 0, position: "top-left" });
  const chw = normalize8ToChw(padded.data, canvasW, canvasH, 3, {
    mean: opts.imageMean,
    std: opts.imageStd,
    rescaleFactor: opts.rescaleFactor,
    doRescale: opts.doRescale,
    doNormalize: opts.doNormalize,
  });
  // split_to_tiles: tile t = r * cols + c, each [3, tile, tile]; the rest of the N tiles stay 0.
  const tiles = tilesChw32({ data: chw, width: canvasW, height: canvasH, channels: 3 }, grid.rows, grid.cols);
  const pixelValues = new Float32Array(opts.maxImageTiles * 3 * tile * tile);
  pixelValues.set(tiles.data);
  const aspectRatioMask = new Uint8Array(opts.maxImageTiles);
  aspectRatioMask.fill(1, 0, layout.numTiles);
  return { ...layout, pixelValues, aspectRatioMask };
}
