// Field readers for a checkpoint's preprocessor_config.json / processor_config.json, shared by
// the families' image processors: absent fields (undefined or null) take the class default, and
// a malformed value throws bad_request naming the file and the field.
import { WebvlmError } from "../../api/errors.ts";
import type { ResampleFilter } from "../../vision/resize.ts";

export const PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json";
export const PROCESSOR_CONFIG_FILE = "processor_config.json";

/** An RGB per-channel value (image_mean, image_std). */
export type RgbTriple = readonly [number, number, number];

// PIL.Image.Resampling values; only the two Pillow filters resample.ts ports are runnable.
const PIL_RESAMPLE: Readonly<Record<number, string>> = {
  0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING",
};

/** bad_request: `file: field must be want, got value`. */
export function badField(file: string, field: string, want: string, got: unknown): WebvlmError {
  return new WebvlmError("bad_request", `${file}: ${field} must be ${want}, got ${JSON.stringify(got)}`, { file, field, value: got });
}

/** Absent as transformers reads a config key: missing or null. */
export function absent(v: unknown): v is undefined | null {
  return v === undefined || v === null;
}

/** A boolean field of preprocessor_config.json, `dflt` when absent. */
export function flagField(pp: Readonly<Record<string, unknown>>, field: string, dflt: boolean): boolean {
  const v = pp[field];
  if (absent(v)) return dflt;
  if (typeof v !== "boolean") throw badField(PREPROCESSOR_CONFIG_FILE, field, "true or false", v);
  return v;
}

/** A value that must be a positive integer. */
export function positiveInt(file: string, field: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) throw badField(file, field, "a positive integer", v);
  return v;
}

/**
 * preprocessor_config.json's resample: PIL 2 (BILINEAR) or 3 (BICUBIC); another PIL filter is
 * unsupported_feature, anything else bad_request.
 */
export function resampleField(v: unknown, dflt: ResampleFilter): ResampleFilter {
  const file = PREPROCESSOR_CONFIG_FILE;
  if (absent(v)) return dflt;
  if (v === 2) return "bilinear";
  if (v === 3) return "bicubic";
  if (typeof v === "number" && Object.hasOwn(PIL_RESAMPLE, v)) {
    throw new WebvlmError("unsupported_feature", `${file}: resample ${v} (${PIL_RESAMPLE[v]}) is not supported; 2 (BILINEAR) and 3 (BICUBIC) are`, {
      file, field: "resample", value: v,
    });
  }
  throw badField(file, "resample", "a PIL resample filter (2 BILINEAR or 3 BICUBIC)", v);
}

/** A per-channel mean/std of preprocessor_config.json (as normalizeOptionsFromConfig read it): one value or three. */
export function rgbTriple(field: string, v: readonly number[] | number | undefined, dflt: RgbTriple): RgbTriple {
  if (v === undefined) return dflt;
  if (typeof v === "number") return [v, v, v];
  if (v.length === 1) return [v[0], v[0], v[0]];
  if (v.length !== 3) throw badField(PREPROCESSOR_CONFIG_FILE, field, "one value or one per RGB channel", v);
  return [v[0], v[1], v[2]];
}

/** rescale_factor as normalizeOptionsFromConfig read it: undefined (absent) or a positive number. */
export function checkRescaleFactor(v: number | undefined): number | undefined {
  if (v !== undefined && !(v > 0)) throw badField(PREPROCESSOR_CONFIG_FILE, "rescale_factor", "a positive number", v);
  return v;
}
