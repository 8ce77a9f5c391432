// Qwen2-VL config parsing: configs written from QWEN2VL.md's 2B/7B tables,
// the newer spellings (rope_parameters, rope_type "default", nested
// text_config, in_channels), and the errors.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { parseQwen2VLConfig } from "../../src/models/qwen2_vl/config.ts";

const VISION = {
  depth: 32, embed_dim: 1280, mlp_ratio: 4, num_heads: 16, in_chans: 3,
  patch_size: 14, spatial_merge_size: 2, temporal_patch_size: 2,
};

/** Qwen2-VL-2B-Instruct config.json, as the table describes it. */
const CONFIG_2B = {
  architectures: ["Qwen2VLForConditionalGeneration"],
  model_type: "qwen2_vl",
  bos_token_id: 151643,
  eos_token_id: 151645,
  vision_start_token_id: 151652,
  vision_end_token_id: 151653,
  vision_token_id: 151654,
  image_token_id: 151655,
  video_token_id: 151656,
  hidden_act: "silu",
  hidden_size: 1536,
  intermediate_size: 8960,
  max_position_embeddings: 32768,
  num_attention_heads: 12,
  num_hidden_layers: 28,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  vision_config: { ...VISION, hidden_size: 1536 },
  rope_scaling: { type: "mrope", mrope_section: [16, 24, 24] },
  vocab_size: 151936,
};

const CONFIG_7B = {
  ...CONFIG_2B,
  hidden_size: 3584,
  intermediate_size: 18944,
  num_attention_heads: 28,
  num_key_value_heads: 4,
  tie_word_embeddings: false,
  vision_config: { ...VISION, hidden_size: 3584 },
  vocab_size: 152064,
};

const GENERATION = { bos_token_id: 151643, pad_token_id: 151643, eos_token_id: [151645, 151643], top_k: 1, top_p: 0.001, temperature: 0.01 };

/** The 7B config as newer transformers versions save it: LLM fields in text_config, rope_parameters. */
const NESTED_7B = {
  architectures: ["Qwen2VLForConditionalGeneration"],
  model_type: "qwen2_vl",
  image_token_id: 151655,
  video_token_id: 151656,
  vision_start_token_id: 151652,
  vision_end_token_id: 151653,
  dtype: "bfloat16",
  text_config: {
    model_type: "qwen2_vl_text",
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: "silu",
    hidden_size: 3584,
    intermediate_size: 18944,
    num_attention_heads: 28,
    num_hidden_layers: 28,
    num_key_value_heads: 4,
    rms_norm_eps: 1e-6,
    rope_parameters: { rope_type: "default", rope_theta: 1000000.0, mrope_section: [16, 24, 24] },
    tie_word_embeddings: false,
    vocab_size: 152064,
  },
  vision_config: { depth: 32, embed_dim: 1280, hidden_size: 3584, hidden_act: "quick_gelu", mlp_ratio: 4, num_heads: 16, in_channels: 3, patch_size: 14, spatial_merge_size: 2, temporal_patch_size: 2 },
};

function throwsCode(fn: () => unknown, code: WebvlmErrorCode, text?: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof WebvlmError, String(e));
    assert.equal(e.code, code, e.message);
    if (text) assert.ok(e.message.includes(text), e.message);
    return true;
  });
}

test("2B-Instruct config: every field of the table", () => {
  const c = parseQwen2VLConfig(CONFIG_2B, GENERATION);
  assert.equal(c.architecture, "Qwen2VLForConditionalGeneration");
  assert.deepEqual(c.text, {
    hiddenSize: 1536, intermediateSize: 8960, numLayers: 28, numHeads: 12, numKvHeads: 2, headDim: 128,
    vocabSize: 151936, rmsNormEps: 1e-6, ropeTheta: 1e6, mropeSection: [16, 24, 24], tieWordEmbeddings: true,
    maxPositionEmbeddings: 32768, hiddenAct: "silu",
  });
  assert.deepEqual(c.vision, {
    depth: 32, embedDim: 1280, numHeads: 16, headDim: 80, mlpRatio: 4, mlpHiddenDim: 5120, hiddenAct: "quick_gelu",
    inChannels: 3, patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2, hiddenSize: 1536,
  });
  assert.equal(c.imageTokenId, 151655);
  assert.equal(c.videoTokenId, 151656);
  assert.equal(c.visionStartTokenId, 151652);
  assert.equal(c.visionEndTokenId, 151653);
  assert.equal(c.bosTokenId, 151643);
  assert.equal(c.padTokenId, 151643);
  assert.deepEqual(c.eosTokenIds, [151645, 151643]);
  assert.equal(c.torchDtype, "bfloat16");
});

test("7B-Instruct config: untied, 28/4 heads, 152064 vocab; eos from config alone", () => {
  const c = parseQwen2VLConfig(CONFIG_7B);
  assert.equal(c.text.hiddenSize, 3584);
  assert.equal(c.text.intermediateSize, 18944);
  assert.equal(c.text.numHeads, 28);
  assert.equal(c.text.numKvHeads, 4);
  assert.equal(c.text.headDim, 128);
  assert.equal(c.text.vocabSize, 152064);
  assert.equal(c.text.tieWordEmbeddings, false);
  assert.equal(c.vision.hiddenSize, 3584);
  assert.deepEqual(c.eosTokenIds, [151645]);
});

test("nested text_config + rope_parameters parses to the same config as the flat 7B", () => {
  const flat = parseQwen2VLConfig(CONFIG_7B, GENERATION);
  const nested = parseQwen2VLConfig(NESTED_7B, GENERATION);
  assert.deepEqual(nested.text, flat.text);
  assert.deepEqual(nested.vision, flat.vision);
  assert.deepEqual(nested.eosTokenIds, flat.eosTokenIds);
  assert.equal(nested.imageTokenId, 151655);
  assert.equal(nested.torchDtype, "bfloat16");
});

test("all rope spellings give the same section and theta", () => {
  const variants: Record<string, unknown>[] = [
    { rope_scaling: { type: "mrope", mrope_section: [16, 24, 24] } },
    { rope_scaling: { type: "default", rope_type: "default", mrope_section: [16, 24, 24] } },
    { rope_scaling: { rope_type: "mrope", mrope_section: [16, 24, 24] } },
    { rope_scaling: undefined, rope_parameters: { rope_type: "default", rope_theta: 1e6, mrope_section: [16, 24, 24] } },
    { rope_scaling: undefined, rope_parameters: { full_attention: { rope_type: "default", rope_theta: 1e6, mrope_section: [16, 24, 24] } } },
  ];
  for (const v of variants) {
    const c = parseQwen2VLConfig({ ...CONFIG_2B, ...v });
    assert.deepEqual(c.text.mropeSection, [16, 24, 24], JSON.stringify(v));
    assert.equal(c.text.ropeTheta, 1e6);
  }
  // rope_theta inside rope_parameters wins; without any, transformers' default 1e6.
  const t = parseQwen2VLConfig({ ...CONFIG_2B, rope_theta: undefined, rope_scaling: undefined, rope_parameters: { rope_type: "default", rope_theta: 5e5, mrope_section: [16, 24, 24] } });
  assert.equal(t.text.ropeTheta, 5e5);
  const d = parseQwen2VLConfig({ ...CONFIG_2B, rope_theta: undefined });
  assert.equal(d.text.ropeTheta, 1e6);
});

test("tiny head_dim: mrope_section must sum to head_dim/2", () => {
  const tiny = { ...CONFIG_2B, hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 128, num_hidden_layers: 2, vision_config: { ...VISION, hidden_size: 64, embed_dim: 32, num_heads: 2, depth: 2 } };
  const c = parseQwen2VLConfig({ ...tiny, rope_scaling: { type: "mrope", mrope_section: [2, 3, 3] } });
  assert.equal(c.text.headDim, 16);
  assert.deepEqual(c.text.mropeSection, [2, 3, 3]);
  assert.equal(c.vision.headDim, 16);
  throwsCode(() => parseQwen2VLConfig({ ...tiny, rope_scaling: { type: "mrope", mrope_section: [16, 24, 24] } }), "bad_request", "mrope_section");
  throwsCode(() => parseQwen2VLConfig({ ...tiny, rope_scaling: undefined }), "bad_request", "mrope_section");
});

test("defaults follow transformers: kv heads = heads, eps 1e-5, vision defaults, in_channels spelling", () => {
  const sparse = {
    model_type: "qwen2_vl",
    hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28, num_attention_heads: 28, vocab_size: 152064,
    vision_config: { in_channels: 4 },
  };
  const c = parseQwen2VLConfig(sparse);
  assert.equal(c.architecture, "Qwen2VLForConditionalGeneration");
  assert.equal(c.text.numKvHeads, 28);
  assert.equal(c.text.rmsNormEps, 1e-5);
  assert.equal(c.text.tieWordEmbeddings, false);
  assert.deepEqual(c.text.mropeSection, [16, 24, 24]);
  assert.equal(c.vision.depth, 32);
  assert.equal(c.vision.embedDim, 1280);
  assert.equal(c.vision.inChannels, 4);
  assert.equal(c.vision.hiddenSize, 3584);
  assert.equal(c.imageTokenId, 151655);
  assert.deepEqual(c.eosTokenIds, []);
});

test("unknown architectures and model types are unsupported_architecture", () => {
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, model_type: "qwen2_5_vl", architectures: ["Qwen2_5_VLForConditionalGeneration"] }), "unsupported_architecture", "qwen2_5_vl");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, architectures: ["LlamaForCausalLM"] }), "unsupported_architecture", "LlamaForCausalLM");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, model_type: "llama" }), "unsupported_architecture");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, model_type: undefined, architectures: undefined }), "unsupported_architecture");
});

test("malformed configs are bad_request; unsupported rope types are unsupported_feature", () => {
  throwsCode(() => parseQwen2VLConfig("nope"), "bad_request");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, hidden_size: undefined }), "bad_request", "hidden_size");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, num_hidden_layers: 2.5 }), "bad_request", "num_hidden_layers");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, num_key_value_heads: 5 }), "bad_request", "num_key_value_heads");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, vision_config: { ...VISION, hidden_size: 1000 } }), "bad_request", "merger");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, text_config: 3 }), "bad_request", "text_config");
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, eos_token_id: "x" }), "bad_request", "eos_token_id");
  // Each file's values are labelled with that file.
  const startsWith = (fn: () => unknown, prefix: string): void =>
    assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && e.message.startsWith(prefix));
  for (const key of ["eos_token_id", "bos_token_id", "pad_token_id"]) {
    startsWith(() => parseQwen2VLConfig(CONFIG_2B, { [key]: "x" }), `generation_config.json: ${key}`);
    startsWith(() => parseQwen2VLConfig({ ...CONFIG_2B, [key]: -1 }, {}), `config.json: ${key}`);
  }
  throwsCode(() => parseQwen2VLConfig({ ...CONFIG_2B, rope_scaling: { rope_type: "yarn", factor: 4, mrope_section: [16, 24, 24] } }), "unsupported_feature", "yarn");
});
