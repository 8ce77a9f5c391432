// MistralForCausalLM: the decoder without biases, split projections, head_dim from the config,
// default rope, and sliding_window on every layer (MistralConfig's default 4096 when the key is
// absent; null turns it off).
import { textOnlyFamily } from "../decoder/family.ts";
import { windowOf } from "../decoder/config.ts";

export const mistralFamily = textOnlyFamily({
  name: "mistral",
  architectures: ["MistralForCausalLM"],
  modelTypes: ["mistral"],
  traits: {
    family: "mistral",
    qkvLayout: "split",
    gateUpLayout: "split",
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    defaultTheta: 10000,
    defaultEps: 1e-6,
    defaultMaxPositions: 4096 * 32,
    defaultTied: false,
    windows(cfg, n) {
      const window = cfg.sliding_window === undefined ? 4096 : windowOf(cfg.sliding_window);
      return Array.from({ length: n }, () => window);
    },
  },
});
