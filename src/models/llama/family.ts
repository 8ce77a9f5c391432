// LlamaForCausalLM (Llama 2 / 3 / 3.1 / 3.2): the decoder with optional attention_bias (q/k/v/o)
// and mlp_bias, split projections, head_dim from the config, default / linear / llama3-scaled
// rope, full causal attention.
import { textOnlyFamily } from "../decoder/family.ts";

export const llamaFamily = textOnlyFamily({
  name: "llama",
  architectures: ["LlamaForCausalLM"],
  modelTypes: ["llama"],
  traits: {
    family: "llama",
    qkvLayout: "split",
    gateUpLayout: "split",
    qkvBias: "attention_bias",
    oBias: "attention_bias",
    mlpBias: "mlp_bias",
    defaultTheta: 10000,
    defaultEps: 1e-6,
    defaultMaxPositions: 2048,
    defaultTied: false,
    windows: (_cfg, n) => Array.from({ length: n }, () => null),
  },
});
