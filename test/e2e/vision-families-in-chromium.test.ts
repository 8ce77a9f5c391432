// Each vision family's tiny checkpoint, served over HTTP, answers an image question inside Chromium
// through the worker engine (weights through the IndexedDB cache) with the same tokens and logprobs
// as the Node engine gives for the same request. One browser and one page server for all families.
// Node preprocesses on the CPU (the TypeScript reference path), the worker on the GPU (the default:
// the image decoded into a texture, resized, normalized and cut into tiles/crops in WGSL), so equal
// tokens also check each family's GPU preprocessing in Chromium against its CPU path.
//   Idefics2: SigLIP tower, perceiver resampler, Mistral decoder; processor_config.json's chat
//     template and image_seq_len, image splitting.
//   Phi-3.5-vision: CLIP tower sized by its tensors, HD crops with sub_GN/glb_GN, su/longrope Phi-3
//     decoder; preprocessor_config.json's num_crops, the numbered <|image_1|> tag tokenized chunk by chunk.
//   Llama 3.2 Vision: tiled ViT, gated cross-attention decoder layers; chat_template.json, tiles and
//     aspect-ratio ids.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser } from "playwright-core";
import type { ViteDevServer } from "vite";
import { makeTinyIdefics2 } from "../../scripts/make_tiny_idefics2.ts";
import { makeTinyMllama } from "../../scripts/make_tiny_mllama.ts";
import { makeTinyPhi3V } from "../../scripts/make_tiny_phi3v.ts";
import { Engine } from "../../src/engine/engine.ts";
import { StaticServer } from "../util/static_server.ts";
import type { WorkerAnswer } from "../browser/worker-answer.ts";
import { launchChromium, repoRoot, startViteServer } from "./browser.ts";

const QUESTION = "What is in this picture?";
const IMAGE = "test/fixtures/vision/resize_src_160x120.png";
const MAX_TOKENS = 8;

interface FamilyCase {
  family: string;
  title: string;
  dir: string;
  make(out: string): Promise<unknown>;
  /** A file only this family's loader reads, which must have been fetched. */
  file?: string;
}

const CASES: readonly FamilyCase[] = [
  { family: "idefics2", title: "Idefics2", dir: "idefics2-tiny-a", make: (o) => makeTinyIdefics2("tiny-a", o), file: "processor_config.json" },
  // tiny-b: num_crops 1 (the global view and one crop: 313 image tokens), O = 400 (short factors).
  { family: "phi3_v", title: "Phi-3.5-vision", dir: "phi3v-tiny-b", make: (o) => makeTinyPhi3V("tiny-b", o), file: "preprocessor_config.json" },
  { family: "mllama", title: "Llama 3.2 Vision", dir: "mllama-tiny-a", make: (o) => makeTinyMllama("tiny-a", o) },
];

let dir = "";
let models: StaticServer;
let vite: ViteDevServer;
let url = "";
let browser: Browser;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-families-e2e-"));
  for (const c of CASES) await c.make(join(dir, c.dir));
  models = await StaticServer.start({ root: dir });
  ({ server: vite, url } = await startViteServer());
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await vite?.close();
  await models?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

for (const c of CASES) {
  test(`tiny ${c.title} answers an image question in Chromium through the worker engine as in Node`, { timeout: 900_000 }, async (t) => {
    const engine = await Engine.create();
    let expected: { text: string; logprobs: number[]; finish: string | null };
    try {
      const info = await engine.load(models.url(c.dir), { quantization: "f32", embedding: "f32", vision: "f32", preprocessing: "cpu" });
      assert.equal(info.family, c.family);
      const r = await engine.chat.completions.create({
        messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: join(repoRoot, IMAGE) } }, { type: "text", text: QUESTION }] }],
        max_tokens: MAX_TOKENS,
        temperature: 0,
        logprobs: true,
      });
      expected = {
        text: r.choices[0].message.content,
        logprobs: (r.choices[0].logprobs?.content ?? []).map((l) => l.logprob),
        finish: r.choices[0].finish_reason,
      };
    } finally {
      await engine.unload();
      engine.gpu.destroy();
    }
    assert.ok(expected.logprobs.length > 0, "the Node engine generated tokens");

    const page = await browser.newPage();
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    let finish!: (r: WorkerAnswer) => void;
    const done = new Promise<WorkerAnswer>((r) => (finish = r));
    await page.exposeFunction("__answerDone", (r: WorkerAnswer) => finish(r));
    const q = new URLSearchParams({ model: models.url(c.dir), image: `/${IMAGE}`, q: QUESTION, max: String(MAX_TOKENS) });
    await page.goto(`${url}/test/browser/worker-answer.html?${q}`);
    const r = await done;
    await page.close();
    assert.equal(r.error, undefined, `${r.error}\n${errors.join("\n")}`);
    t.diagnostic(`answer: ${JSON.stringify(r.streamed)}, ${r.tokens} tokens, finish ${r.finish}`);
    assert.equal(r.family, c.family);
    assert.equal(r.preprocessDevice, "gpu", "the worker preprocessed the image on the GPU");
    assert.equal(r.streamed, expected.text, "the worker's streamed answer equals the Node engine's");
    assert.equal(r.finish, expected.finish);
    assert.equal(r.logprobs?.length, expected.logprobs.length, "same number of tokens");
    r.logprobs!.forEach((lp, i) => assert.ok(Math.abs(lp - expected.logprobs[i]) <= 1e-3, `token ${i}: logprob ${lp} in Chromium, ${expected.logprobs[i]} in Node`));
    if (c.file) assert.ok(models.log.some((l) => l.path.endsWith(`${c.dir}/${c.file}`)), `${c.file} was read`);
  });
}
