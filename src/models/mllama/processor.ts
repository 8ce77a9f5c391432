// MllamaProcessor's media side (/work/shared/MLLAMA.md §3, §5): request images -> per-image tiles
// packed to max_image_tiles, and the prompt's one <|image|> token per image. Llama 3.2 Vision
// reads images through cross-attention, so an image occupies no placeholder run (tokens: 0) and
// its <|image|> token stays one token; the cross-attention mask comes from the ids (cross_mask.ts).
// Given a device (ProcessorContext.gpu) the pixels are processed on the GPU (gpu_tiles.ts) into the
// vision tower's patch rows, bit-identical to the CPU path, which stays the reference and the
// per-image fallback.
import { WebvlmError } from "../../api/errors.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { isTensor, type Tensor } from "../../gpu/tensor.ts";
import { loadImage } from "../../vision/load_image.ts";
import { GpuPreprocessor, releaseMedia } from "../../vision/gpu_preprocess.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { MediaProcessor, MediaRef, PreparedMedia, ProcessorContext } from "../family.ts";
import { mllamaGeometryHash, mllamaLoadOptions, prepareMllamaImageGpu } from "./gpu_tiles.ts";
import { parseMllamaPreprocess, processMllamaImage, supportedAspectRatios, type MllamaImageLayout, type MllamaPreprocessOptions } from "./image_processor.ts";

/** What the Llama 3.2 Vision model reads of one image (PreparedMedia.payload). */
export interface MllamaImagePayload {
  /**
   * CPU path: pixel_values f32 [maxTiles, 3, tile, tile], tiles numTiles.. exact zeros (the vision
   * encoder still runs them). GPU path: a GPU tensor of the same values already cut into the patch
   * conv's input rows, f32 [maxTiles * (tile / patch)^2, 3 * patch * patch] (= mllamaPatchRows of
   * the former); the model reads it in place and never releases it (PreparedMedia.release does).
   */
  pixelValues: Float32Array | Tensor;
  /** aspect_ratio_id: 1-based index of (rows, cols) in the supported aspect ratios. */
  aspectRatioId: number;
  /** rows * cols: tiles < numTiles are real (aspect_ratio_mask 1). */
  numTiles: number;
  /** Tiles vertically. */
  rows: number;
  /** Tiles horizontally. */
  cols: number;
}

export interface MllamaProcessorOptions {
  /** config.json image_token_index / image_token_id (<|image|>, 128256). */
  imageTokenId: number;
  preprocess: MllamaPreprocessOptions;
  /** vision_config.patch_size: the GPU path cuts patch rows of this size (without it: CPU only). */
  patchSize?: number;
}

const payloadOf = (layout: MllamaImageLayout, pixelValues: Float32Array | Tensor): MllamaImagePayload => ({
  pixelValues,
  aspectRatioId: layout.aspectRatioId,
  numTiles: layout.numTiles,
  rows: layout.grid.rows,
  cols: layout.grid.cols,
});

/** Narrows a PreparedMedia payload to MllamaImagePayload (the model checks what it is given). */
export function isMllamaImagePayload(p: unknown): p is MllamaImagePayload {
  if (typeof p !== "object" || p === null) return false;
  const q = p as Partial<MllamaImagePayload>;
  return (q.pixelValues instanceof Float32Array || isTensor(q.pixelValues)) && typeof q.aspectRatioId === "number" && typeof q.numTiles === "number"
    && typeof q.rows === "number" && typeof q.cols === "number";
}

export class MllamaProcessor implements MediaProcessor {
  readonly options: Readonly<MllamaProcessorOptions>;
  private readonly gpu: GpuPreprocessor | undefined;

  /** `gpu`: the device for GPU preprocessing (ProcessorContext.gpu); used when options.patchSize is set. */
  constructor(options: MllamaProcessorOptions, gpu?: () => GpuContext) {
    const { imageTokenId } = options;
    if (!Number.isSafeInteger(imageTokenId) || imageTokenId < 0) {
      throw new WebvlmError("bad_request", `MllamaProcessor: imageTokenId must be a token id, got ${imageTokenId}`, { imageTokenId });
    }
    this.options = options;
    this.gpu = gpu && options.patchSize !== undefined ? new GpuPreprocessor(gpu) : undefined;
  }

  /** Frees the GPU path's normalize table. */
  dispose(): void {
    this.gpu?.dispose();
  }

  async prepare(refs: readonly MediaRef[], signal?: AbortSignal): Promise<PreparedMedia[]> {
    const { preprocess } = this.options;
    // Reject videos before decoding anything.
    refs.forEach((ref, k) => {
      if (ref.kind !== "image") {
        throw new WebvlmError("unsupported_feature", `Llama 3.2 Vision takes images only; media item ${k + 1} is a ${ref.kind}`, { kind: ref.kind, item: k + 1 });
      }
    });
    const out: PreparedMedia[] = [];
    try {
      for (const ref of refs) {
        if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
        const label = `image ${out.length + 1}`;
        const onGpu = this.gpu && this.options.patchSize !== undefined
          ? await prepareMllamaImageGpu(this.gpu, ref.source, signal, label, preprocess, this.options.patchSize, payloadOf)
          : null;
        out.push(onGpu ?? (await this.prepareCpu(ref, label, signal)));
      }
    } catch (e) {
      releaseMedia(out);
      throw e;
    }
    return out;
  }

  /** The reference path (and the per-image fallback): tiles on the CPU, uploaded by the model. */
  private async prepareCpu(ref: MediaRef, label: string, signal?: AbortSignal): Promise<PreparedMedia> {
    const { preprocess } = this.options;
    const img = await loadImage(ref.source, signal, mllamaLoadOptions(label, preprocess));
    const done = processMllamaImage(img, preprocess);
    return { kind: "image", hash: mllamaGeometryHash(done, done.pixelValues), tokens: 0, payload: payloadOf(done, done.pixelValues), device: "cpu" };
  }

  /** One <|image|> token per image, kept as one token (counts 1). */
  placeholders(media: readonly PreparedMedia[]): MediaPlaceholder[] {
    return [{ kind: "image", tokenId: this.options.imageTokenId, counts: media.map(() => 1) }];
  }
}

/** What the processor must agree with in config.json. */
export interface MllamaProcessorModelConfig {
  /** image_token_index (<|image|>). */
  imageTokenId: number;
  /** vision_config.image_size: the tile side. */
  tileSize: number;
  /** vision_config.max_num_tiles: the tiles the encoder runs per image. */
  maxNumTiles: number;
  /** len(vision_config.supported_aspect_ratios): aspect ratio ids must index its embeddings. */
  numAspectRatios?: number;
  /** vision_config.patch_size: the GPU path's patch rows (absent: CPU preprocessing only). */
  patchSize?: number;
}

const mismatch = (msg: string, details: Record<string, unknown>): WebvlmError => new WebvlmError("bad_request", msg, details);

/**
 * The family's processor from the checkpoint's files (ModelFamily.createProcessor): parses
 * preprocessor_config.json and checks it against config.json (tile size, tile count, aspect ratio
 * ids) and the tokenizer (<|image|> is an added token with config.json's id).
 */
export function createMllamaProcessor(model: MllamaProcessorModelConfig, ctx: ProcessorContext): MllamaProcessor {
  const preprocess = parseMllamaPreprocess(ctx.preprocessorConfig);
  if (preprocess.tileSize !== model.tileSize) {
    throw mismatch(`preprocessor_config.json: size ${preprocess.tileSize} differs from config.json vision_config.image_size ${model.tileSize}`, {
      file: "preprocessor_config.json", field: "size", value: preprocess.tileSize, expected: model.tileSize,
    });
  }
  if (preprocess.maxImageTiles !== model.maxNumTiles) {
    throw mismatch(`preprocessor_config.json: max_image_tiles ${preprocess.maxImageTiles} differs from config.json vision_config.max_num_tiles ${model.maxNumTiles}`, {
      file: "preprocessor_config.json", field: "max_image_tiles", value: preprocess.maxImageTiles, expected: model.maxNumTiles,
    });
  }
  const ids = supportedAspectRatios(preprocess.maxImageTiles).length;
  if (model.numAspectRatios !== undefined && ids > model.numAspectRatios) {
    throw mismatch(`preprocessor_config.json: max_image_tiles ${preprocess.maxImageTiles} gives ${ids} aspect ratio ids, config.json lists ${model.numAspectRatios} supported_aspect_ratios`, {
      file: "preprocessor_config.json", field: "max_image_tiles", value: preprocess.maxImageTiles,
    });
  }
  const tokenizerId = ctx.addedTokenId("<|image|>");
  if (tokenizerId !== model.imageTokenId) {
    throw mismatch(tokenizerId === undefined
      ? `the tokenizer has no <|image|> token (config.json image_token_index ${model.imageTokenId})`
      : `the tokenizer's <|image|> is ${tokenizerId}, config.json image_token_index is ${model.imageTokenId}`,
    { token: "<|image|>", tokenizerId, imageTokenId: model.imageTokenId });
  }
  return new MllamaProcessor({ imageTokenId: model.imageTokenId, preprocess, ...(model.patchSize !== undefined ? { patchSize: model.patchSize } : {}) }, ctx.gpu);
}
