// Phi3VProcessor: request images -> the crops CLIP reads (global view first, then the HD tiles
// row-major) as Conv2d patch rows, and each image's run of placeholder ids (/work/shared/PHI3V.md
// §3, §5). The prompt side (numbered <|image_k|> tags, chunk-wise tokenization) is prompt.ts.
//
// The HF processor writes -k at image k's positions; the engine carries non-negative ids only, so
// the prompt uses the tokenizer's <|image|> id there (vLLM's choice); the model overwrites those
// rows with the image features either way. The original also pads each image's crop list with zero
// tiles to num_crops + 1; their features are discarded, so the payload holds only the used crops.
//
// Given the engine's GPU (ProcessorContext.gpu), images are processed on the GPU (gpu_preprocess.ts,
// bit-identical) and the payload's patch rows are a GPU tensor; the CPU path below stays the
// reference and the per-item fallback (an item whose buffers the device cannot bind).
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { isTensor, type Tensor } from "../../gpu/tensor.ts";
import { GpuPreprocessor, releaseMedia } from "../../vision/gpu_preprocess.ts";
import { loadImage, type LoadImageOptions } from "../../vision/load_image.ts";
import type { Chw32 } from "../../vision/canvas.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { MediaProcessor, MediaRef, PreparedMedia, ProcessorContext } from "../family.ts";
import { preparePhi3VGpu } from "./gpu_preprocess.ts";
import {
  checkNumCrops, parsePhi3VPreprocess, PHI3V_CROP_SIZE, processPhi3VImage, type Phi3VPixels, type Phi3VPreprocessOptions,
} from "./image_processor.ts";

/** The added token the prompt carries at image positions (id 32044 in the real tokenizer; vLLM's placeholder). */
export const PHI3V_IMAGE_TOKEN = "<|image|>";

/** CLIP's patch side; the 336x336 crop is a 24x24 patch grid. */
export const PHI3V_PATCH_SIZE = 14;
/** Patches per crop (24 x 24, row-major). */
export const PHI3V_PATCHES_PER_CROP = (PHI3V_CROP_SIZE / PHI3V_PATCH_SIZE) ** 2;
/** Values per patch row: 3 x 14 x 14, flattened (c, y, x) like the Conv2d weight's reshape(C, 3*14*14). */
export const PHI3V_PATCH_ROW = 3 * PHI3V_PATCH_SIZE * PHI3V_PATCH_SIZE;

/** What the Phi-3-vision model reads of one image. */
export interface Phi3VImagePayload {
  /** image_size = [height, width] of the HD image, both multiples of 336. */
  height: number;
  width: number;
  /** Crop rows and columns: height / 336, width / 336. */
  hc: number;
  wc: number;
  /** Placeholder tokens of the image: (hc*wc + 1)*144 + 1 + (hc + 1)*12. */
  numImgTokens: number;
  /**
   * [(1 + hc*wc) * 576, 3*14*14]: the crops in order (the global view, then the HD tiles
   * row-major), each crop's 24x24 patches row-major, each patch flattened (c, y, x): host values
   * (CPU path) or a GPU tensor of that shape (GPU path; PreparedMedia.release frees it).
   */
  patchRows: Float32Array | Tensor;
}

export interface Phi3VProcessorOptions {
  /** The id the prompt carries at image positions: the tokenizer's <|image|> added token. */
  imageTokenId: number;
  preprocess: Phi3VPreprocessOptions;
}

/** Writes the patches of the 336x336 crop at (left, top) of `img` as rows from `out[offset]`. */
function writeCropPatches(img: Chw32, left: number, top: number, out: Float32Array, offset: number): void {
  const p = PHI3V_PATCH_SIZE;
  const side = PHI3V_CROP_SIZE / p;
  const plane = img.width * img.height;
  let o = offset;
  for (let py = 0; py < side; py++) {
    for (let px = 0; px < side; px++) {
      for (let c = 0; c < img.channels; c++) {
        for (let y = 0; y < p; y++) {
          const from = c * plane + (top + py * p + y) * img.width + left + px * p;
          out.set(img.data.subarray(from, from + p), o);
          o += p;
        }
      }
    }
  }
}

/** The patch rows of one processed image: global view first, then the HD tiles row-major. */
export function phi3vPatchRows(pixels: Phi3VPixels): Float32Array {
  const { hc, wc } = pixels.geometry;
  const crop = PHI3V_PATCHES_PER_CROP * PHI3V_PATCH_ROW;
  const out = new Float32Array((1 + hc * wc) * crop);
  writeCropPatches(pixels.global, 0, 0, out, 0);
  for (let r = 0; r < hc; r++) {
    for (let c = 0; c < wc; c++) writeCropPatches(pixels.hd, c * PHI3V_CROP_SIZE, r * PHI3V_CROP_SIZE, out, (1 + r * wc + c) * crop);
  }
  return out;
}

/** Content key of an image: its sizes and the uint8 HD image every float value is a function of. */
function pixelsHash(pixels: Phi3VPixels): string {
  const g = pixels.geometry;
  return contentHash([new Int32Array([g.height, g.width, g.numImgTokens]), pixels.hd8.data]);
}

/** Whether a payload is this family's: sizes and patch rows on the CPU or the GPU. */
export function isPhi3VPayload(p: unknown): p is Phi3VImagePayload {
  if (typeof p !== "object" || p === null) return false;
  const q = p as Partial<Phi3VImagePayload>;
  return typeof q.numImgTokens === "number" && typeof q.hc === "number" && typeof q.wc === "number"
    && (q.patchRows instanceof Float32Array || isTensor(q.patchRows));
}

export class Phi3VProcessor implements MediaProcessor {
  readonly options: Readonly<Phi3VProcessorOptions>;
  /** The GPU path's handle (absent: every image on the CPU). */
  private readonly gpu: GpuPreprocessor | undefined;

  /** `gpu`: the engine's device getter (ProcessorContext.gpu); given, images are processed on the GPU. */
  constructor(options: Phi3VProcessorOptions, gpu?: () => GpuContext) {
    const { imageTokenId, preprocess } = options;
    if (!Number.isSafeInteger(imageTokenId) || imageTokenId < 0) {
      throw new WebvlmError("bad_request", `Phi3VProcessor: imageTokenId must be a token id, got ${imageTokenId}`, { imageTokenId });
    }
    checkNumCrops(preprocess.numCrops, "Phi3VProcessor");
    this.options = options;
    this.gpu = gpu ? new GpuPreprocessor(gpu) : undefined;
  }

  /** Frees the GPU path's normalize table. */
  dispose(): void {
    this.gpu?.dispose();
  }

  async prepare(refs: readonly MediaRef[], signal?: AbortSignal): Promise<PreparedMedia[]> {
    const { preprocess } = this.options;
    // Reject videos and bad num_crops before decoding anything.
    const crops = refs.map((ref, k) => {
      if (ref.kind !== "image") {
        throw new WebvlmError("unsupported_feature", `Phi-3-vision takes images only; media item ${k + 1} is a ${ref.kind}`, { kind: ref.kind, item: k + 1 });
      }
      const n = ref.options.numCrops;
      return n === undefined ? preprocess.numCrops : checkNumCrops(n, `image ${k + 1}`);
    });
    const out: PreparedMedia[] = [];
    try {
      for (const [k, ref] of refs.entries()) {
        if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
        // The remote code opens images with PIL (no EXIF transpose) and convert("RGB") drops alpha;
        // the shared loaders do both by default.
        const load: LoadImageOptions = { label: `image ${k + 1}` };
        const onGpu = this.gpu && (await preparePhi3VGpu(this.gpu, ref.source, preprocess, crops[k], load, signal));
        out.push(onGpu || (await this.prepareCpu(ref.source, crops[k], load, signal)));
      }
    } catch (e) {
      releaseMedia(out);
      throw e;
    }
    return out;
  }

  /** One image on the CPU: the reference path, and the fallback for an item the GPU cannot hold. */
  private async prepareCpu(source: unknown, numCrops: number, load: LoadImageOptions, signal?: AbortSignal): Promise<PreparedMedia> {
    const img = await loadImage(source, signal, load);
    const pixels = processPhi3VImage(img, this.options.preprocess, numCrops);
    const g = pixels.geometry;
    const payload: Phi3VImagePayload = {
      height: g.height, width: g.width, hc: g.hc, wc: g.wc, numImgTokens: g.numImgTokens, patchRows: phi3vPatchRows(pixels),
    };
    return { kind: "image", hash: pixelsHash(pixels), tokens: g.numImgTokens, payload, device: "cpu" };
  }

  /** One placeholder kind: image k becomes numImgTokens copies of <|image|> (prompt.ts puts them at its tag). */
  placeholders(media: readonly PreparedMedia[]): MediaPlaceholder[] {
    const counts = media.map((m, k) => {
      if (!isPhi3VPayload(m.payload)) throw new WebvlmError("internal", `phi3_v: media item ${k + 1} was not prepared by this family's processor`);
      return m.payload.numImgTokens;
    });
    return [{ tokenId: this.options.imageTokenId, counts, kind: "image" }];
  }
}

/** The processor of a checkpoint: preprocessor_config.json's settings and the tokenizer's <|image|> id. */
export function createPhi3VProcessor(ctx: ProcessorContext): Phi3VProcessor {
  const imageTokenId = ctx.addedTokenId(PHI3V_IMAGE_TOKEN);
  if (imageTokenId === undefined) {
    throw new WebvlmError("bad_request", `phi3_v: the tokenizer has no ${PHI3V_IMAGE_TOKEN} added token (the id image positions carry)`, { token: PHI3V_IMAGE_TOKEN });
  }
  return new Phi3VProcessor({ imageTokenId, preprocess: parsePhi3VPreprocess(ctx.preprocessorConfig) }, ctx.gpu);
}
