// Idefics2 config.json -> one typed config (IDEFICS2.md §2, §11): the SigLIP vision_config, the
// perceiver_config with Idefics2Config's override rule, and the Mistral text_config through the
// shared decoder parser (MistralConfig defaults, which the official configs lean on: their
// text_config names only five keys). Defaults are transformers' configuration_idefics2.py.
import { WebvlmError } from "../../api/errors.ts";
import { int, isObj, parseDecoderConfig, specialIds, windowOf, type DecoderConfig, type DecoderFamilyTraits } from "../decoder/config.ts";

export const IDEFICS2_ARCHITECTURES = ["Idefics2ForConditionalGeneration"] as const;

export interface Idefics2VisionConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** hidden_size / num_attention_heads. */
  headDim: number;
  numChannels: number;
  imageSize: number;
  patchSize: number;
  /** image_size // patch_size: positions per side (the position table has its square rows). */
  positionsPerSide: number;
  hiddenAct: string;
  layerNormEps: number;
}

export interface Idefics2PerceiverConfig {
  /** Always the text hidden size (the override rule makes them equal). */
  hiddenSize: number;
  hiddenAct: string;
  rmsNormEps: number;
  numLatents: number;
  depth: number;
  numHeads: number;
  /** resampler_head_dim: independent of hiddenSize. */
  headDim: number;
  numKvHeads: number;
}

export interface Idefics2Config {
  architecture: string;
  modelType: "idefics2";
  /** The Mistral language model as the shared decoder sees it (tied when either tie flag is true). */
  text: DecoderConfig;
  vision: Idefics2VisionConfig;
  perceiver: Idefics2PerceiverConfig;
  imageTokenId: number;
  /** Stop ids: generation_config's first, then config.json's (MistralConfig's 2 when none is given). */
  eosTokenIds: number[];
  bosTokenId: number | null;
  padTokenId: number | null;
}

type Json = Record<string, unknown>;
const bad = (msg: string): WebvlmError => new WebvlmError("bad_request", `config.json: ${msg}`);

function num(v: unknown, what: string, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw bad(`${what} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

function str(v: unknown, what: string, dflt: string): string {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "string") throw bad(`${what} must be a string, got ${JSON.stringify(v)}`);
  return v;
}

function section(json: Json, key: string): Json {
  const v = json[key];
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw bad(`${key} must be an object`);
  return v;
}

/** MistralConfig's defaults: Idefics2's text_config is a MistralConfig, and the hub's lists only what differs. */
export const IDEFICS2_TEXT_TRAITS: DecoderFamilyTraits = {
  family: "idefics2",
  qkvLayout: "split",
  gateUpLayout: "split",
  qkvBias: false,
  oBias: false,
  mlpBias: false,
  defaultTheta: 10000,
  defaultEps: 1e-6,
  defaultMaxPositions: 4096 * 32,
  defaultTied: false,
  configDefaults: {
    vocab_size: 32000,
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    hidden_act: "silu",
  },
  windows(cfg, n) {
    // MistralConfig's sliding_window defaults to 4096; an explicit null turns it off.
    const window = cfg.sliding_window === undefined ? 4096 : windowOf(cfg.sliding_window);
    return Array.from({ length: n }, () => window);
  },
};

function checkArchitecture(json: Json): string {
  const archs = Array.isArray(json.architectures) ? (json.architectures as unknown[]) : [];
  const known = archs.find((a) => (IDEFICS2_ARCHITECTURES as readonly unknown[]).includes(a)) as string | undefined;
  const modelType = json.model_type;
  const typeOk = modelType === "idefics2" || (modelType === undefined && known !== undefined);
  if (!typeOk || (archs.length > 0 && !known)) {
    throw new WebvlmError(
      "unsupported_architecture",
      `unsupported model: model_type ${JSON.stringify(modelType ?? null)}, architectures ${JSON.stringify(archs)}; expected idefics2 / ${IDEFICS2_ARCHITECTURES[0]}`,
      { modelType, architectures: archs },
    );
  }
  return known ?? IDEFICS2_ARCHITECTURES[0];
}

function parseVision(vc: Json): Idefics2VisionConfig {
  const hiddenSize = int(vc.hidden_size, "vision_config.hidden_size", 768);
  const numHeads = int(vc.num_attention_heads, "vision_config.num_attention_heads", 12);
  if (hiddenSize % numHeads !== 0) throw bad(`vision_config.hidden_size ${hiddenSize} not divisible by num_attention_heads ${numHeads}`);
  const imageSize = int(vc.image_size, "vision_config.image_size", 224);
  const patchSize = int(vc.patch_size, "vision_config.patch_size", 32);
  if (patchSize > imageSize) throw bad(`vision_config.patch_size ${patchSize} exceeds image_size ${imageSize}`);
  const numChannels = int(vc.num_channels, "vision_config.num_channels", 3);
  // The processor makes RGB patches; a tower over other channel counts has nothing to read.
  if (numChannels !== 3) throw new WebvlmError("unsupported_feature", `idefics2: vision_config.num_channels ${numChannels} (RGB only)`);
  return {
    hiddenSize,
    intermediateSize: int(vc.intermediate_size, "vision_config.intermediate_size", 3072),
    numLayers: int(vc.num_hidden_layers, "vision_config.num_hidden_layers", 12),
    numHeads,
    headDim: hiddenSize / numHeads,
    numChannels,
    imageSize,
    patchSize,
    positionsPerSide: Math.floor(imageSize / patchSize),
    hiddenAct: str(vc.hidden_act, "vision_config.hidden_act", "gelu_pytorch_tanh"),
    layerNormEps: num(vc.layer_norm_eps, "vision_config.layer_norm_eps", 1e-6),
  };
}

/** Idefics2PerceiverConfig, then Idefics2Config's rule: a hidden size differing from the text's takes the text's size and eps. */
function parsePerceiver(pc: Json, text: DecoderConfig): Idefics2PerceiverConfig {
  let hiddenSize = int(pc.hidden_size, "perceiver_config.hidden_size", 4096);
  let rmsNormEps = num(pc.rms_norm_eps, "perceiver_config.rms_norm_eps", 1e-6);
  if (hiddenSize !== text.hiddenSize) {
    hiddenSize = text.hiddenSize;
    rmsNormEps = text.rmsNormEps;
  }
  const numHeads = int(pc.resampler_n_heads, "perceiver_config.resampler_n_heads", 16);
  const numKvHeads = int(pc.num_key_value_heads, "perceiver_config.num_key_value_heads", 4);
  if (numHeads % numKvHeads !== 0) throw bad(`perceiver_config.resampler_n_heads ${numHeads} not divisible by num_key_value_heads ${numKvHeads}`);
  return {
    hiddenSize,
    hiddenAct: str(pc.hidden_act, "perceiver_config.hidden_act", "silu"),
    rmsNormEps,
    numLatents: int(pc.resampler_n_latents, "perceiver_config.resampler_n_latents", 64),
    depth: int(pc.resampler_depth, "perceiver_config.resampler_depth", 3),
    numHeads,
    headDim: int(pc.resampler_head_dim, "perceiver_config.resampler_head_dim", 96),
    numKvHeads,
  };
}

/**
 * Parses config.json (already JSON-decoded); `generationConfig` (generation_config.json), when
 * given, contributes its eos/bos/pad ids first.
 */
export function parseIdefics2Config(json: unknown, generationConfig?: unknown): Idefics2Config {
  if (!isObj(json)) throw bad("not a JSON object");
  const architecture = checkArchitecture(json);
  const tc = section(json, "text_config");
  const base = parseDecoderConfig(tc, IDEFICS2_TEXT_TRAITS);
  // Which tie flag transformers consults has varied across versions: tied when either is true.
  const text: DecoderConfig = { ...base, tieWordEmbeddings: base.tieWordEmbeddings || json.tie_word_embeddings === true };
  const imageTokenId = int(json.image_token_id, "image_token_id", 32001, 0);
  if (imageTokenId >= text.vocabSize) throw bad(`image_token_id ${imageTokenId} outside the text vocabulary (${text.vocabSize})`);
  // config.json's ids: top level first, then text_config's (MistralConfig: bos 1, eos 2, pad none).
  const ids = specialIds({ bos_token_id: 1, eos_token_id: 2, ...tc, ...dropNulls(json) }, generationConfig);
  return {
    architecture,
    modelType: "idefics2",
    text,
    vision: parseVision(section(json, "vision_config")),
    perceiver: parsePerceiver(section(json, "perceiver_config"), text),
    imageTokenId,
    eosTokenIds: ids.eos,
    bosTokenId: ids.bos,
    padTokenId: ids.pad,
  };
}

function dropNulls(o: Json): Json {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined && v !== null));
}
