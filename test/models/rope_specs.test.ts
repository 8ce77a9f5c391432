// Rope specs (src/models/common/rope.ts) on real checkpoints' rope fields, against the
// independent reference's tables (test/reference/ref_decoder.ts): Llama 3.1 8B's llama3 scaling
// (head_dim 128: all three bands), a Phi-3-mini-128k-shaped longrope (head_dim 96, short below and
// long above 4096 positions, attention factor sqrt(1 + ln 32 / ln 4096)), the transformers 5
// spelling (rope_parameters), Phi-3's old "su" name; unsupported kinds and partial rotary.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { parseRopeSpec, ropeTables } from "../../src/models/common/rope.ts";
import { llamaFamily } from "../../src/models/llama/family.ts";
import { phi3Family } from "../../src/models/phi3/family.ts";
import { refDecoderConfig, refRopeParameters } from "../reference/ref_decoder.ts";

const LLAMA31_8B = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: 4096, intermediate_size: 14336, num_attention_heads: 32,
  num_hidden_layers: 32, num_key_value_heads: 8, vocab_size: 128256, rms_norm_eps: 1e-5, max_position_embeddings: 131072,
  rope_theta: 500000.0, tie_word_embeddings: false, attention_bias: false, mlp_bias: false,
  rope_scaling: { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192, rope_type: "llama3" },
};

const n = 48;
const PHI3_128K = {
  architectures: ["Phi3ForCausalLM"], model_type: "phi3", hidden_size: 3072, intermediate_size: 8192, num_attention_heads: 32,
  num_hidden_layers: 32, num_key_value_heads: 32, vocab_size: 32064, rms_norm_eps: 1e-5, max_position_embeddings: 131072,
  original_max_position_embeddings: 4096, rope_theta: 10000.0, sliding_window: 262144,
  rope_scaling: {
    type: "longrope",
    short_factor: Array.from({ length: n }, (_, j) => 1 + 0.02 * j),
    long_factor: Array.from({ length: n }, (_, j) => 1 + 0.5 * j),
  },
};

const same = (a: ArrayLike<number>, b: ArrayLike<number>, what: string): void => assert.deepEqual(Array.from(a), Array.from(b), what);

test("llama3 scaling (Llama 3.1 8B): equal to the reference; low bands divided by 8, high bands kept, one band smoothed", () => {
  const spec = llamaFamily.parseConfig(LLAMA31_8B).decoder.rope;
  assert.equal(spec.kind, "llama3");
  const got = ropeTables(spec, 10);
  const want = refRopeParameters(refDecoderConfig(LLAMA31_8B).rope, 10);
  same(got.invFreq, want.invFreq, "inv_freq");
  assert.equal(got.scaling, 1);
  const base = refRopeParameters({ type: "default", base: 500000, dim: 128 }, 1).invFreq;
  let kept = 0;
  let divided = 0;
  let smoothed = 0;
  base.forEach((b, j) => {
    const g = got.invFreq[j];
    if (g === b) kept++;
    else if (g === Math.fround(b / 8)) divided++;
    else {
      assert.ok(g < b && g > b / 8, `band ${j} smoothed between`);
      smoothed++;
    }
  });
  assert.ok(kept > 0 && divided > 0 && smoothed > 0, `kept ${kept}, divided ${divided}, smoothed ${smoothed}`);
});

test("longrope (Phi-3-mini-128k shape): short table up to 4096 positions, long beyond, attention factor", () => {
  const spec = phi3Family.parseConfig(PHI3_128K).decoder.rope;
  assert.equal(spec.kind, "longrope");
  const ref = refDecoderConfig(PHI3_128K).rope;
  for (const seqLen of [1, 4096, 4097, 131072]) {
    const got = ropeTables(spec, seqLen);
    const want = refRopeParameters(ref, seqLen);
    same(got.invFreq, want.invFreq, `inv_freq at ${seqLen}`);
    assert.equal(got.scaling, want.attentionScaling);
  }
  assert.notDeepEqual(Array.from(ropeTables(spec, 4096).invFreq), Array.from(ropeTables(spec, 4097).invFreq));
  assert.equal(ropeTables(spec, 1).scaling, Math.sqrt(1 + Math.log(32) / Math.log(4096)));
  // Phi-3's pre-4.44 name.
  const su = phi3Family.parseConfig({ ...PHI3_128K, rope_scaling: { ...PHI3_128K.rope_scaling, type: "su" } }).decoder.rope;
  same(ropeTables(su, 5000).invFreq, ropeTables(spec, 5000).invFreq, "su = longrope");
});

test("transformers 5 spelling: rope_parameters with rope_theta inside", () => {
  const { rope_scaling, rope_theta, ...rest } = LLAMA31_8B;
  const spec = llamaFamily.parseConfig({ ...rest, rope_parameters: { ...rope_scaling, rope_theta } }).decoder.rope;
  same(ropeTables(spec, 1).invFreq, ropeTables(llamaFamily.parseConfig(LLAMA31_8B).decoder.rope, 1).invFreq, "same table");
  const plain = parseRopeSpec({ rope_parameters: { rope_type: "default", rope_theta: 1e6 } }, { defaultTheta: 10000, headDim: 64, maxPositions: 4096 });
  same(ropeTables(plain, 1).invFreq, refRopeParameters({ type: "default", base: 1e6, dim: 64 }, 1).invFreq, "default with theta from the block (the reference's table)");
});

test("yarn / dynamic rope and partial rotary are unsupported_feature", () => {
  const code = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      assert.ok(e instanceof WebvlmError);
      return e.code;
    }
    return "none";
  };
  assert.equal(code(() => llamaFamily.parseConfig({ ...LLAMA31_8B, rope_scaling: { rope_type: "dynamic", factor: 2 } })), "unsupported_feature");
  assert.equal(code(() => phi3Family.parseConfig({ ...PHI3_128K, partial_rotary_factor: 0.75 })), "unsupported_feature");
  assert.equal(code(() => phi3Family.parseConfig({ ...PHI3_128K, rope_scaling: { type: "longrope", short_factor: [1], long_factor: [1] } })), "bad_request");
});
