// Next-token selection from logits: penalties, temperature, top-k / top-p /
// min-p filtering and a seeded draw. CPU-side, O(vocab) per step.
//
// Processing order (HF's LogitsProcessor chain, penalties as vLLM applies them):
//   1. repetition_penalty (HF): every id seen in prompt + generated text, once:
//      logit < 0 ? logit * penalty : logit / penalty
//   2. frequency/presence penalty (OpenAI), over generated ids only:
//      logit -= count * frequency_penalty + (count > 0) * presence_penalty
//   3. temperature: logit / T (T = 0 -> greedy argmax of the penalized logits)
//   4. top_k: keep logits >= the k-th largest (ties at the k-th value kept, as HF)
//   5. top_p: softmax over the survivors; keep a token while the mass of the
//      more probable ones before it is < top_p (HF's "cumsum ascending <= 1-p
//      removed", written from the other end); at least one token kept
//   6. min_p: softmax over the survivors; drop p < min_p * p_max
//   7. draw from the softmax of the survivors with the PRNG.
// Banned ids (generation_config's bad_words_ids, bad_words.ts) are set to -Infinity after the
// penalties, so that greedy and every filter skip them.
// top_k = 1 is treated as greedy (deterministic argmax, lowest id on ties,
// no PRNG draw); HF would draw among exact ties at the maximum.
//
// PRNG: xoshiro128** (Blackman & Vigna, public domain), state seeded from the
// 53-bit seed by splitmix32; one draw per sampled token takes 53 bits from two
// outputs. Same seed + same logits => same tokens. Unseeded requests draw a
// random 32-bit seed from crypto.getRandomValues and report it.
import { WebvlmError } from "../api/errors.ts";
import { parseBadWordsIds } from "./bad_words.ts";
import type { SamplingParams } from "./types.ts";

export interface ResolvedSampling {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  repetitionPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  seed: number | null;
}

function bad(param: string, msg: string): WebvlmError {
  return new WebvlmError("bad_request", `${param}: ${msg}`, { param });
}

/** A finite number in [lo, hi] ((lo, hi] when loOpen); hi = Infinity: no upper bound (and none printed). */
function num(v: unknown, param: string, dflt: number, lo: number, hi: number, loOpen = false): number {
  if (v === undefined || v === null) return dflt;
  const range = hi === Infinity ? `a finite number ${loOpen ? ">" : ">="} ${lo}` : `a number in ${loOpen ? "(" : "["}${lo}, ${hi}]`;
  if (typeof v !== "number" || !Number.isFinite(v)) throw bad(param, `must be ${range}, got ${String(v)}`);
  if (v < lo || v > hi || (loOpen && v === lo)) throw bad(param, `must be ${range}, got ${v}`);
  return v;
}

/** Validates and fills defaults; throws WebvlmError "bad_request" naming the parameter. */
export function resolveSamplingParams(p: SamplingParams): ResolvedSampling {
  const topK = p.topK ?? 0;
  if (!Number.isInteger(topK) || topK < -1) throw bad("top_k", `must be an integer >= -1 (0 or -1 = off), got ${topK}`);
  const seed = p.seed ?? null;
  if (seed !== null && !Number.isSafeInteger(seed)) throw bad("seed", `must be a safe integer, got ${seed}`);
  return {
    // OpenAI caps temperature at 2; local runtimes allow more, so only finiteness and sign are checked.
    temperature: num(p.temperature, "temperature", 1, 0, Infinity),
    topP: num(p.topP, "top_p", 1, 0, 1, true),
    topK: topK < 0 ? 0 : topK,
    minP: num(p.minP, "min_p", 0, 0, 1),
    repetitionPenalty: num(p.repetitionPenalty, "repetition_penalty", 1, 0, Infinity, true),
    frequencyPenalty: num(p.frequencyPenalty, "frequency_penalty", 0, -2, 2),
    presencePenalty: num(p.presencePenalty, "presence_penalty", 0, -2, 2),
    seed,
  };
}

/**
 * Sampling defaults, eos ids and bad_words_ids from a checkpoint's generation_config.json.
 * do_sample false (or absent, HF's default) means greedy (temperature 0).
 */
export function generationConfigDefaults(cfg: unknown): { sampling: SamplingParams; eosTokenIds: number[]; badWordsIds: number[][] } {
  const c = (cfg !== null && typeof cfg === "object" ? cfg : {}) as Record<string, unknown>;
  const n = (k: string): number | undefined => (typeof c[k] === "number" ? (c[k] as number) : undefined);
  const sampling: SamplingParams = {};
  if (c.do_sample !== true) sampling.temperature = 0;
  else if (n("temperature") !== undefined) sampling.temperature = n("temperature");
  if (n("top_k") !== undefined) sampling.topK = n("top_k");
  if (n("top_p") !== undefined) sampling.topP = n("top_p");
  if (n("min_p") !== undefined) sampling.minP = n("min_p");
  if (n("repetition_penalty") !== undefined) sampling.repetitionPenalty = n("repetition_penalty");
  const e = c.eos_token_id;
  const eosTokenIds = typeof e === "number" ? [e] : Array.isArray(e) ? e.filter((x): x is number => typeof x === "number") : [];
  return { sampling, eosTokenIds, badWordsIds: parseBadWordsIds(c.bad_words_ids) };
}

// ---------------------------------------------------------------- PRNG

/** splitmix32: expands a 32-bit seed into well-mixed words (seeding only). */
function splitmix32(a: number): () => number {
  return () => {
    a = (a + 0x9e3779b9) | 0;
    let t = a ^ (a >>> 16);
    t = Math.imul(t, 0x21f0aaad);
    t ^= t >>> 15;
    t = Math.imul(t, 0x735a2d97);
    return (t ^ (t >>> 15)) >>> 0;
  };
}

/** xoshiro128** over an explicit state; returns uint32 outputs. */
export function xoshiro128ss(a: number, b: number, c: number, d: number): () => number {
  let s0 = a >>> 0, s1 = b >>> 0, s2 = c >>> 0, s3 = d >>> 0;
  return () => {
    const m = Math.imul(s1, 5);
    const r = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3; s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    return r;
  };
}

/** Uniform doubles in [0, 1) with 53 random bits, from a seed (any safe integer). */
export function createRng(seed: number): () => number {
  const lo = Number(BigInt.asUintN(32, BigInt(seed)));
  const hi = Number(BigInt.asUintN(32, BigInt(seed) >> 32n));
  const sm = splitmix32(lo ^ Math.imul(hi, 0x85ebca6b));
  let st = [sm(), sm(), sm(), sm()];
  if ((st[0] | st[1] | st[2] | st[3]) === 0) st = [1, 0, 0, 0]; // all-zero state is xoshiro's fixed point
  const next = xoshiro128ss(st[0], st[1], st[2], st[3]);
  return () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
}

export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

// ---------------------------------------------------------------- logits processors

/** Index of the largest value, lowest index on ties, NaN ignored; -1 when none is > -Infinity. */
export function argmax(v: ArrayLike<number>): number {
  let best = -1, bv = -Infinity;
  for (let i = 0; i < v.length; i++) if (v[i] > bv) { bv = v[i]; best = i; }
  return best;
}

/** HF RepetitionPenaltyLogitsProcessor, in place: each distinct id once. */
export function applyRepetitionPenalty(scores: Float32Array, ids: Iterable<number>, penalty: number): void {
  if (penalty === 1) return;
  for (const id of new Set(ids)) {
    if (id < 0 || id >= scores.length) continue;
    const s = scores[id];
    scores[id] = s < 0 ? s * penalty : s / penalty;
  }
}

/** OpenAI frequency/presence penalties, in place, from counts of generated ids. */
export function applyFrequencyPresencePenalty(scores: Float32Array, counts: ReadonlyMap<number, number>, frequency: number, presence: number): void {
  if (frequency === 0 && presence === 0) return;
  for (const [id, c] of counts) {
    if (c <= 0 || id < 0 || id >= scores.length) continue;
    scores[id] -= c * frequency + presence;
  }
}

/**
 * k-th largest (1-based) of a[0..n) (no NaN), reordering a. Quickselect with a 3-way
 * partition (logits often hold many equal values, e.g. -Infinity masks), O(n) average.
 */
export function kthLargest(a: Float32Array, n: number, k: number): number {
  if (k < 1 || k > n) throw new WebvlmError("internal", `kthLargest: k=${k} out of 1..${n}`);
  let lo = 0, hi = n - 1;
  const target = k - 1; // position in descending order
  for (;;) {
    if (lo === hi) return a[lo];
    const x = a[lo], y = a[(lo + hi) >>> 1], z = a[hi];
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : x < z ? x : y < z ? z : y;
    // Descending: [lo, lt) > pivot, [lt, i) == pivot, (gt, hi] < pivot.
    let lt = lo, i = lo, gt = hi;
    while (i <= gt) {
      const v = a[i];
      if (v > pivot) { a[i] = a[lt]; a[lt] = v; lt++; i++; }
      else if (v < pivot) { a[i] = a[gt]; a[gt] = v; gt--; }
      else i++;
    }
    if (target < lt) hi = lt - 1;
    else if (target > gt) lo = gt + 1;
    else return pivot;
  }
}

/**
 * Survivors of the filters: ids with unnormalized weights exp((s - max) / T).
 * The arrays are the scratch's buffers: valid until its next use.
 */
export interface Candidates {
  ids: Int32Array;
  weights: Float64Array;
  count: number;
  /** Sum of weights[0..count). */
  total: number;
}

export interface FilterParams {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
}

/** Reusable buffers so a step allocates nothing proportional to the vocab. */
export class SamplerScratch {
  ids = new Int32Array(0); vals = new Float32Array(0); weights = new Float64Array(0);
  sel = new Float32Array(0); bins = new Int32Array(0);
  ensure(n: number): void {
    if (this.ids.length >= n) return;
    this.ids = new Int32Array(n); this.vals = new Float32Array(n); this.weights = new Float64Array(n);
    this.sel = new Float32Array(n); this.bins = new Int32Array(n);
  }
}

/** Buckets for top_p's partial selection, over (max - logit) / T in [0, TOP_P_SPAN]. */
const TOP_P_BINS = 1024;
/** Nats below the maximum past which tokens share one overflow bucket (weights < 2e-22). */
const TOP_P_SPAN = 50;

/**
 * Applies temperature, top_k, top_p, min_p (in that order) to processed
 * scores (penalties already applied; NaN treated as -Infinity) and returns
 * the survivors. temperature must be > 0.
 *
 * Cost: one copy pass, top_k by quickselect (O(V)), one exp pass over the
 * survivors, top_p by bucketing the survivors on their distance from the
 * maximum (one pass) and sorting only the bucket the nucleus boundary falls
 * in, min_p by one comparison pass. No full sort of the vocab.
 */
export function filterCandidates(scores: Float32Array, p: FilterParams, scratch: SamplerScratch = new SamplerScratch()): Candidates {
  scratch.ensure(scores.length);
  const ids = scratch.ids, vals = scratch.vals, w = scratch.weights;
  let n = 0;
  for (let i = 0; i < scores.length; i++) {
    const v = scores[i];
    if (v > -Infinity) { ids[n] = i; vals[n] = v; n++; } // drops -Inf and NaN up front
  }
  if (n === 0) throw new WebvlmError("internal", "sampler: every logit is -Infinity or NaN");
  const invT = 1 / p.temperature;

  if (p.topK > 0 && p.topK < n) {
    scratch.sel.set(vals.subarray(0, n));
    const tau = kthLargest(scratch.sel, n, p.topK);
    let m = 0;
    for (let i = 0; i < n; i++) if (vals[i] >= tau) { ids[m] = ids[i]; vals[m] = vals[i]; m++; }
    n = m;
  }

  let mx = -Infinity, mn = Infinity;
  for (let i = 0; i < n; i++) { const v = vals[i]; if (v > mx) mx = v; if (v < mn) mn = v; }
  let total = 0;
  for (let i = 0; i < n; i++) { const e = Math.exp((vals[i] - mx) * invT); w[i] = e; total += e; }

  if (p.topP < 1 && n > 1) {
    const need = p.topP * total;
    // Bucket by distance from the max (monotone in the logit, so buckets are
    // ordered runs of the sorted order); buckets fully before the one where
    // the cumulative mass reaches top_p are kept, those after it dropped, and
    // only the boundary bucket is sorted and walked.
    const span = Math.min((mx - mn) * invT, TOP_P_SPAN);
    const scale = span > 0 ? TOP_P_BINS / span : 0;
    const bins = scratch.bins;
    const mass = new Float64Array(TOP_P_BINS + 1);
    for (let i = 0; i < n; i++) {
      const b = Math.min(Math.floor((mx - vals[i]) * invT * scale), TOP_P_BINS);
      bins[i] = b;
      mass[b] += w[i];
    }
    let boundary = 0, cum = 0;
    while (boundary < TOP_P_BINS && cum + mass[boundary] < need) cum += mass[boundary++];
    const members: number[] = [];
    for (let i = 0; i < n; i++) if (bins[i] === boundary) members.push(i);
    members.sort((a, b) => vals[b] - vals[a] || ids[a] - ids[b]);
    for (let j = 0; j < members.length; j++) {
      // Keep while the mass of the more probable tokens is below top_p (at least one token overall).
      if (cum >= need && (boundary > 0 || j > 0)) break;
      bins[members[j]] = -1;
      cum += w[members[j]];
    }
    let m = 0;
    for (let i = 0; i < n; i++) if (bins[i] < boundary) { ids[m] = ids[i]; vals[m] = vals[i]; w[m] = w[i]; m++; }
    n = m;
  }

  // min_p: p_i / p_max = w_i (the max survives every filter and has weight 1).
  if (p.minP > 0 && n > 1) {
    let m = 0;
    for (let i = 0; i < n; i++) if (w[i] >= p.minP) { ids[m] = ids[i]; vals[m] = vals[i]; w[m] = w[i]; m++; }
    n = m;
  }

  total = 0;
  for (let i = 0; i < n; i++) total += w[i];
  return { ids, weights: w, count: n, total };
}

/** Inverse-CDF draw over the candidates' weights with u in [0, 1). */
export function drawCandidate(c: Candidates, u: number): number {
  const target = u * c.total;
  let acc = 0;
  for (let i = 0; i < c.count; i++) {
    acc += c.weights[i];
    if (acc > target) return c.ids[i];
  }
  // Rounding can leave target >= acc: take the last candidate with weight.
  for (let i = c.count - 1; i >= 0; i--) if (c.weights[i] > 0) return c.ids[i];
  return c.ids[0];
}

/**
 * Per-request sampler: holds the resolved parameters, the penalty history
 * (prompt + generated ids) and the PRNG.
 */
export class Sampler {
  readonly params: ResolvedSampling;
  /** No randomness: temperature 0 or top_k 1. */
  readonly greedy: boolean;
  readonly penalized: boolean;
  /** The seed in use; null for greedy. */
  readonly seed: number | null;
  private readonly rng: (() => number) | null;
  private readonly seen = new Set<number>();
  private readonly counts = new Map<number, number>();
  private readonly scratch = new SamplerScratch();
  private processed = new Float32Array(0);

  constructor(params: SamplingParams, promptIds: ArrayLike<number> = []) {
    this.params = resolveSamplingParams(params);
    const p = this.params;
    this.greedy = p.temperature === 0 || p.topK === 1;
    this.penalized = p.repetitionPenalty !== 1 || p.frequencyPenalty !== 0 || p.presencePenalty !== 0;
    this.seed = this.greedy ? null : (p.seed ?? randomSeed());
    this.rng = this.seed === null ? null : createRng(this.seed);
    if (p.repetitionPenalty !== 1) for (let i = 0; i < promptIds.length; i++) this.seen.add(promptIds[i]);
  }

  /** Whether sample() needs full logits (false: a model-side argmax id suffices). */
  get needsLogits(): boolean {
    return !this.greedy || this.penalized;
  }

  /** Records a generated token for the penalties. */
  accept(id: number): void {
    if (this.params.repetitionPenalty !== 1) this.seen.add(id);
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }

  /** A copy of the logits with the penalties applied (the logits are not modified). */
  applyPenalties(logits: Float32Array): Float32Array {
    if (this.processed.length !== logits.length) this.processed = new Float32Array(logits.length);
    const s = this.processed;
    s.set(logits);
    applyRepetitionPenalty(s, this.seen, this.params.repetitionPenalty);
    applyFrequencyPresencePenalty(s, this.counts, this.params.frequencyPenalty, this.params.presencePenalty);
    return s;
  }

  /**
   * Picks the next token, never one of `banned` (bad_words_ids: their scores become -Infinity in
   * a copy; the logits are not modified). Does not record it: call accept().
   */
  sample(logits: Float32Array, banned: readonly number[] = []): number {
    let scores = this.penalized ? this.applyPenalties(logits) : logits;
    if (banned.length > 0) {
      if (scores === logits) {
        if (this.processed.length !== logits.length) this.processed = new Float32Array(logits.length);
        this.processed.set(logits);
        scores = this.processed;
      }
      for (const id of banned) if (id >= 0 && id < scores.length) scores[id] = -Infinity;
    }
    if (this.greedy) {
      const id = argmax(scores);
      if (id < 0) throw new WebvlmError("internal", "sampler: every logit is -Infinity or NaN");
      return id;
    }
    const c = filterCandidates(scores, this.params, this.scratch);
    return drawCandidate(c, (this.rng as () => number)());
  }
}
