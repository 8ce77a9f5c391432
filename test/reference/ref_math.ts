// Numeric building blocks of the CPU reference, written from the PyTorch
// semantics transformers relies on. Storage is f32 (Float32Array: every stored
// intermediate is rounded to f32, as torch float32 tensors are); dot products,
// norms' sums and softmax are accumulated in f64 (JS numbers). That makes the
// reference slightly *more* accurate than torch f32, never less.

/** Round to f32. */
export const f32 = Math.fround;

// ---------------------------------------------------------------------------
// erf / erfc in double precision (Math has no erf).
// |x| < 0.75: erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_{n>=0} 2^n x^(2n+1) / (1*3*...*(2n+1))
//   (Abramowitz & Stegun 7.1.6): all terms positive, no cancellation.
// |x| >= 0.75: erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
//   (A&S 7.1.14 continued fraction), evaluated backwards from a fixed depth
//   (400 levels below 1, 200 above: converged to the last bit there); erf = 1 - erfc.
// Measured against glibc's erf on [0, 6] in steps of 0.001: max abs error 3.3e-16.
// ---------------------------------------------------------------------------
const TWO_OVER_SQRT_PI = 1.1283791670955126;
const ONE_OVER_SQRT_PI = 0.5641895835477563;

function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return TWO_OVER_SQRT_PI * Math.exp(-x2) * sum;
}

function erfcContinuedFraction(x: number): number {
  let f = x;
  for (let k = x < 1 ? 400 : 200; k >= 1; k--) f = x + k / 2 / f;
  return (ONE_OVER_SQRT_PI * Math.exp(-x * x)) / f;
}

export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  const r = a < 0.75 ? erfSeries(a) : 1 - erfcContinuedFraction(a);
  return x < 0 ? -r : r;
}

export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x >= 0.75) return erfcContinuedFraction(x);
  return 1 - erf(x);
}

// ---------------------------------------------------------------------------
// Activations (computed in f64, stored as f32 by the caller).
// ---------------------------------------------------------------------------
export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}
/** nn.SiLU / ACT2FN["silu"]: x * sigmoid(x). */
export function silu(x: number): number {
  return x * sigmoid(x);
}
/** ACT2FN["quick_gelu"]: x * sigmoid(1.702 x). */
export function quickGelu(x: number): number {
  return x * sigmoid(1.702 * x);
}
/** nn.GELU() (approximate="none"): 0.5 x (1 + erf(x / sqrt 2)). */
export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

export function activation(name: string): (x: number) => number {
  switch (name) {
    case "silu":
    case "swish":
      return silu;
    case "quick_gelu":
      return quickGelu;
    case "gelu":
      return gelu;
    default:
      throw new Error(`reference: unsupported activation ${name}`);
  }
}

// ---------------------------------------------------------------------------
// Linear layers and norms. Matrices are row-major; a Linear weight is
// [outDim, inDim] as nn.Linear stores it, so y = x W^T + b.
// ---------------------------------------------------------------------------
export interface Linear {
  weight: Float32Array; // [outDim, inDim]
  bias: Float32Array | null; // [outDim]
  inDim: number;
  outDim: number;
}

/** x [rows, inDim] -> [rows, outDim]; each output is an f64 dot product (+ bias) rounded to f32. */
export function linear(x: Float32Array, rows: number, layer: Linear): Float32Array {
  const { weight, bias, inDim, outDim } = layer;
  if (x.length !== rows * inDim) throw new Error(`linear: input has ${x.length} values, expected ${rows}x${inDim}`);
  const out = new Float32Array(rows * outDim);
  for (let r = 0; r < rows; r++) {
    const xOff = r * inDim;
    for (let o = 0; o < outDim; o++) {
      const wOff = o * inDim;
      let acc = 0;
      for (let k = 0; k < inDim; k++) acc += x[xOff + k] * weight[wOff + k];
      out[r * outDim + o] = bias ? acc + bias[o] : acc;
    }
  }
  return out;
}

/** nn.LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * w + b, biased variance. */
export function layerNorm(x: Float32Array, rows: number, dim: number, weight: Float32Array, bias: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    const off = r * dim;
    let mean = 0;
    for (let i = 0; i < dim; i++) mean += x[off + i];
    mean /= dim;
    let variance = 0;
    for (let i = 0; i < dim; i++) variance += (x[off + i] - mean) ** 2;
    variance /= dim;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let i = 0; i < dim; i++) out[off + i] = (x[off + i] - mean) * inv * weight[i] + bias[i];
  }
  return out;
}

/**
 * Qwen2RMSNorm: h = x * rsqrt(mean(x^2) + eps) (rounded to f32, as torch does
 * before `.to(input_dtype)`), then weight * h.
 */
export function rmsNorm(x: Float32Array, rows: number, dim: number, weight: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    const off = r * dim;
    let sumSq = 0;
    for (let i = 0; i < dim; i++) sumSq += x[off + i] * x[off + i];
    const inv = 1 / Math.sqrt(sumSq / dim + eps);
    for (let i = 0; i < dim; i++) out[off + i] = weight[i] * f32(x[off + i] * inv);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Rotary helpers.
// ---------------------------------------------------------------------------

/** rotate_half: cat(-x[half:], x[:half]). */
export function rotateHalf(x: ArrayLike<number>): Float32Array {
  const half = x.length / 2;
  if (!Number.isInteger(half)) throw new Error("rotateHalf: odd length");
  const out = new Float32Array(x.length);
  for (let i = 0; i < half; i++) {
    out[i] = -x[half + i];
    out[half + i] = x[i];
  }
  return out;
}

/**
 * In place on x[offset .. offset+dim): x = x * cos + rotate_half(x) * sin,
 * with cos/sin of length dim (already duplicated to the full head dim).
 */
export function applyRotaryInPlace(x: Float32Array, offset: number, dim: number, cos: Float32Array, sin: Float32Array): void {
  const rotated = rotateHalf(x.subarray(offset, offset + dim));
  for (let d = 0; d < dim; d++) x[offset + d] = f32(x[offset + d] * cos[d]) + f32(rotated[d] * sin[d]);
}

/**
 * inv_freq = 1 / base^(arange(0, dim, 2) / dim), evaluated in f32 steps as torch
 * does (arange/dim in f32, pow in f32, reciprocal in f32). Length dim/2.
 * torch's f32 pow may differ from this correctly rounded one by an ulp.
 */
export function ropeInvFreq(dim: number, base: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let j = 0; j < dim / 2; j++) {
    const exponent = f32((2 * j) / dim);
    out[j] = f32(1 / f32(Math.pow(base, exponent)));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Attention for one query vector over a list of key/value vectors.
// ---------------------------------------------------------------------------

/**
 * softmax(q.k_j * scale) over j, then sum_j p_j v_j. Scores, softmax and the
 * weighted sum are f64; probabilities are rounded to f32 as torch's f32
 * softmax output is. Writes the result (f32) into out[outOffset ..].
 */
export function attendOne(
  q: Float32Array, keys: Float32Array[], values: Float32Array[], scale: number,
  out: Float32Array, outOffset: number,
): void {
  const n = keys.length;
  const dim = q.length;
  const scores = new Float64Array(n);
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const k = keys[j];
    let dot = 0;
    for (let d = 0; d < dim; d++) dot += q[d] * k[d];
    scores[j] = f32(f32(dot) * scale);
    if (scores[j] > max) max = scores[j];
  }
  let sum = 0;
  for (let j = 0; j < n; j++) {
    scores[j] = Math.exp(scores[j] - max);
    sum += scores[j];
  }
  const acc = new Float64Array(dim);
  for (let j = 0; j < n; j++) {
    const p = f32(scores[j] / sum);
    const v = values[j];
    for (let d = 0; d < dim; d++) acc[d] += p * v[d];
  }
  for (let d = 0; d < dim; d++) out[outOffset + d] = acc[d];
}
