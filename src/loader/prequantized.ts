// Checkpoints that hold their linear layers already quantized: config.json's quantization_config
// names the method, and the checkpoint's weights get a readQuantized (models/common/source.ts)
// that hands the loader those matrices packed in the GPU layout (quant/formats.ts) under their
// plain names ("...q_proj.weight"), so they load without a bf16 copy and without quantizing.
//   gptq, awq   gptq_awq.ts: AutoGPTQ / AutoAWQ packings repacked on the way in, tensor by tensor
//   webvlm      webvlm_quant.ts: webvlm's own format, stored exactly as the GPU reads it
import { WebvlmError } from "../api/errors.ts";
import type { CheckpointWeights } from "./checkpoint.ts";
import { gptqAwqWeights } from "./gptq_awq.ts";
import { webvlmQuantWeights } from "./webvlm_quant.ts";

/** config.json's quantization_config, as stored. */
export type QuantizationConfig = Readonly<Record<string, unknown>>;

/** The quantization_config of a config.json (top level, or a nested text_config's), if any. */
export function quantizationConfig(config: unknown): QuantizationConfig | undefined {
  const c = config as { quantization_config?: unknown; text_config?: { quantization_config?: unknown } } | null;
  const qc = c?.quantization_config ?? c?.text_config?.quantization_config;
  if (qc === undefined || qc === null) return undefined;
  if (typeof qc !== "object" || Array.isArray(qc)) {
    throw new WebvlmError("bad_request", `config.json: quantization_config must be an object, got ${JSON.stringify(qc)}`);
  }
  return qc as QuantizationConfig;
}

/** The checkpoint's weights, with readQuantized when config.json says they are pre-quantized. */
export function withPrequantized(weights: CheckpointWeights, config: unknown): CheckpointWeights {
  const qc = quantizationConfig(config);
  if (!qc) return weights;
  const method = qc.quant_method;
  if (method === "gptq" || method === "awq") return gptqAwqWeights(weights, qc);
  if (method === "webvlm") return webvlmQuantWeights(weights, qc);
  throw new WebvlmError(
    "unsupported_feature",
    `config.json: quantization_config.quant_method ${JSON.stringify(method)} is not supported (gptq, awq and webvlm are)`,
    { quant_method: String(method) },
  );
}
