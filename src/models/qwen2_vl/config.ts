// Qwen2-VL config.json -> one typed, normalized config. Checkpoints spell the
// same facts several ways across transformers versions: LLM fields at the top
// level or nested in text_config; M-RoPE in rope_scaling {type|rope_type:
// "mrope"|"default", mrope_section} or in rope_parameters (possibly keyed by
// layer type); in_chans or in_channels. Defaults are those of transformers'
// configuration_qwen2_vl.py, so a sparse config means what it means there.
import { WebvlmError } from "../../api/errors.ts";

export interface Qwen2VLTextConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Frequencies (of headDim/2) taken from the t, h and w position rows. */
  mropeSection: [number, number, number];
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  hiddenAct: string;
}

export interface Qwen2VLVisionConfig {
  depth: number;
  embedDim: number;
  numHeads: number;
  headDim: number;
  mlpRatio: number;
  /** fc1 width: int(embedDim * mlpRatio), as VisionBlock computes it. */
  mlpHiddenDim: number;
  hiddenAct: string;
  inChannels: number;
  patchSize: number;
  spatialMergeSize: number;
  temporalPatchSize: number;
  /** Merger output width; must equal the LLM hidden size. */
  hiddenSize: number;
}

export interface Qwen2VLConfig {
  architecture: string;
  modelType: "qwen2_vl";
  text: Qwen2VLTextConfig;
  vision: Qwen2VLVisionConfig;
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
  visionEndTokenId: number;
  visionTokenId: number;
  bosTokenId: number | null;
  /** Stop ids: generation_config's list first (when given), then config's. */
  eosTokenIds: number[];
  padTokenId: number | null;
  /** Checkpoint's declared storage dtype (torch_dtype / dtype), if any. */
  torchDtype: string | null;
}

export const QWEN2VL_ARCHITECTURES = ["Qwen2VLForConditionalGeneration", "Qwen2VLModel"] as const;

type Json = Record<string, unknown>;

const bad = (msg: string): WebvlmError => new WebvlmError("bad_request", `config.json: ${msg}`);
const isObj = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);

/** First defined value among the objects, by key. */
function pick(objs: (Json | undefined)[], ...keys: string[]): unknown {
  for (const o of objs) {
    if (!o) continue;
    for (const k of keys) if (o[k] !== undefined && o[k] !== null) return o[k];
  }
  return undefined;
}

function int(v: unknown, what: string, dflt?: number, min = 1): number {
  if (v === undefined) {
    if (dflt === undefined) throw bad(`missing ${what}`);
    return dflt;
  }
  if (!Number.isSafeInteger(v) || (v as number) < min) throw bad(`${what} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return v as number;
}

function num(v: unknown, what: string, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw bad(`${what} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

function ids(v: unknown, what: string, file = "config.json"): number[] {
  if (v === undefined) return [];
  const list = Array.isArray(v) ? v : [v];
  for (const x of list) if (!Number.isSafeInteger(x) || x < 0) throw new WebvlmError("bad_request", `${file}: ${what} must be token ids, got ${JSON.stringify(v)}`);
  return list as number[];
}

/** Rejects anything that is not a Qwen2-VL checkpoint. */
function checkArchitecture(cfg: Json): string {
  const modelType = cfg.model_type;
  const archs = Array.isArray(cfg.architectures) ? (cfg.architectures as unknown[]) : [];
  const known = archs.find((a) => (QWEN2VL_ARCHITECTURES as readonly unknown[]).includes(a)) as string | undefined;
  const typeOk = modelType === "qwen2_vl" || (modelType === undefined && known !== undefined);
  if (!typeOk || (archs.length > 0 && !known)) {
    throw new WebvlmError(
      "unsupported_architecture",
      `unsupported model: model_type ${JSON.stringify(modelType)}, architectures ${JSON.stringify(archs)}; expected qwen2_vl / ${QWEN2VL_ARCHITECTURES[0]}`,
      { modelType, architectures: archs },
    );
  }
  return known ?? QWEN2VL_ARCHITECTURES[0];
}

/**
 * The RoPE block: rope_parameters (newer) or rope_scaling (older), in the
 * text config or at the top. rope_parameters may be keyed by layer type.
 */
function ropeBlock(text: Json | undefined, top: Json): Json | undefined {
  let r = pick([text, top], "rope_parameters", "rope_scaling");
  if (r === undefined) return undefined;
  if (!isObj(r)) throw bad("rope_scaling / rope_parameters must be an object");
  if (!("rope_type" in r) && !("type" in r) && !("mrope_section" in r) && isObj(r.full_attention)) r = r.full_attention;
  return r as Json;
}

function parseRope(text: Json | undefined, top: Json, headDim: number): { theta: number; section: [number, number, number] } {
  const rope = ropeBlock(text, top);
  const type = rope ? (rope.rope_type ?? rope.type ?? "default") : "default";
  // transformers rewrites "mrope" to "default": both mean plain rotary split by mrope_section.
  if (type !== "mrope" && type !== "default") {
    throw new WebvlmError("unsupported_feature", `rope type ${JSON.stringify(type)} is not supported (only mrope/default)`, { ropeType: type });
  }
  const theta = num(pick([rope, text, top], "rope_theta"), "rope_theta", 1_000_000);
  const raw = rope?.mrope_section ?? (headDim === 128 ? [16, 24, 24] : undefined);
  if (!Array.isArray(raw) || raw.length !== 3 || !raw.every((x) => Number.isSafeInteger(x) && x >= 0)) {
    throw bad(`mrope_section must be three integers (got ${JSON.stringify(raw)})`);
  }
  const section = raw as [number, number, number];
  if ((section[0] + section[1] + section[2]) * 2 !== headDim) {
    throw bad(`mrope_section ${JSON.stringify(section)} must sum to head_dim/2 = ${headDim / 2}`);
  }
  return { theta, section: [section[0], section[1], section[2]] };
}

function parseVision(v: unknown, llmHidden: number): Qwen2VLVisionConfig {
  if (v !== undefined && !isObj(v)) throw bad("vision_config must be an object");
  const vc: Json = (v as Json | undefined) ?? {};
  const embedDim = int(vc.embed_dim, "vision_config.embed_dim", 1280);
  const numHeads = int(vc.num_heads, "vision_config.num_heads", 16);
  if (embedDim % numHeads !== 0) throw bad(`vision embed_dim ${embedDim} not divisible by num_heads ${numHeads}`);
  const headDim = embedDim / numHeads;
  // The 2-D vision rotary splits head_dim/2 into h and w halves.
  if (headDim % 4 !== 0) throw bad(`vision head_dim ${headDim} must be a multiple of 4`);
  const mlpRatio = num(vc.mlp_ratio, "vision_config.mlp_ratio", 4);
  const hiddenSize = int(vc.hidden_size, "vision_config.hidden_size", llmHidden);
  if (hiddenSize !== llmHidden) throw bad(`vision_config.hidden_size ${hiddenSize} (merger output) != LLM hidden_size ${llmHidden}`);
  return {
    depth: int(vc.depth, "vision_config.depth", 32),
    embedDim,
    numHeads,
    headDim,
    mlpRatio,
    mlpHiddenDim: Math.trunc(embedDim * mlpRatio),
    hiddenAct: typeof vc.hidden_act === "string" ? vc.hidden_act : "quick_gelu",
    inChannels: int(pick([vc], "in_channels", "in_chans"), "vision_config.in_channels", 3),
    patchSize: int(pick([vc], "patch_size", "spatial_patch_size"), "vision_config.patch_size", 14),
    spatialMergeSize: int(vc.spatial_merge_size, "vision_config.spatial_merge_size", 2),
    temporalPatchSize: int(vc.temporal_patch_size, "vision_config.temporal_patch_size", 2),
    hiddenSize,
  };
}

/**
 * Parses config.json (already JSON-decoded). `generationConfig` (the decoded
 * generation_config.json), when given, contributes its eos/pad/bos ids.
 */
export function parseQwen2VLConfig(json: unknown, generationConfig?: unknown): Qwen2VLConfig {
  if (!isObj(json)) throw bad("not a JSON object");
  const architecture = checkArchitecture(json);
  if (json.text_config !== undefined && !isObj(json.text_config)) throw bad("text_config must be an object");
  const tc = json.text_config as Json | undefined;
  const L = (...keys: string[]): unknown => pick([tc, json], ...keys);

  const hiddenSize = int(L("hidden_size"), "hidden_size");
  const numHeads = int(L("num_attention_heads"), "num_attention_heads");
  const numKvHeads = int(L("num_key_value_heads"), "num_key_value_heads", numHeads);
  if (hiddenSize % numHeads !== 0) throw bad(`hidden_size ${hiddenSize} not divisible by num_attention_heads ${numHeads}`);
  if (numHeads % numKvHeads !== 0) throw bad(`num_attention_heads ${numHeads} not divisible by num_key_value_heads ${numKvHeads}`);
  // Qwen2VLAttention derives head_dim as hidden/heads; a differing head_dim field would be ignored by it.
  const headDim = hiddenSize / numHeads;
  const rope = parseRope(tc, json, headDim);

  const text: Qwen2VLTextConfig = {
    hiddenSize,
    intermediateSize: int(L("intermediate_size"), "intermediate_size"),
    numLayers: int(L("num_hidden_layers"), "num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int(L("vocab_size"), "vocab_size"),
    rmsNormEps: num(L("rms_norm_eps"), "rms_norm_eps", 1e-5),
    ropeTheta: rope.theta,
    mropeSection: rope.section,
    // The text config's value is what transformers ties by; top level is the older spelling.
    tieWordEmbeddings: Boolean(L("tie_word_embeddings") ?? false),
    maxPositionEmbeddings: int(L("max_position_embeddings"), "max_position_embeddings", 32768),
    hiddenAct: typeof L("hidden_act") === "string" ? (L("hidden_act") as string) : "silu",
  };
  if (text.hiddenAct !== "silu") throw new WebvlmError("unsupported_feature", `hidden_act ${text.hiddenAct} is not supported (silu only)`);

  const gen = isObj(generationConfig) ? generationConfig : undefined;
  const T = (key: string, dflt: number): number => int(pick([json, tc], key), key, dflt, 0);
  const eos = [...ids(gen?.eos_token_id, "eos_token_id", "generation_config.json"), ...ids(L("eos_token_id"), "eos_token_id")];
  // generation_config.json's value wins; each file's errors name that file.
  const fromEither = (key: string): number[] =>
    pick([gen], key) !== undefined ? ids(pick([gen], key), key, "generation_config.json") : ids(pick([tc, json], key), key);
  const bos = fromEither("bos_token_id");
  const pad = fromEither("pad_token_id");
  const dtype = pick([json, tc], "torch_dtype", "dtype");
  return {
    architecture,
    modelType: "qwen2_vl",
    text,
    vision: parseVision(json.vision_config, hiddenSize),
    imageTokenId: T("image_token_id", 151655),
    videoTokenId: T("video_token_id", 151656),
    visionStartTokenId: T("vision_start_token_id", 151652),
    visionEndTokenId: T("vision_end_token_id", 151653),
    visionTokenId: T("vision_token_id", 151654),
    bosTokenId: bos[0] ?? null,
    eosTokenIds: [...new Set(eos)],
    padTokenId: pad[0] ?? null,
    torchDtype: typeof dtype === "string" ? dtype : null,
  };
}
