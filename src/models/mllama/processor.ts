// MllamaProcessor's media side (/work/shared/MLLAMA.md §3, §5): request images -> per-image tiles
// packed to max_image_tiles, and the prompt's one <|image|> token per image. Llama 3.2 Vision
// reads images through cross-attention, so an image occupies no placeholder run (tokens: 0) and
// its <|image|> token stays one token; the cross-attention mask comes from the ids (cross_mask.ts).
import { contentHash } from "../common/content_hash.ts";
import { WebvlmError } from "../../api/errors.ts";
import { loadImage } from "../../vision/load_image.ts";
import type { MediaPlaceholder } from "../../tokenizer/chat_template.ts";
import type { MediaProcessor, MediaRef, PreparedMedia, ProcessorContext } from "../family.ts";
import { parseMllamaPreprocess, processMllamaImage, supportedAspectRatios, type MllamaPreprocessOptions } from "./image_processor.ts";

/** What the Llama 3.2 Vision model reads of one image (PreparedMedia.payload). */
export interface MllamaImagePayload {
  /** [maxTiles, 3, tile, tile], tiles numTiles.. exact zeros (the vision encoder still runs them). */
  pixelValues: Float32Array;
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
}

/** Transformers' convert_to_rgb composites transparent images over opaque white. */
const WHITE: readonly [number, number, number] = [255, 255, 255];

/** Content key of an image: its geometry and pixel values. */
function payloadHash(p: MllamaImagePayload): string {
  return contentHash([new Int32Array([p.aspectRatioId, p.numTiles, p.rows, p.cols]), p.pixelValues]);
}

/** Narrows a PreparedMedia payload to MllamaImagePayload (the model checks what it is given). */
export function isMllamaImagePayload(p: unknown): p is MllamaImagePayload {
  if (typeof p !== "object" || p === null) return false;
  const q = p as Partial<MllamaImagePayload>;
  return q.pixelValues instanceof Float32Array && typeof q.aspectRatioId === "number" && typeof q.numTiles === "number"
    && typeof q.rows === "number" && typeof q.cols === "number";
}

export class MllamaProcessor implements MediaProcessor {
  readonly options: Readonly<MllamaProcessorOptions>;

  constructor(options: MllamaProcessorOptions) {
    const { imageTokenId } = options;
    if (!Number.isSafeInteger(imageTokenId) || imageTokenId < 0) {
      throw new WebvlmError("bad_request", `MllamaProcessor: imageTokenId must be a token id, got ${imageTokenId}`, { imageTokenId });
    }
    this.options = options;
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
    for (const ref of refs) {
      if (signal?.aborted) throw new WebvlmError("aborted", "the request was aborted while preparing images");
      const label = `image ${out.length + 1}`;
      // No EXIF rotation (the processor takes PIL images as opened); transparency over white.
      const img = await loadImage(ref.source, signal, { label, ...(preprocess.doConvertRgb ? { alphaBackground: WHITE } : {}) });
      const done = processMllamaImage(img, preprocess);
      const payload: MllamaImagePayload = {
        pixelValues: done.pixelValues,
        aspectRatioId: done.aspectRatioId,
        numTiles: done.numTiles,
        rows: done.grid.rows,
        cols: done.grid.cols,
      };
      out.push({ kind: "image", hash: payloadHash(payload), tokens: 0, payload, device: "cpu" });
    }
    return out;
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
  return new MllamaProcessor({ imageTokenId: model.imageTokenId, preprocess });
}
