// The input limits an engine user can raise: a checkpoint's chat template and tokenizer are
// untrusted input, so rendering and tokenization are bounded (tokenizer/template_limits.ts,
// tokenizer/tokenizer.ts); these load options raise the bounds for a trusted checkpoint or a
// long prompt, and the engine's limit_exceeded messages name the option to raise.
import { WebvlmError } from "../api/errors.ts";
import type { TemplateLimits } from "../tokenizer/template_limits.ts";

export interface EngineLimits {
  /** Chat template evaluation steps per render (default DEFAULT_TEMPLATE_LIMITS.maxSteps). */
  templateSteps?: number;
  /** Largest value a template render may build, the prompt included, in characters (default DEFAULT_TEMPLATE_LIMITS.maxOutputChars). */
  templateOutputChars?: number;
  /** Characters the tokenizer takes per prompt (default DEFAULT_MAX_INPUT_CHARS). */
  tokenizerInputChars?: number;
}

/** Which engine option raises each library limit (the `option` in a limit_exceeded error's details). */
const OPTION_OF: Record<string, keyof EngineLimits> = {
  maxSteps: "templateSteps",
  maxOutputChars: "templateOutputChars",
  maxInputChars: "tokenizerInputChars",
};

/** Validates LoadOptions.limits: each a positive integer or Infinity (bad_request naming it). */
export function checkEngineLimits(v: unknown): EngineLimits {
  if (v === undefined) return {};
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new WebvlmError("bad_request", "limits must be an object like { templateSteps, templateOutputChars, tokenizerInputChars }", { param: "limits" });
  }
  const out: EngineLimits = {};
  for (const [k, x] of Object.entries(v)) {
    if (!Object.values(OPTION_OF).includes(k as keyof EngineLimits)) {
      throw new WebvlmError("bad_request", `limits.${k} is not a limit; the limits are ${Object.values(OPTION_OF).join(", ")}`, { param: `limits.${k}` });
    }
    if (x === undefined) continue;
    if (typeof x !== "number" || !(x > 0) || !(Number.isSafeInteger(x) || x === Infinity)) {
      throw new WebvlmError("bad_request", `limits.${k} must be a positive integer (or Infinity), got ${String(x)}`, { param: `limits.${k}` });
    }
    out[k as keyof EngineLimits] = x;
  }
  return out;
}

/** The chat template limits these engine limits set (unset ones keep the template defaults). */
export function templateLimits(l: EngineLimits): Partial<TemplateLimits> {
  const out: Partial<TemplateLimits> = {};
  if (l.templateSteps !== undefined) out.maxSteps = l.templateSteps;
  if (l.templateOutputChars !== undefined) out.maxOutputChars = l.templateOutputChars;
  return out;
}

/**
 * A template or tokenizer limit_exceeded error reworded for engine users: the library's advice
 * (new ChatTemplate(...) / encode(..., { maxInputChars })) is replaced by the load option that
 * raises the limit. Other errors pass through unchanged.
 */
export function engineLimitError(e: unknown): unknown {
  if (!(e instanceof WebvlmError) || e.code !== "limit_exceeded") return e;
  const option = typeof e.details?.option === "string" ? OPTION_OF[e.details.option] : undefined;
  if (!option) return e;
  const what = e.message.replace(/;\s*(if the template is trusted|shorten it)[\s\S]*$/, "");
  const why = option === "tokenizerInputChars" ? "shorten the prompt, or raise the limit" : "if the template is trusted, raise the limit";
  return new WebvlmError("limit_exceeded", `${what}; ${why} with engine.load(model, { limits: { ${option}: ... } })`, { ...e.details, option: `limits.${option}` });
}
