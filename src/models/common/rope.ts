// Rotary specs: config.json's rope fields -> one RopeSpec -> the inv_freq table (and cos/sin
// scaling) the rope op takes. Written from transformers' modeling_rope_utils.py
// (_compute_default / _linear_scaling / _llama3 / _longrope_parameters and dynamic_rope_update's
// longrope switch). Every step is rounded to f32 where torch computes on f32 tensors, so tables
// equal transformers' up to pow's last bit.
import { WebvlmError } from "../../api/errors.ts";

const f = Math.fround;

interface RopeBase {
  theta: number;
  /** Rotated dims per head (head_dim; partial rotary is rejected at parse time). */
  dim: number;
  /**
   * Frequencies taken from each position row (sum = dim / 2): [dim / 2] for 1-D positions,
   * Qwen2-VL's mrope_section [t, h, w] for 3-row M-RoPE positions.
   */
  sections: number[];
}

export type RopeSpec =
  | (RopeBase & { kind: "default" })
  | (RopeBase & { kind: "linear"; factor: number })
  | (RopeBase & { kind: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number })
  | (RopeBase & {
    kind: "longrope";
    shortFactor: number[];
    longFactor: number[];
    /** The long table is used when a forward's max position + 1 exceeds this. */
    originalMaxPositions: number;
    /** cos/sin multiplier: attention_factor, or sqrt(1 + ln(factor) / ln(original)) (1 when factor <= 1). */
    attentionFactor: number;
  });

export interface RopeTables {
  invFreq: Float32Array;
  /** cos and sin are multiplied by this (1 for all but longrope). */
  scaling: number;
}

/** 1 / (theta ** (arange(0, dim, 2) / dim)) in f32 steps (torch's default inv_freq). */
export function defaultInvFreq(theta: number, dim: number): Float32Array {
  const inv = new Float32Array(dim / 2);
  for (let j = 0; j < dim / 2; j++) inv[j] = f(1 / f(Math.pow(theta, f((2 * j) / dim))));
  return inv;
}

/**
 * The inv_freq table and cos/sin scaling a forward uses. `seqLen` = the forward's largest
 * position + 1 (transformers' dynamic_rope_update: torch.max(position_ids) + 1): longrope takes
 * long_factor when it exceeds original_max_position_embeddings, short_factor otherwise.
 */
export function ropeTables(spec: RopeSpec, seqLen: number): RopeTables {
  const { theta, dim } = spec;
  switch (spec.kind) {
    case "default":
      return { invFreq: defaultInvFreq(theta, dim), scaling: 1 };
    case "linear": {
      const inv = defaultInvFreq(theta, dim);
      const fac = f(spec.factor);
      return { invFreq: inv.map((x) => f(x / fac)), scaling: 1 };
    }
    case "llama3": {
      const inv = defaultInvFreq(theta, dim);
      const fac = f(spec.factor);
      const lowWavelen = f(spec.originalMaxPositions / spec.lowFreqFactor);
      const highWavelen = f(spec.originalMaxPositions / spec.highFreqFactor);
      const twoPi = f(2 * Math.PI);
      const out = new Float32Array(inv.length);
      for (let j = 0; j < inv.length; j++) {
        // wavelen = 2 pi / inv_freq: torch's scalar / tensor is reciprocal(tensor) * scalar.
        const wavelen = f(f(1 / inv[j]) * twoPi);
        const llama = wavelen > lowWavelen ? f(inv[j] / fac) : inv[j];
        const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
        if (!medium) {
          out[j] = llama;
          continue;
        }
        const smooth = f(f(f(f(1 / wavelen) * f(spec.originalMaxPositions)) - f(spec.lowFreqFactor)) / f(spec.highFreqFactor - spec.lowFreqFactor));
        out[j] = f(f(f(f(1 - smooth) * llama) / fac) + f(smooth * llama));
      }
      return { invFreq: out, scaling: 1 };
    }
    case "longrope": {
      const ext = seqLen > spec.originalMaxPositions ? spec.longFactor : spec.shortFactor;
      const inv = new Float32Array(dim / 2);
      for (let j = 0; j < dim / 2; j++) inv[j] = f(1 / f(f(ext[j]) * f(Math.pow(theta, f((2 * j) / dim)))));
      return { invFreq: inv, scaling: spec.attentionFactor };
    }
  }
}

// ---------------------------------------------------------------- config.json

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);
const bad = (msg: string): WebvlmError => new WebvlmError("bad_request", `config.json: ${msg}`);

function positive(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw bad(`${what} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

function factors(v: unknown, what: string, n: number): number[] {
  if (!Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === "number" && Number.isFinite(x) && x > 0)) {
    throw bad(`${what} must be ${n} positive numbers (head_dim / 2), got ${JSON.stringify(v)?.slice(0, 80)}`);
  }
  return v as number[];
}

/**
 * The rope block of a config: rope_parameters (transformers 5) or rope_scaling, possibly keyed by
 * layer type ({full_attention: {...}}); undefined when absent.
 */
export function ropeBlock(cfg: Json): Json | undefined {
  let r = cfg.rope_parameters ?? cfg.rope_scaling;
  if (r === undefined || r === null) return undefined;
  if (!isObj(r)) throw bad("rope_scaling / rope_parameters must be an object");
  if (!("rope_type" in r) && !("type" in r) && isObj(r.full_attention)) r = r.full_attention;
  return r as Json;
}

export interface RopeParseOptions {
  /** rope_theta when the config has none (family default). */
  defaultTheta: number;
  headDim: number;
  maxPositions: number;
  /** M-RoPE sections, when the family uses 3-row positions. */
  sections?: number[];
}

/**
 * Parses rope_theta and rope_scaling / rope_parameters: default (also "mrope"), linear, llama3,
 * longrope (also Phi-3's older "su"). Other kinds (yarn, dynamic) and partial rotary are
 * unsupported_feature.
 */
export function parseRopeSpec(cfg: Json, opts: RopeParseOptions): RopeSpec {
  const rope = ropeBlock(cfg);
  const theta = positive(rope?.rope_theta ?? cfg.rope_theta ?? opts.defaultTheta, "rope_theta");
  const prf = rope?.partial_rotary_factor ?? cfg.partial_rotary_factor;
  if (prf !== undefined && prf !== null && prf !== 1 && prf !== 1.0) {
    throw new WebvlmError("unsupported_feature", `partial_rotary_factor ${JSON.stringify(prf)} is not supported (full rotary only)`);
  }
  const dim = opts.headDim;
  if (dim % 2 !== 0 || dim < 2) throw bad(`head_dim ${dim} must be even for rotary embeddings`);
  const sections = opts.sections ?? [dim / 2];
  if (sections.reduce((a, b) => a + b, 0) !== dim / 2) throw bad(`rope sections [${sections}] must sum to head_dim / 2 = ${dim / 2}`);
  const base = { theta, dim, sections };
  const type = String(rope ? (rope.rope_type ?? rope.type ?? "default") : "default");
  switch (type) {
    case "default":
    case "mrope":
      return { ...base, kind: "default" };
    case "linear":
      return { ...base, kind: "linear", factor: positive(rope!.factor, "rope_scaling.factor") };
    case "llama3": {
      const r = rope!;
      const spec = {
        ...base,
        kind: "llama3" as const,
        factor: positive(r.factor, "rope_scaling.factor"),
        lowFreqFactor: positive(r.low_freq_factor, "rope_scaling.low_freq_factor"),
        highFreqFactor: positive(r.high_freq_factor, "rope_scaling.high_freq_factor"),
        originalMaxPositions: positive(r.original_max_position_embeddings, "rope_scaling.original_max_position_embeddings"),
      };
      if (spec.highFreqFactor <= spec.lowFreqFactor) throw bad("rope_scaling.high_freq_factor must exceed low_freq_factor");
      return spec;
    }
    case "longrope":
    case "su": {
      const r = rope!;
      const shortFactor = factors(r.short_factor, "rope_scaling.short_factor", dim / 2);
      const longFactor = factors(r.long_factor, "rope_scaling.long_factor", dim / 2);
      // Phi-3 keeps original_max_position_embeddings at the top level; transformers 5 moves it into the block.
      const topOriginal = cfg.original_max_position_embeddings;
      const original = positive(topOriginal ?? r.original_max_position_embeddings ?? opts.maxPositions, "original_max_position_embeddings");
      // transformers: with a top-level original_max_position_embeddings, factor = max / original.
      const factor = topOriginal !== undefined && topOriginal !== null
        ? opts.maxPositions / original
        : (r.factor !== undefined && r.factor !== null ? positive(r.factor, "rope_scaling.factor") : opts.maxPositions / original);
      let attentionFactor: number;
      if (r.attention_factor !== undefined && r.attention_factor !== null) attentionFactor = positive(r.attention_factor, "rope_scaling.attention_factor");
      else attentionFactor = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
      return { ...base, kind: "longrope", shortFactor, longFactor, originalMaxPositions: original, attentionFactor };
    }
    default:
      throw new WebvlmError("unsupported_feature", `rope type ${JSON.stringify(type)} is not supported (default, linear, llama3, longrope)`, { ropeType: type });
  }
}
