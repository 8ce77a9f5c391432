// Text-only families through the whole engine (src/engine, which names no family): a tiny Phi-3
// and a tiny Mistral checkpoint loaded by path, chat completions rendered with the checkpoint's
// chat template, answered greedily: the answer equals the CPU reference's greedy tokens on the
// same prompt ids, decoded; an image in a request is unsupported_feature and the engine answers
// the next request. generation_config.json's bad_words_ids ban the token the model would pick.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { Engine } from "../../src/engine/engine.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { buildChatPrompt, ChatTemplate, resolveChatTemplate } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { makeTinyText, type TinyTextFamily } from "../../scripts/make_tiny_text.ts";
import { loadRefDecoder, refArgmax, RefDecoderCache, refDecoderForward, refDecoderGreedy } from "../reference/ref_decoder.ts";

let root = "";
let gpu: GpuContext;

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-text-engine-"));
  gpu = await acquireNodeGpu();
});
after(async () => {
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

const readJson = async (dir: string, f: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(join(dir, f), "utf8"));

for (const fam of ["phi3", "mistral"] as const satisfies readonly TinyTextFamily[]) {
  test(`${fam}: engine chat completion equals the reference's greedy answer; images are unsupported_feature`, { timeout: 600_000 }, async (t) => {
    const dir = join(root, fam);
    await makeTinyText(dir, fam);
    const engine = await Engine.create({ gpu });
    try {
      await engine.load(dir, { quantization: "f32", embedding: "f32", contextLength: 128 });
      const messages = [{ role: "user" as const, content: "Hi there, what is WebGPU good for?" }];
      const r = await engine.chat.completions.create({ messages, max_tokens: 8, temperature: 0, stream: false });

      const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
      const tpl = new ChatTemplate(resolveChatTemplate({ tokenizerConfig: await readJson(dir, "tokenizer_config.json") }));
      const ids = buildChatPrompt(tok, tpl, messages, [], { addGenerationPrompt: true }).ids;
      const eos = [(await readJson(dir, "generation_config.json")).eos_token_id].flat() as number[];
      const ref = refDecoderGreedy(loadRefDecoder(dir), ids, 8);
      const answer = ref.tokens.filter((x, i) => !(eos.includes(x) && i === ref.tokens.length - 1));
      assert.equal(r.usage.prompt_tokens, ids.length);
      // The completion's text is decode(answer), as transformers decodes it (a sentencepiece answer
      // starting with "▁word" loses that space to the Strip decoder).
      assert.equal(r.choices[0].message.content, tok.decode(answer, { skipSpecialTokens: true }));
      assert.equal(r.usage.completion_tokens, ref.tokens.length);
      t.diagnostic(`prompt ${ids.length} tokens, answer ${JSON.stringify(r.choices[0].message.content)} (${r.usage.completion_tokens} tokens, ${r.choices[0].finish_reason})`);

      await assert.rejects(
        engine.chat.completions.create({
          messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }, { type: "text", text: "What is this?" }] }],
          max_tokens: 2,
          stream: false,
        }),
        (e: unknown) => e instanceof WebvlmError && e.code === "unsupported_feature",
      );
      const again = await engine.chat.completions.create({ messages, max_tokens: 8, temperature: 0, stream: false });
      assert.equal(again.choices[0].message.content, r.choices[0].message.content);
      // The repeated prompt comes from the KV cache (all but the last token, which is recomputed).
      const cached = again.usage.prompt_tokens_details?.cached_tokens ?? 0;
      assert.ok(cached > 0 && cached < again.usage.prompt_tokens, `cached ${cached} of ${again.usage.prompt_tokens} prompt tokens`);
    } finally {
      await engine.unload();
    }
  });
}

test("mistral: generation_config.json bad_words_ids bans the token the model would pick; the answer equals the reference's masked greedy", { timeout: 600_000 }, async (t) => {
  const dir = join(root, "mistral-bad-words");
  await makeTinyText(dir, "mistral");
  const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
  const tpl = new ChatTemplate(resolveChatTemplate({ tokenizerConfig: await readJson(dir, "tokenizer_config.json") }));
  const messages = [{ role: "user" as const, content: "Name a colour" }];
  const ids = buildChatPrompt(tok, tpl, messages, [], { addGenerationPrompt: true }).ids;
  const genCfg = await readJson(dir, "generation_config.json");
  const eos = [genCfg.eos_token_id].flat() as number[];
  const ref = loadRefDecoder(dir);
  const banned = refArgmax(refDecoderGreedy(ref, ids, 1).firstLogits);
  assert.ok(!eos.includes(banned), "the model's first pick is a real token");
  await writeFile(join(dir, "generation_config.json"), JSON.stringify({ ...genCfg, bad_words_ids: [[banned]] }));

  // The reference, masked by hand: greedy over logits with `banned` at -Infinity, 4 tokens.
  const cache = new RefDecoderCache(ref.config.layers);
  const want: number[] = [];
  let logits = refDecoderForward(ref, ids, cache);
  const firstLogits = logits;
  for (;;) {
    const masked = Float32Array.from(logits);
    masked[banned] = -Infinity;
    want.push(refArgmax(masked));
    if (want.length === 4 || eos.includes(want[want.length - 1])) break;
    logits = refDecoderForward(ref, [want[want.length - 1]], cache);
  }
  assert.notEqual(want[0], banned);

  const engine = await Engine.create({ gpu });
  try {
    await engine.load(dir, { quantization: "f32", embedding: "f32", contextLength: 128 });
    const r = await engine.chat.completions.create({ messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 1, stream: false });
    const answer = want.filter((x, i) => !(eos.includes(x) && i === want.length - 1));
    assert.equal(r.choices[0].message.content, tok.decode(answer, { skipSpecialTokens: true }));
    assert.equal(r.usage.completion_tokens, want.length);
    // The reported logprob is that of the raw logits; the banned token is still the top alternative.
    let mx = -Infinity;
    for (const x of firstLogits) mx = Math.max(mx, x);
    let sum = 0;
    for (const x of firstLogits) sum += Math.exp(x - mx);
    const first = r.choices[0].logprobs!.content[0];
    assert.ok(Math.abs(first.logprob - (firstLogits[want[0]] - mx - Math.log(sum))) < 1e-3, `logprob ${first.logprob}`);
    assert.ok(first.top_logprobs[0].logprob > first.logprob);
    t.diagnostic(`banned ${banned}; answer ${JSON.stringify(r.choices[0].message.content)} = reference ids ${want.join(",")}`);
  } finally {
    await engine.unload();
  }
});
