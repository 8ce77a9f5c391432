// webvlm's own pre-quantized format (quantization_config.quant_method "webvlm"). Not yet implemented.
import { WebvlmError } from "../api/errors.ts";
import type { CheckpointWeights } from "./checkpoint.ts";
import type { QuantizationConfig } from "./prequantized.ts";

export function webvlmQuantWeights(_weights: CheckpointWeights, _qc: QuantizationConfig): CheckpointWeights {
  throw new WebvlmError("unsupported_feature", "webvlm pre-quantized checkpoints are not supported yet");
}
