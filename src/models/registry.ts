// config.json (architectures / model_type) -> model family. The engine picks a family here and
// never names one itself; adding a family is one line in FAMILIES.
import { WebvlmError } from "../api/errors.ts";
import { registerFamily, type RegisteredFamily } from "./family.ts";
import { idefics2Family } from "./idefics2/family.ts";
import { llamaFamily } from "./llama/family.ts";
import { mistralFamily } from "./mistral/family.ts";
import { mllamaFamily } from "./mllama/family.ts";
import { phi3Family } from "./phi3/family.ts";
import { phi3VFamily } from "./phi3_v/family.ts";
import { qwen2Family } from "./qwen2/family.ts";
import { qwen2VLFamily } from "./qwen2_vl/family.ts";

const FAMILIES: readonly RegisteredFamily[] = [
  registerFamily(qwen2VLFamily),
  registerFamily(idefics2Family),
  registerFamily(qwen2Family),
  registerFamily(mistralFamily),
  registerFamily(llamaFamily),
  registerFamily(phi3Family),
  registerFamily(phi3VFamily),
  registerFamily(mllamaFamily),
];

/** Known architecture names (for error messages and docs). */
export function supportedArchitectures(): string[] {
  return FAMILIES.flatMap((f) => [...f.architectures]);
}

/**
 * The family for a config.json: by its `architectures` list (first known entry), else by
 * `model_type`. Anything else is WebvlmError "unsupported_architecture".
 */
export function resolveFamily(configJson: unknown): RegisteredFamily {
  const cfg = configJson !== null && typeof configJson === "object" && !Array.isArray(configJson) ? (configJson as Record<string, unknown>) : {};
  const archs = Array.isArray(cfg.architectures) ? cfg.architectures.filter((a): a is string => typeof a === "string") : [];
  const modelType = typeof cfg.model_type === "string" ? cfg.model_type : undefined;
  for (const a of archs) {
    const f = FAMILIES.find((x) => x.architectures.includes(a));
    if (f) return f;
  }
  if (archs.length === 0 && modelType !== undefined) {
    const f = FAMILIES.find((x) => x.modelTypes.includes(modelType));
    if (f) return f;
  }
  throw new WebvlmError(
    "unsupported_architecture",
    `unsupported model: architectures ${JSON.stringify(archs)}, model_type ${JSON.stringify(modelType ?? null)}; supported: ${supportedArchitectures().join(", ")}`,
    { architectures: archs, modelType },
  );
}
