// Llama 3.2 Vision's config.json (MLLAMA.md §1): text_config is a Llama 3.1 decoder (llama3 rope
// scaling) whose cross_attention_layers are gated cross-attention layers; vision_config is the
// tiled ViT (local + gated global transformer, intermediate-layer taps). Both spellings transformers
// has written are accepted (attention_heads / num_attention_heads, image_token_index / image_token_id).
import { WebvlmError } from "../../api/errors.ts";
import { int, isObj, parseDecoderConfig, specialIds, type DecoderConfig } from "../decoder/config.ts";
import { parseVitActivation, type VitActivation } from "../vit/encoder.ts";

export const MLLAMA_ARCHITECTURES = ["MllamaForConditionalGeneration"] as const;

export interface MllamaVisionConfig {
  hiddenSize: number;
  numHeads: number;
  headDim: number;
  intermediateSize: number;
  act: VitActivation;
  /** Local transformer layers (num_hidden_layers). */
  numLayers: number;
  numGlobalLayers: number;
  /** Layers whose INPUT hidden state joins the output (0 = the padded layernorm_pre output). */
  intermediateLayers: number[];
  /** image_size: the tile side. */
  tileSize: number;
  patchSize: number;
  numChannels: number;
  normEps: number;
  /** T: every image runs T tiles. */
  maxNumTiles: number;
  /** supported_aspect_ratios as (rows, cols); aspect ratio ids are 1-based into this list. */
  aspectRatios: [number, number][];
  /** Patches per tile side squared (n). */
  patchesPerTile: number;
  /** P = n + 1 (class token). */
  tokensPerTile: number;
  /** L = P padded to a multiple of 8. */
  paddedTokensPerTile: number;
  /** D * (1 + intermediate layers): the projector's input width. */
  outputDim: number;
}

export interface MllamaConfig {
  text: DecoderConfig;
  vision: MllamaVisionConfig;
  imageTokenId: number;
  eosTokenIds: number[];
  bosTokenId: number | null;
}

type Json = Record<string, unknown>;
const bad = (msg: string, details?: Record<string, unknown>): WebvlmError => new WebvlmError("bad_request", `config.json: ${msg}`, details);

function intList(v: unknown, what: string, min = 0): number[] {
  if (!Array.isArray(v)) throw bad(`${what} must be a list of integers`);
  return v.map((x, i) => int(x, `${what}[${i}]`, undefined, min));
}

function parseVision(vc: Json): MllamaVisionConfig {
  const hiddenSize = int(vc.hidden_size, "vision_config.hidden_size", 1280);
  const numHeads = int(vc.attention_heads ?? vc.num_attention_heads, "vision_config.attention_heads", 16);
  if (hiddenSize % numHeads !== 0) throw bad(`vision_config.hidden_size ${hiddenSize} not divisible by attention_heads ${numHeads}`);
  const numLayers = int(vc.num_hidden_layers, "vision_config.num_hidden_layers", 32);
  const intermediateLayers = intList(vc.intermediate_layers_indices ?? [3, 7, 15, 23, 30], "vision_config.intermediate_layers_indices");
  for (const i of intermediateLayers) {
    if (i > numLayers) throw bad(`vision_config.intermediate_layers_indices holds ${i}, past num_hidden_layers ${numLayers}`);
  }
  const tileSize = int(vc.image_size, "vision_config.image_size", 560);
  const patchSize = int(vc.patch_size, "vision_config.patch_size", 14);
  if (tileSize % patchSize !== 0) throw bad(`vision_config.image_size ${tileSize} is not a multiple of patch_size ${patchSize}`);
  const maxNumTiles = int(vc.max_num_tiles, "vision_config.max_num_tiles", 4);
  const ratiosJson = vc.supported_aspect_ratios ?? defaultAspectRatios(maxNumTiles);
  if (!Array.isArray(ratiosJson) || ratiosJson.length === 0) throw bad("vision_config.supported_aspect_ratios must be a non-empty list of [rows, cols]");
  const aspectRatios = ratiosJson.map((r, i): [number, number] => {
    const [a, b] = intList(r, `vision_config.supported_aspect_ratios[${i}]`, 1);
    if (!Array.isArray(r) || r.length !== 2 || a * b > maxNumTiles) throw bad(`vision_config.supported_aspect_ratios[${i}] ${JSON.stringify(r)} is not a [rows, cols] pair within ${maxNumTiles} tiles`);
    return [a, b];
  });
  const patchesPerTile = (tileSize / patchSize) ** 2;
  const tokensPerTile = patchesPerTile + 1;
  const outputDim = hiddenSize * (1 + intermediateLayers.length);
  if (vc.vision_output_dim !== undefined && vc.vision_output_dim !== null && vc.vision_output_dim !== outputDim) {
    throw bad(`vision_config.vision_output_dim ${JSON.stringify(vc.vision_output_dim)} != hidden_size x (1 + ${intermediateLayers.length} intermediate layers) = ${outputDim}`);
  }
  return {
    hiddenSize,
    numHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: int(vc.intermediate_size, "vision_config.intermediate_size", 5120),
    act: parseVitActivation(typeof vc.hidden_act === "string" ? vc.hidden_act : "gelu"),
    numLayers,
    numGlobalLayers: int(vc.num_global_layers, "vision_config.num_global_layers", 8, 0),
    intermediateLayers,
    tileSize,
    patchSize,
    numChannels: int(vc.num_channels, "vision_config.num_channels", 3),
    normEps: typeof vc.norm_eps === "number" && vc.norm_eps > 0 ? vc.norm_eps : 1e-5,
    maxNumTiles,
    aspectRatios,
    patchesPerTile,
    tokensPerTile,
    paddedTokensPerTile: tokensPerTile + ((8 - (tokensPerTile % 8)) % 8),
    outputDim,
  };
}

/** (rows, cols) with rows * cols <= N, rows outer (MllamaVisionConfig's default list). */
function defaultAspectRatios(n: number): [number, number][] {
  const out: [number, number][] = [];
  for (let a = 1; a <= n; a++) for (let b = 1; b <= n; b++) if (a * b <= n) out.push([a, b]);
  return out;
}

/** Parses an MllamaForConditionalGeneration config.json (+ generation_config.json for the special ids). */
export function parseMllamaConfig(json: unknown, generationConfig?: unknown): MllamaConfig {
  if (!isObj(json)) throw bad("not a JSON object");
  if (!isObj(json.text_config)) throw bad("missing text_config");
  if (!isObj(json.vision_config)) throw bad("missing vision_config");
  const tc = json.text_config;
  const base = parseDecoderConfig({ text_config: tc }, {
    family: "mllama",
    qkvLayout: "split",
    gateUpLayout: "split",
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    defaultTheta: 500000,
    defaultEps: 1e-5,
    defaultMaxPositions: 131072,
    defaultTied: false,
    // MllamaTextConfig's defaults for the fields a trimmed config may leave out.
    configDefaults: { vocab_size: 128256, num_key_value_heads: 8, intermediate_size: 14336 },
    windows: (_c, n) => new Array<null>(n).fill(null),
  });
  const cross = intList(tc.cross_attention_layers ?? [3, 8, 13, 18, 23, 28, 33, 38], "text_config.cross_attention_layers");
  for (const i of cross) if (i >= base.numLayers) throw bad(`text_config.cross_attention_layers holds ${i}, past num_hidden_layers ${base.numLayers}`);
  if (new Set(cross).size !== cross.length) throw bad("text_config.cross_attention_layers has a repeated index");
  if (cross.length >= base.numLayers) throw bad("text_config.cross_attention_layers leaves no self-attention layer");
  const text: DecoderConfig = { ...base, crossAttentionLayers: [...cross].sort((a, b) => a - b), embedRows: base.vocabSize + 8 };
  const imageTokenId = int(json.image_token_index ?? json.image_token_id ?? 128256, "image_token_index", undefined, 0);
  if (imageTokenId >= text.embedRows!) throw bad(`image_token_index ${imageTokenId} outside embed_tokens' ${text.embedRows} rows`);
  const ids = specialIds({ ...json, ...tc }, generationConfig);
  return { text, vision: parseVision(json.vision_config), imageTokenId, eosTokenIds: ids.eos, bosTokenId: ids.bos };
}
