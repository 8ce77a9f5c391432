// Phi3ForCausalLM (Phi-3 / Phi-3.5 mini): the decoder with fused qkv_proj and gate_up_proj (one
// GPU weight each, as stored), no biases, default or longrope ("su") rope with the long factors
// past original_max_position_embeddings (Phi3Config default 4096) and the attention factor on
// cos/sin, and an optional sliding_window on every layer.
import { textOnlyFamily } from "../decoder/family.ts";
import { windowOf } from "../decoder/config.ts";

export const phi3Family = textOnlyFamily({
  name: "phi3",
  architectures: ["Phi3ForCausalLM"],
  modelTypes: ["phi3"],
  traits: {
    family: "phi3",
    qkvLayout: "fused",
    gateUpLayout: "fused",
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    defaultTheta: 10000,
    defaultEps: 1e-5,
    defaultMaxPositions: 4096,
    defaultTied: false,
    configDefaults: { original_max_position_embeddings: 4096 },
    windows: (cfg, n) => Array.from({ length: n }, () => windowOf(cfg.sliding_window)),
  },
});
