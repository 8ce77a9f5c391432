// Idefics2Processor: request images -> per-(sub-)image patches for the vision tower, and the
// prompt expansion of each <image> (/work/shared/IDEFICS2.md §4.3, §5, §6.2-6.4).
//
// transformers pads every (sub-)image of a request to the request's largest one; padding never
// changes a valid patch or its position id (patches.ts), so each crop's valid patches are all the
// GPU needs and the payload keeps them per crop, unpadded.
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import { loadImage } from "../../vision/load_image.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { MediaProcessor, MediaRef, PreparedMedia } from "../family.ts";
import { processIdefics2Image, type Idefics2PreprocessOptions } from "./image_processor.ts";
import { idefics2CropPatches, type Idefics2CropPatches } from "./patches.ts";

/** What the Idefics2 model reads of one image: its crops in prompt order (crops 1-4, then the full image). */
export interface Idefics2ImagePayload {
  crops: Idefics2CropPatches[];
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

/** Content key of an image's crops: their sizes, grids and valid patch values. */
function payloadHash(payload: Idefics2ImagePayload): string {
  const sizes = new Int32Array(1 + payload.crops.length * 4);
  sizes[0] = payload.crops.length;
  payload.crops.forEach((c, k) => sizes.set([c.height, c.width, c.patchesH, c.patchesW], 1 + k * 4));
  return contentHash([sizes, ...payload.crops.map((c) => c.patchRows)]);
}

function isPayload(p: unknown): p is Idefics2ImagePayload {
  return typeof p === "object" && p !== null && Array.isArray((p as { crops?: unknown }).crops);
}

export class Idefics2Processor implements MediaProcessor {
  readonly options: Readonly<Idefics2ProcessorOptions>;

  constructor(options: Idefics2ProcessorOptions) {
    const { patchSize, imageSize, imageTokenId, fakeTokenId } = options;
    for (const [name, v] of [["patchSize", patchSize], ["imageSize", imageSize], ["imageTokenId", imageTokenId], ["fakeTokenId", fakeTokenId]] as const) {
      if (!Number.isSafeInteger(v) || v < (name.endsWith("TokenId") ? 0 : 1)) {
        throw new WebvlmError("bad_request", `Idefics2Processor: ${name} must be a ${name.endsWith("TokenId") ? "token id" : "positive integer"}, got ${v}`, { [name]: v });
      }
    }
    if (imageSize < patchSize) throw new WebvlmError("bad_request", `Idefics2Processor: image_size ${imageSize} is smaller than patch_size ${patchSize}`, { imageSize, patchSize });
    if (imageTokenId === fakeTokenId) throw new WebvlmError("bad_request", `Idefics2Processor: <image> and <fake_token_around_image> share id ${imageTokenId}`, { imageTokenId });
    this.options = options;
  }

  /** (Sub-)images per input image: 4 crops + the full image when splitting. */
  get cropsPerImage(): number {
    return this.options.preprocess.doImageSplitting ? 5 : 1;
  }

  async prepare(refs: readonly MediaRef[], signal?: AbortSignal): Promise<PreparedMedia[]> {
    const { preprocess, patchSize, imageSize } = this.options;
    // Reject videos before decoding anything.
    refs.forEach((ref, k) => {
      if (ref.kind !== "image") {
        throw new WebvlmError("unsupported_feature", `Idefics2 takes images only; media item ${k + 1} is a ${ref.kind}`, { kind: ref.kind, item: k + 1 });
      }
    });
    const out: PreparedMedia[] = [];
    for (const ref of refs) {
      if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
      const label = `image ${out.length + 1}`;
      // transformers' load_image: exif_transpose, then convert("RGB") (the shared loader drops alpha).
      const img = await loadImage(ref.source, signal, { label, exifOrientation: true });
      const subImages = processIdefics2Image(img, preprocess);
      const crops = subImages.map((s, i) =>
        idefics2CropPatches(s, patchSize, imageSize, subImages.length > 1 ? `${label} ${i < 4 ? `crop ${i + 1}` : "(full)"}` : label));
      const payload: Idefics2ImagePayload = { crops };
      out.push({ kind: "image", hash: payloadHash(payload), tokens: preprocess.imageSeqLen * crops.length, payload, device: "cpu" });
    }
    return out;
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
