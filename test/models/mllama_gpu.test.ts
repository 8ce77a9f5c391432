// The Llama 3.2 Vision model on the GPU (src/models/mllama) against the independent f32 CPU
// reference (test/reference/mllama_reference.ts), on tiny checkpoints of scripts/make_tiny_mllama.ts
// written at test time: tiny-a (GQA, cross layer 1 of 3, 4 tiles) under both tensor-name layouts,
// tiny-b (MHA, cross layers 0 and 3 of 4, 2 tiles). Images are procedural pictures preprocessed by
// the family's image processor (1, 2 and 4 tiles); the reference gets the same pixel values. Checks:
// cross states, last-position logits, 32 greedy tokens, two images separated and adjacent with text
// before the first, a text-only request, a second turn reusing the cached prefix and cross K/V,
// chunked prefill, an abort between chunks, q8/q4 against the reference on the same rounded
// weights, the tensor table against the generator's list, and the processor's GPU preprocessing
// (patch rows made on the GPU) against the CPU-preprocessed run.
//
// WEBVLM_GREEDY_TOKENS overrides the token count (32).
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import { openCheckpointDir } from "../../src/loader/file_node.ts";
import type { SafetensorsCheckpoint } from "../../src/loader/safetensors.ts";
import { checkpointTensorSource, type TensorSource, type WeightLoadOptions } from "../../src/models/common/source.ts";
import { setPrefillChunkTokens } from "../../src/models/common/step.ts";
import { parseMllamaConfig, type MllamaConfig } from "../../src/models/mllama/config.ts";
import { parseMllamaPreprocess, processMllamaImage } from "../../src/models/mllama/image_processor.ts";
import { MllamaModel, type MllamaImageItem } from "../../src/models/mllama/model.ts";
import { mllamaHubName, mllamaNameCandidates, mllamaTensorTable } from "../../src/models/mllama/names.ts";
import { resolveFamily } from "../../src/models/registry.ts";
import { roundTripValues } from "../../src/quant/pack.ts";
import { makeTinyMllama, mllamaNewTensorName, tinyMllamaTensors, type MllamaTensorLayout, type TinyMllamaShape } from "../../scripts/make_tiny_mllama.ts";
import { loadMllamaReference, type MllamaReference } from "../reference/mllama_reference.ts";
import { nmse } from "../util/compare.ts";
import { StaticServer } from "../util/static_server.ts";
import { Engine } from "../../src/engine/engine.ts";
import { encode as encodePng } from "fast-png";
import { isTensor, type Tensor } from "../../src/gpu/tensor.ts";
import { mllamaPatchRows } from "../../src/models/mllama/vision.ts";
import type { MediaRef, PreparedMedia } from "../../src/models/family.ts";
import { loadImage } from "../../src/vision/load_image.ts";

const GREEDY_TOKENS = Number(process.env.WEBVLM_GREEDY_TOKENS ?? 32);
const F32: WeightLoadOptions = { textLinear: "f32", vision: "f32", embedding: "f32" };
const DATE = "26 Jul 2024";

let root = "";
let gpu: GpuContext;
const checkpoints: SafetensorsCheckpoint[] = [];

/** A gradient with a diagonal pattern, RGB8. */
function picture(w: number, h: number, seed: number): { rgb: Uint8Array; width: number; height: number } {
  const rgb = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      rgb[i] = Math.round((255 * x) / Math.max(1, w - 1));
      rgb[i + 1] = Math.round((255 * y) / Math.max(1, h - 1));
      rgb[i + 2] = (x * 7 + y * 13 + seed * 31) & 255;
    }
  }
  return { rgb, width: w, height: h };
}

const readJson = async (dir: string, f: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(join(dir, f), "utf8"));

async function dirSource(dir: string): Promise<TensorSource> {
  const ckpt = await openCheckpointDir(dir);
  checkpoints.push(ckpt);
  return checkpointTensorSource(ckpt);
}

/** The reference's inputs for a list of images: pixel_values, aspect_ratio_ids, aspect_ratio_mask. */
function refInputs(images: readonly MllamaImageItem[], T: number): { pv: Float32Array; ids: number[]; mask: number[]; tiles: number[] } {
  const host = images.map((im) => {
    assert.ok(im.pixelValues instanceof Float32Array, "the reference reads host pixel values");
    return im.pixelValues;
  });
  const per = host[0]?.length ?? 0;
  const pv = new Float32Array(images.length * per);
  host.forEach((p, i) => pv.set(p, i * per));
  const mask: number[] = [];
  for (const im of images) for (let t = 0; t < T; t++) mask.push(t < im.numTiles ? 1 : 0);
  return { pv, ids: images.map((im) => im.aspectRatioId), mask, tiles: images.map((im) => im.numTiles) };
}

/** Prefill then greedy decode steps; stops after an eos id. */
async function gpuGreedy(model: MllamaModel, ids: number[], images: MllamaImageItem[], count: number): Promise<{ tokens: number[]; logits: Float32Array }> {
  const cache = model.createCache(ids.length + count + 1);
  try {
    const pre = await model.prefill(ids, images, cache, { read: "logits" });
    const eos = model.config.eosTokenIds;
    const argmax = (l: Float32Array): number => l.reduce((b, v, i) => (v > l[b] ? i : b), 0);
    const tokens = [argmax(pre.logits!)];
    while (tokens.length < count && !eos.includes(tokens[tokens.length - 1])) {
      const step = await model.decode(tokens[tokens.length - 1], cache, { read: "argmax" });
      tokens.push(step.tokenId!);
    }
    return { tokens, logits: pre.logits! };
  } finally {
    cache.dispose();
  }
}

const isDecoderLinear = (name: string): boolean =>
  /^(language_model\.model|model\.language_model)\.layers\.\d+\.((self|cross)_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/.test(name);

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-mllama-"));
  await makeTinyMllama("tiny-a", join(root, "tiny-a"));
  await makeTinyMllama("tiny-a", join(root, "tiny-a-new"), { layout: "new" });
  await makeTinyMllama("tiny-b", join(root, "tiny-b"));
  gpu = await acquireNodeGpu();
});

after(async () => {
  setPrefillChunkTokens();
  for (const c of checkpoints) await c.close();
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

test("tensor table: the generator's names under both layouts, with their shapes", async () => {
  for (const shape of ["tiny-a", "tiny-b"] as const satisfies readonly TinyMllamaShape[]) {
    const dir = join(root, shape);
    const config = parseMllamaConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
    const table = mllamaTensorTable(config);
    for (const layout of ["old", "new"] as const satisfies readonly MllamaTensorLayout[]) {
      const gen = new Map(tinyMllamaTensors(shape, layout).map((t) => [t.name, t.shape]));
      const ours = new Map(table.map((t) => [mllamaNameCandidates(t.name)[layout === "old" ? 0 : 1], t.shape]));
      assert.deepEqual([...ours.keys()].sort(), [...gen.keys()].sort(), `${shape} ${layout}`);
      for (const [n, s] of ours) assert.deepEqual(s, gen.get(n), n);
    }
    for (const t of table) assert.equal(mllamaNameCandidates(t.name)[1], mllamaNewTensorName(mllamaHubName(t.name)));
  }
});

test("config: typed errors name the field", () => {
  const base = { text_config: { hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, num_hidden_layers: 3, cross_attention_layers: [5] }, vision_config: {} };
  assert.throws(() => parseMllamaConfig(base), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request" && e.message.includes("cross_attention_layers"));
  assert.throws(() => parseMllamaConfig({ vision_config: {} }), (e: unknown) => e instanceof WebvlmError && e.message.includes("text_config"));
});

test("config: both spellings transformers has written parse alike; llama3 rope, cross layers, embed rows", async () => {
  const json = await readJson(join(root, "tiny-b"), "config.json");
  const a = parseMllamaConfig(json);
  const { attention_heads: heads, ...vision } = json.vision_config as Record<string, unknown>;
  const { image_token_index: imageToken, ...top } = json;
  const b = parseMllamaConfig({ ...top, image_token_id: imageToken, vision_config: { ...vision, num_attention_heads: heads } });
  assert.deepEqual(b, a);
  assert.equal(a.text.rope.kind, "llama3");
  assert.deepEqual(a.text.crossAttentionLayers, [0, 3]);
  assert.equal(a.text.embedRows, a.text.vocabSize + 8);
  assert.equal(a.vision.paddedTokensPerTile % 8, 0);
  assert.deepEqual(a.eosTokenIds, [128001, 128008, 128009]);
});

interface Case {
  name: string;
  dir: string;
  shape: TinyMllamaShape;
  /** Image sizes [w, h]: tiny-a tile 28 x 4 tiles, tiny-b tile 30 x 2 tiles. */
  sizes: [number, number][];
}

const CASES: Case[] = [
  { name: "tiny-a", dir: "tiny-a", shape: "tiny-a", sizes: [[50, 20], [60, 60]] },
  { name: "tiny-a (new tensor names)", dir: "tiny-a-new", shape: "tiny-a", sizes: [[20, 20], [60, 25]] },
  { name: "tiny-b", dir: "tiny-b", shape: "tiny-b", sizes: [[20, 50], [25, 25]] },
];

for (const c of CASES) {
  describe(c.name, () => {
    let config: MllamaConfig;
    let ref: MllamaReference;
    let model: MllamaModel;
    let images: MllamaImageItem[];
    let refStates: Float32Array;
    let tiles: number[];
    const T = (): number => config.vision.maxNumTiles;
    const prompt = (content: Parameters<MllamaReference["renderPrompt"]>[0]): number[] => ref.promptIds(ref.renderPrompt(content, { dateString: DATE }));
    const separated = (): number[] =>
      prompt([{ role: "user", content: [{ type: "text", text: "Look first." }, { type: "image" }, { type: "text", text: "Then compare" }, { type: "image" }, { type: "text", text: "with that one." }] }]);

    before(async () => {
      const dir = join(root, c.dir);
      config = parseMllamaConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
      const pp = parseMllamaPreprocess(await readJson(dir, "preprocessor_config.json"));
      images = c.sizes.map(([w, h], i) => {
        const p = processMllamaImage(picture(w, h, i), pp);
        return { pixelValues: p.pixelValues, aspectRatioId: p.aspectRatioId, numTiles: p.numTiles, hash: `img${i}` };
      });
      ref = loadMllamaReference(dir);
      const r = refInputs(images, T());
      tiles = r.tiles;
      refStates = ref.crossStates(r.pv, r.ids, r.mask, images.length);
      model = await MllamaModel.load(gpu, config, await dirSource(dir), F32);
    });

    after(() => model?.dispose());

    test("cross states equal the reference's (NMSE <= 1e-6)", async () => {
      assert.ok(new Set(tiles).size > 1, `images of different tile counts: ${tiles}`);
      const t = await model.crossStates(images);
      try {
        const e = nmse(await readF32(gpu, t), refStates);
        console.log(`# tiles ${tiles}: cross states NMSE ${e.toExponential(2)}`);
        assert.ok(e <= 1e-6, `NMSE ${e}`);
      } finally {
        gpu.pool.release(t.buffer);
      }
    });

    test("two separated images, text before the first: logits and greedy tokens", async () => {
      const ids = separated();
      const refLogits = ref.logits(ids, refStates, tiles);
      const want = ref.generate(ids, refStates, tiles, GREEDY_TOKENS);
      const got = await gpuGreedy(model, ids, images, GREEDY_TOKENS);
      const e = nmse(got.logits, refLogits);
      console.log(`# logits NMSE ${e.toExponential(2)}, ${got.tokens.length} tokens`);
      assert.ok(e <= 1e-6, `NMSE ${e}`);
      assert.deepEqual(got.tokens, want.tokens);
    });

    if (c.name === "tiny-a") {
      test("f16 KV cache (self-attention caches and cross K/V): 32 greedy tokens equal the f32 cache's; logit NMSE per step", async (t) => {
        const ids = separated();
        const run = async (kvDtype: "f16" | "f32"): Promise<{ tokens: number[]; logits: Float32Array[]; crossDtype: string }> => {
          const cache = model.createCache(ids.length + GREEDY_TOKENS + 1, { kvDtype, initialRows: 8 });
          try {
            const pre = await model.prefill(ids, images, cache, { read: "both" });
            const tokens = [pre.tokenId!];
            const logits = [pre.logits!];
            while (tokens.length < GREEDY_TOKENS && !model.config.eosTokenIds.includes(tokens[tokens.length - 1])) {
              const step = await model.decode(tokens[tokens.length - 1], cache, { read: "both" });
              tokens.push(step.tokenId!);
              logits.push(step.logits!);
            }
            return { tokens, logits, crossDtype: cache.cross!.kv[0].k.dtype };
          } finally {
            cache.dispose();
          }
        };
        const a = await run("f32");
        const b = await run("f16");
        assert.equal(a.crossDtype, "f32");
        assert.equal(b.crossDtype, "f16");
        assert.deepEqual(a.tokens, ref.generate(ids, refStates, tiles, GREEDY_TOKENS).tokens);
        assert.deepEqual(b.tokens, a.tokens);
        const errs = a.logits.map((l, i) => nmse(b.logits[i], l));
        const worst = Math.max(...errs);
        assert.ok(worst <= 1e-3, `f16-KV logits NMSE up to ${worst}`);
        t.diagnostic(
          `${b.tokens.length} tokens identical (prompt ${ids.length}); f16-KV vs f32-KV logit NMSE: prefill ${errs[0].toExponential(2)}, ` +
            `max over ${errs.length} steps ${worst.toExponential(2)}, mean ${(errs.reduce((x, y) => x + y, 0) / errs.length).toExponential(2)}`,
        );
      });
    }

    test("two adjacent images: logits", async () => {
      const ids = prompt([{ role: "user", content: [{ type: "image" }, { type: "image" }, { type: "text", text: "What do both show?" }] }]);
      const cache = model.createCache(ids.length + 1);
      try {
        const r = await model.prefill(ids, images, cache, { read: "logits" });
        const e = nmse(r.logits!, ref.logits(ids, refStates, tiles));
        assert.ok(e <= 1e-6, `NMSE ${e}`);
      } finally {
        cache.dispose();
      }
    });

    test("text only: cross layers are identity; logits and tokens", async () => {
      const ids = prompt([{ role: "user", content: "Say something about llamas." }]);
      const got = await gpuGreedy(model, ids, [], 8);
      assert.ok(nmse(got.logits, ref.logits(ids, null, [])) <= 1e-6);
      assert.deepEqual(got.tokens, ref.generate(ids, null, [], 8).tokens);
    });

    test("second turn: the cached prefix and cross K/V are reused; chunked prefill; abort between chunks", async () => {
      const one = [images[0]];
      const turn1 = prompt([{ role: "user", content: [{ type: "image" }, { type: "text", text: "Describe it." }] }]);
      const cache = model.createCache(200);
      try {
        const r1 = await model.prefill(turn1, one, cache, { read: "argmax" });
        assert.equal(r1.encoded, true);
        const answer = [r1.tokenId!];
        for (let i = 0; i < 3; i++) answer.push((await model.decode(answer[answer.length - 1], cache)).tokenId!);
        const turn2 = [
          ...turn1, ...answer.slice(0, 3),
          ...ref.promptIds("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnd the colours?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        ];
        const keep = turn1.length + 3;
        cache.truncate(keep);
        const refStates1 = refStates.subarray(0, T() * config.vision.tokensPerTile * config.text.hiddenSize);
        const want = ref.logits(turn2, refStates1, [tiles[0]]);
        // An abort after the first chunk's submit: aborted, and the cache is back at its length.
        setPrefillChunkTokens(4);
        const ac = new AbortController();
        const queue = gpu.device.queue;
        const submit = queue.submit;
        queue.submit = function (this: GPUQueue, b: Iterable<GPUCommandBuffer>) {
          ac.abort();
          return submit.call(this, b);
        };
        try {
          await assert.rejects(model.prefill(turn2, one, cache, { signal: ac.signal }), (e: unknown) => e instanceof WebvlmError && e.code === "aborted");
        } finally {
          queue.submit = submit;
        }
        assert.equal(cache.length, keep);
        const r2 = await model.prefill(turn2, one, cache, { read: "logits" });
        setPrefillChunkTokens();
        assert.equal(r2.reused, keep);
        assert.equal(r2.encoded, false);
        assert.ok(r2.chunks > 1, `${r2.chunks} chunks`);
        const e = nmse(r2.logits!, want);
        console.log(`# second turn: ${r2.reused} reused, ${r2.chunks} chunks, NMSE ${e.toExponential(2)}`);
        assert.ok(e <= 1e-6, `NMSE ${e}`);
        // A new image set: everything is recomputed.
        cache.truncate(keep);
        const r3 = await model.prefill(turn2, [{ ...images[1], hash: "other" }], cache, { read: "logits" });
        assert.equal(r3.reused, 0);
        assert.equal(r3.encoded, true);
        const states2 = refStates.subarray(T() * config.vision.tokensPerTile * config.text.hiddenSize);
        assert.ok(nmse(r3.logits!, ref.logits(turn2, states2, [tiles[1]])) <= 1e-6);
      } finally {
        setPrefillChunkTokens();
        cache.dispose();
      }
    });

    test("an image count that differs from the <|image|> tokens is a bad request", async () => {
      const cache = model.createCache(64);
      try {
        await assert.rejects(model.prefill(separated(), [images[0]], cache), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request");
      } finally {
        cache.dispose();
      }
    });
  });
}

for (const format of ["q8", "q4"] as const) {
  test(`${format}: decoder linears quantized in situ give the reference's logits and tokens on the same rounded weights`, async () => {
    const dir = join(root, "tiny-b");
    const config = parseMllamaConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
    const pp = parseMllamaPreprocess(await readJson(dir, "preprocessor_config.json"));
    const p = processMllamaImage(picture(20, 50, 3), pp);
    const images = [{ pixelValues: p.pixelValues, aspectRatioId: p.aspectRatioId, numTiles: p.numTiles, hash: "q" }];
    const ref = loadMllamaReference(dir, {
      transform: (name, data, shape) => (isDecoderLinear(name) ? roundTripValues(data, shape[0], shape[1], format) : data),
    });
    const r = refInputs(images, config.vision.maxNumTiles);
    const states = ref.crossStates(r.pv, r.ids, r.mask, 1);
    const ids = ref.promptIds(ref.renderPrompt([{ role: "user", content: [{ type: "text", text: "Hi." }, { type: "image" }, { type: "text", text: "What is it?" }] }], { dateString: DATE }));
    const model = await MllamaModel.load(gpu, config, await dirSource(dir), { ...F32, textLinear: format });
    try {
      const got = await gpuGreedy(model, ids, images, GREEDY_TOKENS);
      const e = nmse(got.logits, ref.logits(ids, states, r.tiles));
      console.log(`# ${format}: logits NMSE ${e.toExponential(2)}`);
      assert.ok(e <= 1e-6, `NMSE ${e}`);
      assert.deepEqual(got.tokens, ref.generate(ids, states, r.tiles, GREEDY_TOKENS).tokens);
    } finally {
      model.dispose();
    }
  });
}

test("engine: an image question through the chat API answers with the reference's tokens and logprobs", async (t) => {
  const image = join(process.cwd(), "test/fixtures/vision/resize_src_160x120.png");
  const question = "What is in this picture?";
  const dir = join(root, "tiny-a");
  const ref = loadMllamaReference(dir);
  const p = processMllamaImage(await loadImage(image), parseMllamaPreprocess(await readJson(dir, "preprocessor_config.json")));
  const r0 = refInputs([{ pixelValues: p.pixelValues, aspectRatioId: p.aspectRatioId, numTiles: p.numTiles, hash: "" }], p.aspectRatioMask.length);
  const ids = ref.promptIds(ref.renderPrompt([{ role: "user", content: [{ type: "image" }, { type: "text", text: question }] }]));
  const want = ref.generate(ids, ref.crossStates(r0.pv, r0.ids, r0.mask, 1), r0.tiles, 8);
  const models = await StaticServer.start({ root });
  const engine = await Engine.create({ gpu });
  try {
    const info = await engine.load(models.url("tiny-a"), { quantization: "f32", embedding: "f32", vision: "f32" });
    assert.equal(info.family, "mllama");
    const r = await engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text: question }] }],
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
    });
    const lps = (r.choices[0].logprobs?.content ?? []).map((l) => l.logprob);
    assert.equal(r.usage.prompt_tokens, ids.length);
    assert.equal(r.choices[0].message.content, ref.decode(want.tokens));
    assert.equal(lps.length, want.logprobs.length);
    lps.forEach((lp, i) => assert.ok(Math.abs(lp - want.logprobs[i]) <= 1e-4, `token ${i}: logprob ${lp}, reference ${want.logprobs[i]}`));
    t.diagnostic(`${r.usage.prompt_tokens} prompt tokens -> ${JSON.stringify(r.choices[0].message.content)} (${r.choices[0].finish_reason})`);
    // A second turn about the same image: the cached prefix (and the image set's cross K/V) is reused.
    const follow = "And what colours does it have?";
    const answer = r.choices[0].message.content;
    const r2 = await engine.chat.completions.create({
      messages: [
        { role: "user", content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text: question }] },
        { role: "assistant", content: answer },
        { role: "user", content: follow },
      ],
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
    });
    const ids2 = ref.promptIds(ref.renderPrompt([
      { role: "user", content: [{ type: "image" }, { type: "text", text: question }] },
      { role: "assistant", content: answer },
      { role: "user", content: follow },
    ]));
    const want2 = ref.generate(ids2, ref.crossStates(r0.pv, r0.ids, r0.mask, 1), r0.tiles, 8);
    assert.equal(r2.usage.prompt_tokens, ids2.length);
    assert.ok((r2.usage.prompt_tokens_details?.cached_tokens ?? 0) > 0, "the second turn reused the cache");
    assert.equal(r2.choices[0].message.content, ref.decode(want2.tokens));
    (r2.choices[0].logprobs?.content ?? []).forEach((l, i) => assert.ok(Math.abs(l.logprob - want2.logprobs[i]) <= 1e-4, `turn 2 token ${i}`));
    t.diagnostic(`turn 2: ${r2.usage.prompt_tokens_details?.cached_tokens} of ${r2.usage.prompt_tokens} prompt tokens cached`);
  } finally {
    await engine.unload();
    await models.close();
  }
});

test("bf16 checkpoint: cross states and logits equal the reference's", async (t) => {
  const dir = join(root, "tiny-a-bf16");
  await makeTinyMllama("tiny-a", dir, { dtype: "bf16" });
  const config = parseMllamaConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
  const p = processMllamaImage(picture(40, 20, 5), parseMllamaPreprocess(await readJson(dir, "preprocessor_config.json")));
  const images = [{ pixelValues: p.pixelValues, aspectRatioId: p.aspectRatioId, numTiles: p.numTiles, hash: "bf16" }];
  const ref = loadMllamaReference(dir);
  const r = refInputs(images, config.vision.maxNumTiles);
  const states = ref.crossStates(r.pv, r.ids, r.mask, 1);
  const ids = ref.promptIds(ref.renderPrompt([{ role: "user", content: [{ type: "image" }, { type: "text", text: "Which colours?" }] }], { dateString: DATE }));
  const model = await MllamaModel.load(gpu, config, await dirSource(dir), F32);
  const cache = model.createCache(ids.length + 1);
  try {
    const s = await model.crossStates(images);
    const eS = nmse(await readF32(gpu, s), states);
    gpu.pool.release(s.buffer);
    const eL = nmse((await model.prefill(ids, images, cache, { read: "logits" })).logits!, ref.logits(ids, states, r.tiles));
    t.diagnostic(`cross states NMSE ${eS.toExponential(2)}, logits NMSE ${eL.toExponential(2)}`);
    assert.ok(eS <= 1e-6 && eL <= 1e-6, `NMSE ${eS}, ${eL}`);
  } finally {
    cache.dispose();
    model.dispose();
  }
});

test("family: the registry resolves mllama; its prompt style; the adapter warms up and answers", async () => {
  const dir = join(root, "tiny-b");
  const json = await readJson(dir, "config.json");
  const family = resolveFamily(json);
  assert.equal(family.name, "mllama");
  const opened = family.open(json, await readJson(dir, "generation_config.json"));
  assert.equal(opened.prompt.addSpecialTokens, false);
  assert.deepEqual(opened.eosTokenIds, [128001, 128008, 128009]);
  const model = await opened.load(gpu, await dirSource(dir), F32);
  try {
    const steps: number[] = [];
    await model.warmUp((done) => steps.push(done));
    assert.deepEqual(steps, [0, 1, 2]);
    // A text-only turn through the adapter, with the media the engine would pass (none).
    const ref = loadMllamaReference(dir);
    const ids = ref.promptIds(ref.renderPrompt([{ role: "user", content: "Hello there." }], { dateString: DATE }));
    const cache = model.createCache(ids.length + 2);
    try {
      const r = await model.prefill(ids, [], cache, { read: "logits" });
      assert.ok(nmse(r.logits!, ref.logits(ids, null, [])) <= 1e-6);
      await assert.rejects(model.prefill(ids, [{ kind: "image", hash: "x", tokens: 0, payload: {} }], cache), (e: unknown) => e instanceof WebvlmError && e.code === "internal");
    } finally {
      cache.dispose();
    }
  } finally {
    model.dispose();
  }
});

test("GPU preprocessing: the family's processor on the GPU gives the CPU-preprocessed run's logits and greedy tokens exactly", async (t) => {
  const dir = join(root, "tiny-b");
  const json = await readJson(dir, "config.json");
  const opened = resolveFamily(json).open(json, await readJson(dir, "generation_config.json"));
  const preprocessorConfig = await readJson(dir, "preprocessor_config.json");
  const ctx = { preprocessorConfig, processorConfig: {}, addedTokenId: (c: string) => (c === "<|image|>" ? 128256 : undefined) };
  const onGpu = opened.createProcessor({ ...ctx, gpu: () => gpu });
  const onCpu = opened.createProcessor(ctx);
  // 2 tiles and 1 tile (of max 2): an unused tile's rows are zeros on both paths.
  const refs: MediaRef[] = [[20, 50], [25, 25]].map(([w, h], i) => {
    const p = picture(w, h, i);
    return { kind: "image", source: encodePng({ width: w, height: h, data: p.rgb, channels: 3, depth: 8 }), options: {} };
  });
  const ref = loadMllamaReference(dir);
  const ids = ref.promptIds(ref.renderPrompt([{ role: "user", content: [{ type: "text", text: "Look." }, { type: "image" }, { type: "image" }, { type: "text", text: "Compare them." }] }], { dateString: DATE }));
  const model = await opened.load(gpu, await dirSource(dir), F32);
  let gpuMedia: PreparedMedia[] = [];
  const run = async (media: PreparedMedia[], count: number): Promise<{ tokens: number[]; logits: Float32Array }> => {
    const cache = model.createCache(ids.length + count + 1);
    try {
      const pre = await model.prefill(ids, media, cache, { read: "both" });
      const tokens = [pre.tokenId!];
      while (tokens.length < count) tokens.push((await model.decode(tokens[tokens.length - 1], cache, { read: "argmax" })).tokenId!);
      return { tokens, logits: pre.logits! };
    } finally {
      cache.dispose();
    }
  };
  try {
    gpuMedia = await onGpu.prepare(refs);
    const cpuMedia = await onCpu.prepare(refs);
    assert.deepEqual(gpuMedia.map((m) => m.device), ["gpu", "gpu"]);
    assert.ok(gpuMedia.every((m) => isTensor((m.payload as { pixelValues: unknown }).pixelValues)), "patch rows stay on the GPU");
    const t0 = performance.now();
    const got = await run(gpuMedia, 2);
    const t1 = performance.now();
    const want = await run(cpuMedia, 2);
    const a = new Uint32Array(got.logits.buffer);
    const b = new Uint32Array(want.logits.buffer);
    assert.equal(a.findIndex((v, i) => v !== b[i]), -1, "logits bit-identical");
    assert.deepEqual(got.tokens, want.tokens);
    // The model read the GPU patch rows in place and left them alone (the engine releases them):
    // they still hold the CPU path's values, cut into rows.
    const v = parseMllamaConfig(json).vision;
    for (const [i, m] of gpuMedia.entries()) {
      const rows = await readF32(gpu, (m.payload as { pixelValues: Tensor }).pixelValues);
      const host = mllamaPatchRows(v, (cpuMedia[i].payload as { pixelValues: Float32Array }).pixelValues);
      assert.equal(new Uint32Array(rows.buffer).findIndex((x, j) => x !== new Uint32Array(host.buffer)[j]), -1, `image ${i + 1}: patch rows intact`);
    }
    t.diagnostic(`GPU-preprocessed tokens ${got.tokens.join(",")}; runs ${(t1 - t0).toFixed(0)} ms / ${(performance.now() - t1).toFixed(0)} ms`);
  } finally {
    for (const m of gpuMedia) m.release?.();
    onGpu.dispose?.();
    model.dispose();
  }
});
