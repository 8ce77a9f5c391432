// Test helper: writes tiny random Qwen2-VL checkpoints (config.json +
// safetensors) for the reference's self-tests. Independent of
// scripts/make_tiny_qwen2vl.ts on purpose.

import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export type WriteTensor =
  | { name: string; dtype: "F32"; shape: number[]; data: Float32Array }
  | { name: string; dtype: "F16" | "BF16"; shape: number[]; bits: Uint16Array };

/** Serializes tensors into the safetensors format (header padded with spaces to 8 bytes). */
export function encodeSafetensors(tensors: WriteTensor[]): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const t of tensors) {
    const bytes = t.dtype === "F32"
      ? Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)
      : Buffer.from(t.bits.buffer, t.bits.byteOffset, t.bits.byteLength); // host is little-endian
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += " ";
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([length, Buffer.from(json, "utf8"), ...chunks]);
}

/** Deterministic uniform [0, 1) generator (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function uniform(n: number, scale: number, rand: () => number, center = 0): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = center + scale * (2 * rand() - 1);
  return out;
}

export interface TinySpec {
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  mropeSection: [number, number, number];
  visionEmbed: number;
  visionHeads: number;
  visionDepth: number;
  visionMlpRatio: number;
}

export const TINY: TinySpec = {
  hidden: 32, intermediate: 64, layers: 2, heads: 4, kvHeads: 2, vocab: 152000, mropeSection: [1, 1, 2],
  visionEmbed: 16, visionHeads: 2, visionDepth: 1, visionMlpRatio: 2,
};

export interface TinyOptions {
  seed?: number;
  /** "released": model.layers.* / visual.* ; "nested": model.language_model.* / model.visual.* */
  naming?: "released" | "nested";
  tied?: boolean;
  /** Write two shards + model.safetensors.index.json instead of one file. */
  sharded?: boolean;
  /** Store embed_tokens as BF16 (values are bf16-exact either way). */
  bf16Embed?: boolean;
  spec?: TinySpec;
}

export function tinyConfigJson(spec: TinySpec, tied: boolean): Record<string, unknown> {
  return {
    architectures: ["Qwen2VLForConditionalGeneration"],
    model_type: "qwen2_vl",
    hidden_size: spec.hidden, intermediate_size: spec.intermediate, num_hidden_layers: spec.layers,
    num_attention_heads: spec.heads, num_key_value_heads: spec.kvHeads, vocab_size: spec.vocab,
    rms_norm_eps: 1e-6, rope_theta: 1000000.0, hidden_act: "silu", max_position_embeddings: 32768,
    rope_scaling: { type: "mrope", mrope_section: spec.mropeSection },
    tie_word_embeddings: tied,
    bos_token_id: 151643, eos_token_id: 151645,
    vision_start_token_id: 151652, vision_end_token_id: 151653, vision_token_id: 151654,
    image_token_id: 151655, video_token_id: 151656,
    vision_config: {
      depth: spec.visionDepth, embed_dim: spec.visionEmbed, mlp_ratio: spec.visionMlpRatio, num_heads: spec.visionHeads,
      in_chans: 3, hidden_size: spec.hidden, patch_size: 14, spatial_merge_size: 2, spatial_patch_size: 14,
      temporal_patch_size: 2,
    },
  };
}

/** The checkpoint's tensors under the released (model.* / visual.*) names, as F32 (embed_tokens values are bf16-exact). */
export function tinyTensors(spec: TinySpec, tied: boolean, seed: number): Map<string, { shape: number[]; data: Float32Array }> {
  const rand = rng(seed);
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  const add = (name: string, shape: number[], scale: number, center = 0): void => {
    out.set(name, { shape, data: uniform(shape.reduce((a, b) => a * b, 1), scale, rand, center) });
  };
  const linear = (prefix: string, inDim: number, outDim: number, bias: boolean): void => {
    add(`${prefix}.weight`, [outDim, inDim], 1.5 / Math.sqrt(inDim));
    if (bias) add(`${prefix}.bias`, [outDim], 0.1);
  };
  const e = spec.visionEmbed;
  const hd = spec.hidden / spec.heads;
  out.set("visual.patch_embed.proj.weight", { shape: [e, 3, 2, 14, 14], data: uniform(e * 1176, 1.5 / Math.sqrt(1176), rand) });
  for (let b = 0; b < spec.visionDepth; b++) {
    const p = `visual.blocks.${b}`;
    add(`${p}.norm1.weight`, [e], 0.2, 1);
    add(`${p}.norm1.bias`, [e], 0.1);
    add(`${p}.norm2.weight`, [e], 0.2, 1);
    add(`${p}.norm2.bias`, [e], 0.1);
    linear(`${p}.attn.qkv`, e, 3 * e, true);
    linear(`${p}.attn.proj`, e, e, true);
    linear(`${p}.mlp.fc1`, e, e * spec.visionMlpRatio, true);
    linear(`${p}.mlp.fc2`, e * spec.visionMlpRatio, e, true);
  }
  add("visual.merger.ln_q.weight", [e], 0.2, 1);
  add("visual.merger.ln_q.bias", [e], 0.1);
  linear("visual.merger.mlp.0", 4 * e, 4 * e, true);
  linear("visual.merger.mlp.2", 4 * e, spec.hidden, true);
  add("model.embed_tokens.weight", [spec.vocab, spec.hidden], 1);
  for (let l = 0; l < spec.layers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [spec.hidden], 0.2, 1);
    add(`${p}.post_attention_layernorm.weight`, [spec.hidden], 0.2, 1);
    linear(`${p}.self_attn.q_proj`, spec.hidden, spec.heads * hd, true);
    linear(`${p}.self_attn.k_proj`, spec.hidden, spec.kvHeads * hd, true);
    linear(`${p}.self_attn.v_proj`, spec.hidden, spec.kvHeads * hd, true);
    linear(`${p}.self_attn.o_proj`, spec.heads * hd, spec.hidden, false);
    linear(`${p}.mlp.gate_proj`, spec.hidden, spec.intermediate, false);
    linear(`${p}.mlp.up_proj`, spec.hidden, spec.intermediate, false);
    linear(`${p}.mlp.down_proj`, spec.intermediate, spec.hidden, false);
  }
  add("model.norm.weight", [spec.hidden], 0.2, 1);
  if (!tied) add("lm_head.weight", [spec.vocab, spec.hidden], 1);
  // Make the embedding bf16-exact so it can be stored either way.
  const embed = out.get("model.embed_tokens.weight")!.data;
  const bits = new Uint32Array(embed.buffer, embed.byteOffset, embed.length);
  for (let i = 0; i < bits.length; i++) bits[i] &= 0xffff0000;
  return out;
}

function rename(name: string, naming: "released" | "nested"): string {
  if (naming === "released") return name;
  if (name.startsWith("visual.")) return "model." + name;
  if (name.startsWith("model.")) return "model.language_model." + name.slice("model.".length);
  return name;
}

/** Writes config.json and the weights into dir (created if needed). */
export function writeTinyCheckpoint(dir: string, options: TinyOptions = {}): void {
  const spec = options.spec ?? TINY;
  const tied = options.tied ?? true;
  const naming = options.naming ?? "released";
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(tinyConfigJson(spec, tied), null, 2));
  const tensors: WriteTensor[] = [];
  for (const [name, { shape, data }] of tinyTensors(spec, tied, options.seed ?? 1)) {
    if (options.bf16Embed && name === "model.embed_tokens.weight") {
      const words = new Uint32Array(data.buffer, data.byteOffset, data.length);
      tensors.push({ name: rename(name, naming), dtype: "BF16", shape, bits: Uint16Array.from(words, (w) => w >>> 16) });
    } else {
      tensors.push({ name: rename(name, naming), dtype: "F32", shape, data });
    }
  }
  if (!options.sharded) {
    writeFileSync(join(dir, "model.safetensors"), encodeSafetensors(tensors));
    return;
  }
  const half = Math.ceil(tensors.length / 2);
  const shards = [tensors.slice(0, half), tensors.slice(half)];
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    writeFileSync(join(dir, file), encodeSafetensors(shard));
    for (const t of shard) weightMap[t.name] = file;
  });
  writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}
