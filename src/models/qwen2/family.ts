// Qwen2ForCausalLM (model_type qwen2): the decoder with q/k/v biases, split projections, default
// rope (rope_theta), and sliding windows only when use_sliding_window is set (layers from
// max_window_layers on, as Qwen2Config's layer_types say).
import { textOnlyFamily } from "../decoder/family.ts";
import { windowOf } from "../decoder/config.ts";

export const qwen2Family = textOnlyFamily({
  name: "qwen2",
  architectures: ["Qwen2ForCausalLM"],
  modelTypes: ["qwen2"],
  traits: {
    family: "qwen2",
    qkvLayout: "split",
    gateUpLayout: "split",
    qkvBias: true,
    oBias: false,
    mlpBias: false,
    defaultTheta: 10000,
    defaultEps: 1e-6,
    defaultMaxPositions: 32768,
    defaultTied: false,
    windows(cfg, n) {
      const window = cfg.use_sliding_window ? (windowOf(cfg.sliding_window) ?? 4096) : null;
      if (Array.isArray(cfg.layer_types) && cfg.layer_types.length === n) {
        return cfg.layer_types.map((t) => (t === "sliding_attention" ? window : null));
      }
      const from = typeof cfg.max_window_layers === "number" ? cfg.max_window_layers : 28;
      return Array.from({ length: n }, (_, i) => (window !== null && i >= from ? window : null));
    },
  },
});
