// Model shapes for the benchmark, as config.json objects (parsed by the model's own parser).
// qwen2-vl-2b: Qwen2-VL-2B-Instruct's config (../QWEN2VL.md's table); tiny: the same
// architecture small enough for SwiftShader, with the real vocabulary (special token ids
// must exist) and head_dim 128 like the real model.
export const QWEN2VL_2B_CONFIG = {
  architectures: ["Qwen2VLForConditionalGeneration"],
  model_type: "qwen2_vl",
  hidden_size: 1536,
  intermediate_size: 8960,
  num_hidden_layers: 28,
  num_attention_heads: 12,
  num_key_value_heads: 2,
  hidden_act: "silu",
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  rope_scaling: { type: "mrope", mrope_section: [16, 24, 24] },
  tie_word_embeddings: true,
  vocab_size: 151936,
  bos_token_id: 151643,
  eos_token_id: 151645,
  vision_start_token_id: 151652,
  vision_end_token_id: 151653,
  vision_token_id: 151654,
  image_token_id: 151655,
  video_token_id: 151656,
  vision_config: {
    depth: 32,
    embed_dim: 1280,
    mlp_ratio: 4,
    num_heads: 16,
    in_chans: 3,
    hidden_size: 1536,
    patch_size: 14,
    spatial_merge_size: 2,
    temporal_patch_size: 2,
  },
};

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
