// Idefics2Processor: request images -> per-(sub-)image patches for the vision tower, and the
// prompt expansion of each <image> (/work/shared/IDEFICS2.md §4.3, §5, §6.2-6.4).
//
// transformers pads every (sub-)image of a request to the request's largest one; padding never
// changes a valid patch or its position id (patches.ts), so each crop's valid patches are all the
// GPU needs and the payload keeps them per crop, unpadded.
//
// Two paths with the same values: the GPU path (default when the engine gives a device) decodes to
// the GPU, cuts each crop as an 8-bit copy (resizeImage with an integer box = a crop), resizes it
// with Pillow's filter (image_resample.wgsl) and writes its valid patch rows through the
// checkpoint's normalize table (image_patches.wgsl) into ONE tensor per image, the crops' rows back
// to back; a crop that keeps its size is cut straight from the decoded image (x0/y0 of the crop).
// The CPU path (loadImage -> split -> resize8 -> normalize -> idefics2PatchRows) is the reference
// and the per-item fallback when a buffer would pass the device's limits.
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { Recorder } from "../../gpu/recorder.ts";
import { isTensor, sliceRows, type Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { imagePatches } from "../../ops/image_patches.ts";
import { resizeImage } from "../../ops/image_resample.ts";
import { releaseImage, type GpuImage } from "../../vision/gpu_image.ts";
import { GpuPreprocessor, releaseMedia } from "../../vision/gpu_preprocess.ts";
import { loadImage, type LoadImageOptions } from "../../vision/load_image.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { MediaProcessor, MediaRef, PreparedMedia } from "../family.ts";
import { idefics2CropRects, idefics2TargetSize, processIdefics2Image, type Idefics2PreprocessOptions } from "./image_processor.ts";
import { idefics2CropGrid, idefics2CropPatches, idefics2PositionIds, type Idefics2CropPatches } from "./patches.ts";

/** One (sub-)image of the payload: Idefics2CropPatches whose rows are host values or GPU rows. */
export interface Idefics2PayloadCrop extends Omit<Idefics2CropPatches, "patchRows"> {
  /** [patchesH * patchesW, 3 * p * p] f32: host values (CPU path) or a row view of `pixels` (GPU path). */
  patchRows: Float32Array | Tensor;
}

/** What the Idefics2 model reads of one image: its crops in prompt order (crops 1-4, then the full image). */
export interface Idefics2ImagePayload {
  crops: Idefics2PayloadCrop[];
  /**
   * GPU path: every crop's rows in one tensor [sum of crop patches, 3 * p * p], crop k's at rows
   * [rowOffsets[k], rowOffsets[k] + patchesH * patchesW) (its patchRows is that view). Owned by the
   * PreparedMedia (released by its release()), never by the model.
   */
  pixels?: Tensor;
  rowOffsets?: number[];
}

export interface Idefics2ProcessorOptions {
  /** vision_config.patch_size */
  patchSize: number;
  /** vision_config.image_size (positions per side = image_size // patch_size) */
  imageSize: number;
  /** config.json image_token_id (<image>) */
  imageTokenId: number;
  /** The tokenizer's <fake_token_around_image> id. */
  fakeTokenId: number;
  preprocess: Idefics2PreprocessOptions;
}

/** Sizes and grids of an image's crops: part of its content key (equal rows on other grids embed differently). */
function cropSizes(crops: readonly Idefics2PayloadCrop[]): Int32Array {
  const sizes = new Int32Array(1 + crops.length * 4);
  sizes[0] = crops.length;
  crops.forEach((c, k) => sizes.set([c.height, c.width, c.patchesH, c.patchesW], 1 + k * 4));
  return sizes;
}

/** Content key of an image's crops (CPU path): their sizes, grids and valid patch values. */
function payloadHash(payload: Idefics2ImagePayload): string {
  return contentHash([cropSizes(payload.crops), ...payload.crops.map((c) => c.patchRows as Float32Array)]);
}

/** Whether a payload is this processor's: crops whose rows are host values or GPU tensors. */
export function isIdefics2Payload(p: unknown): p is Idefics2ImagePayload {
  if (typeof p !== "object" || p === null) return false;
  const crops = (p as { crops?: unknown }).crops;
  return Array.isArray(crops) && crops.every((c: Partial<Idefics2PayloadCrop> | null) =>
    typeof c === "object" && c !== null && (c.patchRows instanceof Float32Array || isTensor(c.patchRows)) && c.positionIds instanceof Int32Array);
}

function isPayload(p: unknown): p is Idefics2ImagePayload {
  return typeof p === "object" && p !== null && Array.isArray((p as { crops?: unknown }).crops);
}

const cropLabel = (label: string, i: number, n: number): string => (n > 1 ? `${label} ${i < 4 ? `crop ${i + 1}` : "(full)"}` : label);

export class Idefics2Processor implements MediaProcessor {
  readonly options: Readonly<Idefics2ProcessorOptions>;
  private readonly gpu: GpuPreprocessor | undefined;

  /** With `gpu` (the engine's device getter), images are preprocessed on the GPU (CPU fallback per item). */
  constructor(options: Idefics2ProcessorOptions, gpu?: () => GpuContext) {
    const { patchSize, imageSize, imageTokenId, fakeTokenId } = options;
    for (const [name, v] of [["patchSize", patchSize], ["imageSize", imageSize], ["imageTokenId", imageTokenId], ["fakeTokenId", fakeTokenId]] as const) {
      if (!Number.isSafeInteger(v) || v < (name.endsWith("TokenId") ? 0 : 1)) {
        throw new WebvlmError("bad_request", `Idefics2Processor: ${name} must be a ${name.endsWith("TokenId") ? "token id" : "positive integer"}, got ${v}`, { [name]: v });
      }
    }
    if (imageSize < patchSize) throw new WebvlmError("bad_request", `Idefics2Processor: image_size ${imageSize} is smaller than patch_size ${patchSize}`, { imageSize, patchSize });
    if (imageTokenId === fakeTokenId) throw new WebvlmError("bad_request", `Idefics2Processor: <image> and <fake_token_around_image> share id ${imageTokenId}`, { imageTokenId });
    this.options = options;
    this.gpu = gpu ? new GpuPreprocessor(gpu) : undefined;
  }

  /** (Sub-)images per input image: 4 crops + the full image when splitting. */
  get cropsPerImage(): number {
    return this.options.preprocess.doImageSplitting ? 5 : 1;
  }

  async prepare(refs: readonly MediaRef[], signal?: AbortSignal): Promise<PreparedMedia[]> {
    // Reject videos before decoding anything.
    refs.forEach((ref, k) => {
      if (ref.kind !== "image") {
        throw new WebvlmError("unsupported_feature", `Idefics2 takes images only; media item ${k + 1} is a ${ref.kind}`, { kind: ref.kind, item: k + 1 });
      }
    });
    const out: PreparedMedia[] = [];
    try {
      for (const ref of refs) {
        if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
        const label = `image ${out.length + 1}`;
        // transformers' load_image: exif_transpose, then convert("RGB") (alpha dropped, §5.1).
        const load: LoadImageOptions = { label, exifOrientation: true };
        out.push((this.gpu && (await this.prepareGpu(this.gpu, ref, load, signal))) || (await this.prepareCpu(ref, load, signal)));
      }
    } catch (e) {
      releaseMedia(out);
      throw e;
    }
    return out;
  }

  /** Frees the GPU path's normalize tables. */
  dispose(): void {
    this.gpu?.dispose();
  }

  /** The reference path: decode, split, resize and normalize on the CPU. */
  private async prepareCpu(ref: MediaRef, load: LoadImageOptions, signal?: AbortSignal): Promise<PreparedMedia> {
    const { preprocess, patchSize, imageSize } = this.options;
    const label = load.label ?? "image";
    const img = await loadImage(ref.source, signal, load);
    const subImages = processIdefics2Image(img, preprocess);
    const crops = subImages.map((s, i) => idefics2CropPatches(s, patchSize, imageSize, cropLabel(label, i, subImages.length)));
    const payload: Idefics2ImagePayload = { crops };
    return { kind: "image", hash: payloadHash(payload), tokens: preprocess.imageSeqLen * crops.length, payload, device: "cpu" };
  }

  /**
   * The same image on the GPU, bit-identical to prepareCpu: per crop (split_image's regions of the
   * 8-bit image), an 8-bit copy of the region, Pillow's resize, then the valid patch rows normalized
   * through the checkpoint's table into the image's one tensor. Null when a buffer would not fit
   * the device (the caller takes the CPU path).
   */
  private async prepareGpu(gp: GpuPreprocessor, ref: MediaRef, load: LoadImageOptions, signal?: AbortSignal): Promise<PreparedMedia | null> {
    const { preprocess: opts, patchSize: p, imageSize } = this.options;
    const label = load.label ?? "image";
    const ctx = gp.ctx;
    const img = await gp.loadImage(ref.source, signal, load);
    let pixels: Tensor | null = null;
    try {
      const rects = idefics2CropRects(img.width, img.height, opts.doImageSplitting);
      const plans = rects.map((rect, i) => {
        const size = idefics2TargetSize(rect.height, rect.width, opts);
        const grid = idefics2CropGrid(size.height, size.width, p, imageSize, cropLabel(label, i, rects.length));
        const whole = rect.width === img.width && rect.height === img.height;
        return { rect, size, whole, resize: size.width !== rect.width || size.height !== rect.height, ...grid };
      });
      const cols = 3 * p * p;
      const rows = plans.reduce((a, c) => a + c.patchesH * c.patchesW, 0);
      // The patch tensor, and per resized crop: its 8-bit copy, the horizontal pass (at most the
      // crop's rows) and the resized image, all RGBX.
      const bytes = [rows * cols * 4];
      for (const c of plans.filter((x) => x.resize)) {
        bytes.push(c.rect.width * c.rect.height * 4, c.size.width * c.rect.height * 4, c.size.width * c.size.height * 4);
      }
      if (!gp.fits(...bytes)) return null;

      pixels = allocTensor(ctx, [rows, cols], "f32", "idefics2.patch_rows");
      const table = gp.normalizeTable({
        mean: opts.imageMean, std: opts.imageStd, rescaleFactor: opts.rescaleFactor, doRescale: opts.doRescale, doNormalize: opts.doNormalize,
      });
      const rec = new Recorder(ctx);
      const rowOffsets: number[] = [];
      let row = 0;
      for (const c of plans) {
        const { x, y, width, height } = c.rect;
        let src: GpuImage = img;
        let x0 = x;
        let y0 = y;
        if (c.resize) {
          // split_image slices the uint8 image, then each crop is resized on its own (the filter's
          // support never reaches past the crop): an exact 8-bit copy of the region first.
          const crop = c.whole ? img : resizeImage(rec, img, width, height, { box: [x, y, x + width, y + height] });
          src = resizeImage(rec, crop, c.size.width, c.size.height, { filter: opts.resample });
          // Released once recorded: a later kernel of this submit that reuses a buffer writes it after these reads.
          if (crop !== img) releaseImage(ctx, crop);
          x0 = 0;
          y0 = 0;
        }
        // A crop that keeps its size is read in place: its patches start at its top-left pixel.
        imagePatches(rec, [src], table, { patchSize: p, gridW: c.patchesW, gridH: c.patchesH, x0, y0 }, { out: pixels, rowOffset: row });
        if (src !== img) releaseImage(ctx, src);
        rowOffsets.push(row);
        row += c.patchesH * c.patchesW;
      }
      rec.submit();
      const all = pixels;
      const crops: Idefics2PayloadCrop[] = plans.map((c, k) => ({
        height: c.size.height,
        width: c.size.width,
        patchesH: c.patchesH,
        patchesW: c.patchesW,
        patchRows: sliceRows(all, rowOffsets[k], c.patchesH * c.patchesW),
        positionIds: idefics2PositionIds(c.patchesH, c.patchesW, c.positionsPerSide),
      }));
      const payload: Idefics2ImagePayload = { crops, pixels: all, rowOffsets };
      const item = await gp.media("image", opts.imageSeqLen * crops.length, [all], payload);
      pixels = null; // the item owns it now
      // The GPU key covers the rows; the crops' sizes and grids are folded in on the CPU.
      return { ...item, hash: contentHash([cropSizes(crops), new TextEncoder().encode(item.hash)]) };
    } finally {
      releaseImage(ctx, img);
      if (pixels) ctx.pool.release(pixels.buffer);
    }
  }

  /**
   * One placeholder kind, <image>: each image's single <image> becomes
   * (F + I x image_seq_len + F) x crops, and doubled F collapse to one — the two string
   * replaces of Idefics2Processor.__call__ on ids.
   */
  placeholders(media: readonly PreparedMedia[]): MediaPlaceholder[] {
    const { imageTokenId: I, fakeTokenId: F, preprocess } = this.options;
    const n = preprocess.imageSeqLen;
    const counts: number[] = [];
    const expansions: number[][] = [];
    for (const m of media) {
      const crops = isPayload(m.payload) ? m.payload.crops.length : this.cropsPerImage;
      const group = [F, ...new Array<number>(n).fill(I), F];
      const ids: number[] = [];
      for (let c = 0; c < crops; c++) ids.push(...group);
      counts.push(n * crops);
      expansions.push(ids);
    }
    return [{ tokenId: I, counts, expansions, collapseDoubled: F, kind: "image" }];
  }
}
