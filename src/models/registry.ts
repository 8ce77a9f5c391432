// Architecture name (config.json) -> model builder. The engine picks a builder
// here and never names a model family itself.
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import { parseQwen2VLConfig, QWEN2VL_ARCHITECTURES, type Qwen2VLConfig } from "./qwen2_vl/config.ts";
import { Qwen2VLModel } from "./qwen2_vl/model.ts";
import type { TensorSource, WeightLoadOptions } from "./qwen2_vl/weights.ts";

export interface ModelBuilder {
  /** Family name, e.g. "qwen2_vl". */
  readonly family: string;
  /** config.json `architectures` entries it accepts. */
  readonly architectures: readonly string[];
  /** config.json `model_type` values it accepts. */
  readonly modelTypes: readonly string[];
  /** config.json (+ generation_config.json) -> the family's typed config. */
  parseConfig(configJson: unknown, generationConfig?: unknown): Qwen2VLConfig;
  load(gpu: GpuContext, config: Qwen2VLConfig, source: TensorSource, opts?: WeightLoadOptions): Promise<Qwen2VLModel>;
}

const qwen2VL: ModelBuilder = {
  family: "qwen2_vl",
  architectures: QWEN2VL_ARCHITECTURES,
  modelTypes: ["qwen2_vl"],
  parseConfig: parseQwen2VLConfig,
  load: (gpu, config, source, opts) => Qwen2VLModel.load(gpu, config, source, opts),
};

const BUILDERS: readonly ModelBuilder[] = [qwen2VL];

/** Known architecture names (for error messages and docs). */
export function supportedArchitectures(): string[] {
  return BUILDERS.flatMap((b) => [...b.architectures]);
}

/**
 * The builder for a config.json: by its `architectures` list (first known entry), else by
 * `model_type`. Anything else is WebvlmError "unsupported_architecture".
 */
export function resolveModelBuilder(configJson: unknown): ModelBuilder {
  const cfg = configJson !== null && typeof configJson === "object" && !Array.isArray(configJson) ? (configJson as Record<string, unknown>) : {};
  const archs = Array.isArray(cfg.architectures) ? cfg.architectures.filter((a): a is string => typeof a === "string") : [];
  const modelType = typeof cfg.model_type === "string" ? cfg.model_type : undefined;
  for (const a of archs) {
    const b = BUILDERS.find((x) => x.architectures.includes(a));
    if (b) return b;
  }
  if (archs.length === 0 && modelType !== undefined) {
    const b = BUILDERS.find((x) => x.modelTypes.includes(modelType));
    if (b) return b;
  }
  throw new WebvlmError(
    "unsupported_architecture",
    `unsupported model: architectures ${JSON.stringify(archs)}, model_type ${JSON.stringify(modelType ?? null)}; supported: ${supportedArchitectures().join(", ")}`,
    { architectures: archs, modelType },
  );
}
