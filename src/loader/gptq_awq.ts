// GPTQ and AWQ checkpoints (quantization_config.quant_method "gptq" / "awq"). Not yet implemented.
import { WebvlmError } from "../api/errors.ts";
import type { CheckpointWeights } from "./checkpoint.ts";
import type { QuantizationConfig } from "./prequantized.ts";

export function gptqAwqWeights(_weights: CheckpointWeights, qc: QuantizationConfig): CheckpointWeights {
  throw new WebvlmError("unsupported_feature", `${String(qc.quant_method)} checkpoints are not supported yet`);
}
