// Phi-3.5-vision config.json -> one typed config (PHI3V.md §1, §2). The decoder is Phi-3's
// (fused qkv_proj / gate_up_proj, su/longrope rotary with short/long factors, sliding_window)
// through the shared decoder parser. The CLIP tower's sizes are not in config.json (the remote
// code hard-codes ViT-L/14-336): phi3VVisionConfig reads them from the checkpoint's tensors, so
// any checkpoint of the architecture (tiny ones included) loads.
import { WebvlmError } from "../../api/errors.ts";
import type { TensorSource } from "../common/source.ts";
import { int, isObj, parseDecoderConfig, specialIds, windowOf, type DecoderConfig, type DecoderFamilyTraits } from "../decoder/config.ts";

export const PHI3V_ARCHITECTURES = ["Phi3VForCausalLM"] as const;

/** Fixed by the HD transform (§2): 336 px tiles of 14 px patches, a 24x24 grid, 577 positions. */
export const PHI3V_IMAGE_SIZE = 336;
export const PHI3V_PATCH_SIZE = 14;
export const PHI3V_GRID = PHI3V_IMAGE_SIZE / PHI3V_PATCH_SIZE;
/** Tokens per tile through CLIP: the class token + 24 x 24 patches. */
export const PHI3V_TILE_TOKENS = PHI3V_GRID * PHI3V_GRID + 1;
/** Values per patch row (c, y, x). */
export const PHI3V_PATCH_DIM = 3 * PHI3V_PATCH_SIZE * PHI3V_PATCH_SIZE;

export interface Phi3VConfig {
  architecture: string;
  modelType: "phi3_v";
  /** The Phi-3 language model as the shared decoder sees it. */
  text: DecoderConfig;
  /** img_processor.image_dim_out: the CLIP width (checked against the patch embedding at load). */
  imageDimOut: number;
  /** img_processor.layer_idx: which hidden state feeds the projection (default -2, as the remote code). */
  layerIdx: number;
  /** The placeholder id of image positions (vLLM's <|image|> 32044; the tokenizer's id wins, see family.ts). */
  imageTokenId: number;
  /** Stop ids: generation_config's first, then config.json's. */
  eosTokenIds: number[];
  bosTokenId: number | null;
  padTokenId: number | null;
}

/** CLIP sizes read from the tensors (§2). */
export interface Phi3VVisionConfig {
  /** C: patch_embedding rows. */
  hiddenSize: number;
  /** CI: fc1 rows. */
  intermediateSize: number;
  /** Encoder layers in the checkpoint (1 + the largest index present). */
  numLayers: number;
  /** Layers run: hidden_states[layer_idx] is the output of this many layers (-2 -> numLayers - 1). */
  layersUsed: number;
  /** C / 64. */
  numHeads: number;
  headDim: number;
  layerNormEps: number;
}

type Json = Record<string, unknown>;
const bad = (msg: string): WebvlmError => new WebvlmError("bad_request", `config.json: ${msg}`);

/** Phi3Config's defaults (configuration_phi3_v.py) where the checkpoint leaves keys out. */
export const PHI3V_TEXT_TRAITS: DecoderFamilyTraits = {
  family: "phi3_v",
  qkvLayout: "fused",
  gateUpLayout: "fused",
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  defaultTheta: 10000,
  defaultEps: 1e-5,
  defaultMaxPositions: 4096,
  defaultTied: false,
  configDefaults: { original_max_position_embeddings: 4096, vocab_size: 32064 },
  // The remote code's eager mask (_prepare_4d_causal_attention_mask, diagonal past - window - 1)
  // hides only keys MORE than sliding_window positions back: a query sees window + 1 keys, while
  // the decoder's window counts the keys seen ((p - window, p]).
  windows: (cfg, n) => {
    const w = windowOf(cfg.sliding_window);
    return Array.from({ length: n }, () => (w === null ? null : w + 1));
  },
};

function checkArchitecture(json: Json): string {
  const archs = Array.isArray(json.architectures) ? (json.architectures as unknown[]) : [];
  const known = archs.find((a) => (PHI3V_ARCHITECTURES as readonly unknown[]).includes(a)) as string | undefined;
  const modelType = json.model_type;
  const typeOk = modelType === "phi3_v" || (modelType === undefined && known !== undefined);
  if (!typeOk || (archs.length > 0 && !known)) {
    throw new WebvlmError(
      "unsupported_architecture",
      `unsupported model: model_type ${JSON.stringify(modelType ?? null)}, architectures ${JSON.stringify(archs)}; expected phi3_v / ${PHI3V_ARCHITECTURES[0]}`,
      { modelType, architectures: archs },
    );
  }
  return known ?? PHI3V_ARCHITECTURES[0];
}

/** embd_layer: only the combination the remote code implements (§1) is accepted. */
function checkEmbdLayer(json: Json): void {
  const e = json.embd_layer;
  if (e === undefined || e === null) return;
  if (!isObj(e)) throw bad("embd_layer must be an object");
  const want: Record<string, unknown> = { embedding_cls: "image", hd_transform_order: "sub_glb", projection_cls: "mlp", use_hd_transform: true, with_learnable_separator: true };
  for (const [k, v] of Object.entries(want)) {
    if (e[k] !== undefined && e[k] !== v) {
      throw new WebvlmError("unsupported_feature", `phi3_v: embd_layer.${k} ${JSON.stringify(e[k])} is not supported (only ${JSON.stringify(v)})`, { key: k, value: e[k] });
    }
  }
}

/**
 * Parses config.json (already JSON-decoded); `generationConfig` (generation_config.json), when
 * given, contributes its eos/bos/pad ids first.
 */
export function parsePhi3VConfig(json: unknown, generationConfig?: unknown): Phi3VConfig {
  if (!isObj(json)) throw bad("not a JSON object");
  const architecture = checkArchitecture(json);
  checkEmbdLayer(json);
  const text = parseDecoderConfig(json, PHI3V_TEXT_TRAITS);
  const ip = json.img_processor;
  if (ip !== undefined && ip !== null && !isObj(ip)) throw bad("img_processor must be an object");
  const img: Json = isObj(ip) ? ip : {};
  const typeFeature = img.type_feature ?? "patch";
  if (typeFeature !== "patch") throw new WebvlmError("unsupported_feature", `phi3_v: img_processor.type_feature ${JSON.stringify(typeFeature)} is not supported (patch)`);
  const layerIdx = img.layer_idx ?? -2;
  if (!Number.isSafeInteger(layerIdx)) throw bad(`img_processor.layer_idx must be an integer, got ${JSON.stringify(layerIdx)}`);
  const ids = specialIds({ bos_token_id: 1, eos_token_id: 2, ...json }, generationConfig);
  return {
    architecture,
    modelType: "phi3_v",
    text,
    imageDimOut: int(img.image_dim_out, "img_processor.image_dim_out", 1024),
    layerIdx: layerIdx as number,
    imageTokenId: int(json.image_token_id, "image_token_id", 32044, 0),
    eosTokenIds: ids.eos,
    bosTokenId: ids.bos,
    padTokenId: ids.pad,
  };
}

export const VISION_PREFIX = "model.vision_embed_tokens.img_processor.vision_model.";

/**
 * The CLIP sizes of a checkpoint from its tensors (§2): C from the patch embedding, the layer
 * count from the largest layer index present, CI from fc1, heads = C / 64; the layers run from
 * layer_idx (hidden_states has numLayers + 1 entries, the first after pre_layrnorm).
 */
export function phi3VVisionConfig(config: Phi3VConfig, source: Pick<TensorSource, "has" | "shape">): Phi3VVisionConfig {
  const patch = `${VISION_PREFIX}embeddings.patch_embedding.weight`;
  if (!source.has(patch)) throw new WebvlmError("missing_tensor", `tensor "${patch}" not found in the checkpoint`, { tensor: patch });
  const C = source.shape(patch)[0];
  if (!Number.isSafeInteger(C) || C < 64 || C % 64 !== 0) {
    throw new WebvlmError("shape_mismatch", `"${patch}": CLIP width ${C} is not a multiple of the head dim 64`, { tensor: patch, shape: [...source.shape(patch)] });
  }
  if (C !== config.imageDimOut) throw bad(`img_processor.image_dim_out ${config.imageDimOut} differs from the patch embedding's width ${C}`);
  let numLayers = 0;
  while (source.has(`${VISION_PREFIX}encoder.layers.${numLayers}.layer_norm1.weight`)) numLayers++;
  if (numLayers === 0) throw new WebvlmError("missing_tensor", `no CLIP encoder layers (${VISION_PREFIX}encoder.layers.0.*) in the checkpoint`);
  const fc1 = `${VISION_PREFIX}encoder.layers.0.mlp.fc1.weight`;
  if (!source.has(fc1)) throw new WebvlmError("missing_tensor", `tensor "${fc1}" not found in the checkpoint`, { tensor: fc1 });
  const layersUsed = config.layerIdx < 0 ? numLayers + 1 + config.layerIdx : config.layerIdx;
  if (layersUsed < 0 || layersUsed > numLayers) {
    throw bad(`img_processor.layer_idx ${config.layerIdx} outside the ${numLayers + 1} hidden states of a ${numLayers}-layer CLIP`);
  }
  return {
    hiddenSize: C,
    intermediateSize: source.shape(fc1)[0],
    numLayers,
    layersUsed,
    numHeads: C / 64,
    headDim: 64,
    layerNormEps: 1e-5,
  };
}
