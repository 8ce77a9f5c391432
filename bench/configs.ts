// Model shapes for the benchmark, as config.json objects (parsed by the model's own parser).
// qwen2-vl-2b.config.json: Qwen2-VL-2B-Instruct's config (the shapes of QWEN2VL.md's table), also
// read by the transformers peer benchmark (bench/peer_transformers.py); tiny: the same
// architecture small enough for SwiftShader, with the real vocabulary (special token ids
// must exist) and head_dim 128 like the real model.
import qwen2VL2B from "./qwen2-vl-2b.config.json";
import qwen2VL7B from "./qwen2-vl-7b.config.json";

export const QWEN2VL_2B_CONFIG = qwen2VL2B;
/** Qwen2-VL-7B-Instruct's shapes (untied lm_head, 4 KV heads). */
export const QWEN2VL_7B_CONFIG = qwen2VL7B;

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

// idefics2-8b.config.json: HuggingFaceM4/idefics2-8b(-chatty)'s config.json (IDEFICS2.md §2: the
// text and perceiver sizes are MistralConfig's / Idefics2PerceiverConfig's defaults).
export { default as IDEFICS2_8B_CONFIG } from "./idefics2-8b.config.json";

/** idefics2-8b's preprocessor_config.json (IDEFICS2.md §5) and processor_config.json's image_seq_len. */
export const IDEFICS2_8B_PREPROCESSOR = {
  do_convert_rgb: true, do_image_splitting: true, do_normalize: true, do_pad: true, do_rescale: true, do_resize: true,
  image_mean: [0.5, 0.5, 0.5], image_std: [0.5, 0.5, 0.5], resample: 2, rescale_factor: 0.00392156862745098,
  size: { longest_edge: 980, shortest_edge: 378 },
};
export const IDEFICS2_8B_PROCESSOR = { image_seq_len: 64 };

/**
 * A tiny Idefics2 of the same architecture for SwiftShader: GQA Mistral decoder (4/2 heads), the
 * real vocabulary (the <fake_token_around_image> / <image> / <end_of_utterance> ids must exist),
 * SigLIP tower with the real patch size 14 over 112 px (8x8 positions), a 2-layer perceiver
 * with 8 latents (GQA 4/2); images resized under a 56/28 edge rule, so a crop is at most 4x4
 * patches (SwiftShader's reduction kernels cost per row: few rows keep the smoke in seconds).
 */
export const TINY_IDEFICS2_CONFIG = {
  architectures: ["Idefics2ForConditionalGeneration"],
  image_token_id: 32001,
  model_type: "idefics2",
  perceiver_config: { resampler_n_latents: 8, resampler_depth: 2, resampler_n_heads: 4, resampler_head_dim: 16, num_key_value_heads: 2, hidden_size: 64 },
  text_config: {
    model_type: "mistral", vocab_size: 32003, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
    num_attention_heads: 4, num_key_value_heads: 2, rms_norm_eps: 1e-5, pad_token_id: 0,
  },
  tie_word_embeddings: false,
  vision_config: { hidden_size: 64, image_size: 112, intermediate_size: 128, num_attention_heads: 4, num_hidden_layers: 2, patch_size: 14 },
};
export const TINY_IDEFICS2_PREPROCESSOR = { ...IDEFICS2_8B_PREPROCESSOR, size: { longest_edge: 56, shortest_edge: 28 } };
export const TINY_IDEFICS2_PROCESSOR = { image_seq_len: 8 };
