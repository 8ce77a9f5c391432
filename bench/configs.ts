// Model shapes for the benchmark, as config.json objects (parsed by the model's own parser).
// qwen2-vl-2b.config.json: Qwen2-VL-2B-Instruct's config (the shapes of QWEN2VL.md's table), also
// read by the transformers peer benchmark (bench/peer_transformers.py); tiny: the same
// architecture small enough for SwiftShader, with the real vocabulary (special token ids
// must exist) and head_dim 128 like the real model.
import qwen2VL2B from "./qwen2-vl-2b.config.json";

export const QWEN2VL_2B_CONFIG = qwen2VL2B;

export const TINY_CONFIG = {
  ...QWEN2VL_2B_CONFIG,
  hidden_size: 128,
  intermediate_size: 256,
  num_hidden_layers: 2,
  num_attention_heads: 1,
  num_key_value_heads: 1,
  rope_scaling: { type: "mrope", mrope_section: [16, 24, 24] },
  vision_config: { ...QWEN2VL_2B_CONFIG.vision_config, depth: 2, embed_dim: 80, num_heads: 1, hidden_size: 128 },
};
