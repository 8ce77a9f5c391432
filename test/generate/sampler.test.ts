// Sampler: processors against formulas written out here, filters against a
// brute-force reference (full sort, float64), PRNG reproducibility, draw
// frequencies, and cost on a Qwen-sized vocab (151936 logits).
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  Sampler,
  applyFrequencyPresencePenalty,
  applyRepetitionPenalty,
  argmax,
  createRng,
  drawCandidate,
  filterCandidates,
  generationConfigDefaults,
  kthLargest,
  resolveSamplingParams,
  xoshiro128ss,
} from "../../src/generate/sampler.ts";
import { randomArray } from "../util/compare.ts";

const V = 151936;

/** Reference: survivors and their probabilities, by full sorts (HF semantics written from the docs). */
function refDistribution(scores: ArrayLike<number>, T: number, topK: number, topP: number, minP: number): Map<number, number> {
  let items = Array.from(scores, (v, id) => ({ id, s: v / T })).filter((x) => x.s > -Infinity);
  const byDesc = (a: { id: number; s: number }, b: { id: number; s: number }): number => b.s - a.s || a.id - b.id;
  const probs = (xs: { id: number; s: number }[]): number[] => {
    const m = Math.max(...xs.map((x) => x.s));
    const e = xs.map((x) => Math.exp(x.s - m));
    const z = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / z);
  };
  if (topK > 0 && topK < items.length) {
    const kth = items.slice().sort(byDesc)[topK - 1].s;
    items = items.filter((x) => x.s >= kth);
  }
  if (topP < 1) {
    items.sort(byDesc);
    const p = probs(items);
    const kept = [];
    let before = 0;
    for (let i = 0; i < items.length; i++) {
      if (i > 0 && before >= topP) break;
      kept.push(items[i]);
      before += p[i];
    }
    items = kept;
  }
  if (minP > 0) {
    const p = probs(items);
    const pmax = Math.max(...p);
    items = items.filter((_, i) => p[i] >= minP * pmax);
  }
  const p = probs(items);
  return new Map(items.map((x, i) => [x.id, p[i]]));
}

function gotDistribution(scores: Float32Array, T: number, topK: number, topP: number, minP: number): Map<number, number> {
  const c = filterCandidates(scores, { temperature: T, topK, topP, minP });
  const m = new Map<number, number>();
  for (let i = 0; i < c.count; i++) m.set(c.ids[i], c.weights[i] / c.total);
  return m;
}

function assertSameDistribution(label: string, got: Map<number, number>, ref: Map<number, number>): void {
  assert.deepEqual([...got.keys()].sort((a, b) => a - b), [...ref.keys()].sort((a, b) => a - b), `${label}: survivor set`);
  for (const [id, p] of ref) assert.ok(Math.abs((got.get(id) as number) - p) < 1e-9, `${label}: p[${id}] ${got.get(id)} vs ${p}`);
}

test("xoshiro128** matches the reference output for state [1,2,3,4]", () => {
  // First outputs of the reference C implementation seeded with s = {1, 2, 3, 4}.
  const next = xoshiro128ss(1, 2, 3, 4);
  assert.deepEqual([next(), next(), next(), next(), next(), next()], [11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
  const r = createRng(42);
  for (let i = 0; i < 1000; i++) {
    const u = r();
    assert.ok(u >= 0 && u < 1);
  }
});

test("argmax: first maximum, NaN ignored", () => {
  assert.equal(argmax(Float32Array.from([1, 3, NaN, 3, 2])), 1);
  assert.equal(argmax(Float32Array.from([NaN, -Infinity, -5])), 2);
  assert.equal(argmax(Float32Array.from([NaN, -Infinity])), -1);
});

test("kthLargest equals a full sort, with many ties", () => {
  for (const [n, seed] of [[1, 1], [7, 2], [1000, 3], [5000, 4]] as const) {
    const base = randomArray(n, seed, -3, 3);
    for (let i = 0; i < n; i += 3) base[i] = Math.round(base[i]); // ties
    if (n > 10) base.fill(-Infinity, 0, n >> 2);
    const sorted = Array.from(base).sort((a, b) => b - a);
    for (const k of [1, 2, Math.max(1, n >> 1), n].filter((k) => k <= n)) assert.equal(kthLargest(base.slice(), n, k), sorted[k - 1], `n=${n} k=${k}`);
  }
});

test("greedy: temperature 0 picks the argmax; top_k 1 equals greedy and uses no randomness", () => {
  for (let seed = 1; seed <= 5; seed++) {
    const logits = randomArray(V, seed, -10, 10);
    const want = argmax(logits);
    assert.equal(new Sampler({ temperature: 0 }).sample(logits), want);
    assert.equal(new Sampler({ temperature: 0.9, topK: 1, seed: 7 }).sample(logits), want);
    assert.equal(new Sampler({ temperature: 1.5, topK: 1 }).sample(logits), want);
  }
  const s = new Sampler({ topK: 1, topP: 0.001, temperature: 0.01 }); // Qwen2-VL generation_config
  assert.equal(s.greedy, true);
  assert.equal(s.needsLogits, false);
  assert.equal(s.seed, null);
  assert.equal(new Sampler({ temperature: 0.7 }).needsLogits, true);
  assert.equal(new Sampler({ temperature: 0, repetitionPenalty: 1.05 }).needsLogits, true);
});

test("seeded sampling is reproducible; different seeds differ", () => {
  const steps = Array.from({ length: 12 }, (_, i) => randomArray(V, 100 + i, -4, 4));
  const run = (seed: number | undefined): number[] => {
    const s = new Sampler({ temperature: 1, seed });
    return steps.map((l) => s.sample(l));
  };
  const a = run(1234), b = run(1234), c = run(1235), d = run(undefined), e = run(undefined);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.notDeepEqual(d, e); // random seeds (2^-32 chance of a collision)
  const s = new Sampler({ temperature: 1 });
  assert.ok(Number.isInteger(s.seed) && (s.seed as number) >= 0);
  // The reported random seed replays the run.
  const replay = new Sampler({ temperature: 1, seed: s.seed as number });
  assert.deepEqual(steps.map((l) => s.sample(l)), steps.map((l) => replay.sample(l)));
  // Large and negative seeds are accepted and distinct.
  assert.notDeepEqual(run(2 ** 40 + 5), run(5));
  assert.deepEqual(run(-3), run(-3));
});

test("top_k / top_p / min_p / temperature filters equal the brute-force reference", () => {
  const configs: [number, number, number, number][] = [
    // [T, topK, topP, minP]
    [1, 5, 1, 0], [0.7, 1000, 1, 0], [1, 0, 0.9, 0], [0.5, 0, 0.5, 0], [1.3, 0, 0.999, 0],
    [1, 0, 1, 0.1], [0.8, 0, 1, 0.01], [1, 40, 0.8, 0], [0.9, 50, 0.95, 0.05], [2, 0, 0.3, 0.2],
    [1, 3, 0.0001, 0], [1, 0, 1, 1],
  ];
  const inputs: [string, Float32Array][] = [
    ["random 2000", randomArray(2000, 9, -5, 5)],
    ["peaked 3000", (() => { const a = randomArray(3000, 10, -2, 2); a[17] = 8; a[2999] = 7.5; a[5] = 7.5; return a; })()],
    ["ties + -inf", (() => { const a = randomArray(1500, 11, -3, 3).map((v) => Math.round(v)); a.fill(-Infinity, 100, 300); return a; })()],
    ["flat 5000", randomArray(5000, 12, -0.01, 0.01)],
  ];
  for (const [name, scores] of inputs) {
    for (const [T, k, p, mp] of configs) {
      assertSameDistribution(`${name} T=${T} k=${k} p=${p} minP=${mp}`, gotDistribution(scores, T, k, p, mp), refDistribution(scores, T, k, p, mp));
    }
  }
});

test("draw frequencies follow the filtered distribution", () => {
  const scores = Float32Array.from([2, 1.5, 1, 0.5, 0, -0.5, -1, -3, -Infinity, 1.9]);
  for (const [T, k, p, mp] of [[1, 0, 1, 0], [0.7, 4, 1, 0], [1, 0, 0.8, 0], [1.5, 0, 1, 0.2]] as const) {
    const ref = refDistribution(scores, T, k, p, mp);
    const rng = createRng(99);
    const N = 40000;
    const counts = new Map<number, number>();
    for (let i = 0; i < N; i++) {
      const id = drawCandidate(filterCandidates(scores, { temperature: T, topK: k, topP: p, minP: mp }), rng());
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    for (const id of counts.keys()) assert.ok(ref.has(id), `T=${T}: drew filtered-out id ${id}`);
    for (const [id, pr] of ref) {
      const f = (counts.get(id) ?? 0) / N;
      assert.ok(Math.abs(f - pr) < 5 * Math.sqrt((pr * (1 - pr)) / N) + 1e-4, `T=${T} k=${k} p=${p}: id ${id} freq ${f} vs p ${pr}`);
    }
  }
});

test("repetition penalty (HF): seen ids once, divide positives, multiply negatives", () => {
  const s = Float32Array.from([2, -2, 0, 3, -1, 5]);
  applyRepetitionPenalty(s, [0, 1, 2, 0, 0, 4], 1.25); // id 0 three times: penalized once
  assert.deepEqual(Array.from(s), [2 / 1.25, -2 * 1.25, 0, 3, -1 * 1.25, 5].map(Math.fround));
  const t = Float32Array.from([2, -2]);
  applyRepetitionPenalty(t, [0, 1], 0.5); // penalty < 1 encourages
  assert.deepEqual(Array.from(t), [4, -1]);
});

test("frequency / presence penalties (OpenAI): logit -= count*freq + presence", () => {
  const s = Float32Array.from([1, 1, 1, 1]);
  applyFrequencyPresencePenalty(s, new Map([[0, 3], [2, 1]]), 0.5, 0.25);
  assert.deepEqual(Array.from(s), [1 - 3 * 0.5 - 0.25, 1, 1 - 0.5 - 0.25, 1]);
});

test("Sampler applies repetition (prompt + generated) then frequency/presence (generated only)", () => {
  const logits = Float32Array.from([4, -4, 2, -2, 1, 0.5]);
  const s = new Sampler({ temperature: 0, repetitionPenalty: 2, frequencyPenalty: 0.5, presencePenalty: 0.25 }, [0, 1, 1]);
  s.accept(2);
  s.accept(2);
  s.accept(3);
  const got = Array.from(s.applyPenalties(logits));
  const want = [4 / 2, -4 * 2, 2 / 2 - 2 * 0.5 - 0.25, -2 * 2 - 0.5 - 0.25, 1, 0.5];
  assert.deepEqual(got, want);
  assert.deepEqual(Array.from(logits), [4, -4, 2, -2, 1, 0.5], "input logits untouched");
  // Greedy uses the penalized scores: raw argmax is id 0 (4), penalized it is 2 -> 4/2 = 2 vs id 4's 1.
  assert.equal(s.sample(logits), 0);
  const s2 = new Sampler({ temperature: 0, repetitionPenalty: 5 }, [0]);
  assert.equal(s2.sample(logits), 2); // 4/5 = 0.8 < 2
  // Frequency/presence penalties ignore prompt ids.
  const s3 = new Sampler({ temperature: 0, presencePenalty: 2 }, [0]);
  assert.equal(s3.sample(logits), 0);
  s3.accept(0);
  assert.equal(s3.sample(logits), 0); // 4 - 2 = 2 ties id 2's 2: lowest id wins
  s3.accept(0);
  assert.equal(s3.sample(Float32Array.from([4, -4, 2.5])), 2);
});

test("parameter validation and generation_config defaults", () => {
  const bad = (p: object): void => assert.throws(() => resolveSamplingParams(p), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
  bad({ temperature: -0.1 });
  bad({ temperature: NaN });
  bad({ topP: 0 });
  bad({ topP: 1.1 });
  bad({ topK: 2.5 });
  bad({ minP: 2 });
  bad({ repetitionPenalty: 0 });
  bad({ frequencyPenalty: 3 });
  bad({ presencePenalty: -2.5 });
  bad({ seed: 1.5 });
  assert.deepEqual(resolveSamplingParams({ topK: -1 }).topK, 0);
  // Ranges without an upper bound are worded as such (no 1.79e308 printed).
  const message = (p: object): string => {
    try {
      resolveSamplingParams(p);
    } catch (e) {
      return (e as Error).message;
    }
    return "";
  };
  assert.equal(message({ temperature: -1 }), "temperature: must be a finite number >= 0, got -1");
  assert.equal(message({ temperature: Infinity }), "temperature: must be a finite number >= 0, got Infinity");
  assert.equal(message({ repetitionPenalty: 0 }), "repetition_penalty: must be a finite number > 0, got 0");
  assert.equal(message({ topP: 1.5 }), "top_p: must be a number in (0, 1], got 1.5");
  const d = generationConfigDefaults({ do_sample: true, temperature: 0.01, top_k: 1, top_p: 0.001, eos_token_id: [151645, 151643] });
  assert.deepEqual(d, { sampling: { temperature: 0.01, topK: 1, topP: 0.001 }, eosTokenIds: [151645, 151643], badWordsIds: [] });
  assert.deepEqual(generationConfigDefaults({ eos_token_id: 2, repetition_penalty: 1.05 }), {
    sampling: { temperature: 0, repetitionPenalty: 1.05 }, eosTokenIds: [2], badWordsIds: [],
  });
});

test("cost per step on 151936 logits stays O(vocab)", (t) => {
  const peaked = randomArray(V, 5, -8, 8);
  for (let i = 0; i < 50; i++) peaked[(i * 7919) % V] += 6;
  const flat = randomArray(V, 6, -0.05, 0.05);
  const cases: [string, Float32Array, object][] = [
    ["greedy", peaked, { temperature: 0 }],
    ["T=1 full vocab", peaked, { temperature: 1, seed: 1 }],
    ["top_k=50", peaked, { temperature: 0.8, topK: 50, seed: 1 }],
    ["top_p=0.9", peaked, { temperature: 0.7, topP: 0.9, seed: 1 }],
    ["top_p=0.9 flat (worst case)", flat, { temperature: 1, topP: 0.9, seed: 1 }],
    ["min_p=0.05 + rep penalty", peaked, { temperature: 1, minP: 0.05, repetitionPenalty: 1.1, seed: 1 }],
  ];
  const lines: string[] = [];
  for (const [name, logits, params] of cases) {
    const s = new Sampler(params, Array.from({ length: 500 }, (_, i) => i * 13));
    s.sample(logits); // warm up
    const n = 10;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) s.sample(logits);
    const ms = (performance.now() - t0) / n;
    lines.push(`${name}: ${ms.toFixed(2)} ms/step`);
    // Generous bound (2-core CI machine); a quadratic path would take seconds.
    assert.ok(ms < 250, `${name}: ${ms} ms/step`);
  }
  t.diagnostic(lines.join("; "));
});
