// The Idefics2 model on the GPU (src/models/idefics2) against the independent f32 CPU reference
// (test/reference/idefics2_reference.ts), on the tiny checkpoints of scripts/make_tiny_idefics2.ts
// written at test time. Two procedural images per prompt (tiny-a splits each into 4 crops + the
// full image, so crops of several sizes; tiny-b does not split and its sliding window of 48 is
// crossed), processed by the family's image processor; the reference gets the padded
// pixel_values / pixel_attention_mask built here from the same processed (sub-)images. Checks:
// image features, last-position logits, 32 greedy tokens (bad_words_ids masked as generate does),
// a prefill in small chunks with an image straddling chunk boundaries, KV prefix reuse (a cut
// inside an image, and a second turn), q8/q4 loads against the reference on the same rounded
// weights, the tensor table against the generator's, and the family's contract.
//
// WEBVLM_GREEDY_TOKENS / WEBVLM_QUANT_TOKENS override the token counts (32 each).
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
import type { PreparedMedia, ProcessorContext } from "../../src/models/family.ts";
import { parseIdefics2Config, type Idefics2Config } from "../../src/models/idefics2/config.ts";
import { createIdefics2Processor } from "../../src/models/idefics2/family.ts";
import { parseIdefics2Preprocess, processIdefics2Image } from "../../src/models/idefics2/image_processor.ts";
import { Idefics2Model, type Idefics2Cache, type Idefics2ImageItem } from "../../src/models/idefics2/model.ts";
import { idefics2Names, idefics2TensorTable } from "../../src/models/idefics2/names.ts";
import { idefics2CropPatches } from "../../src/models/idefics2/patches.ts";
import { resolveFamily } from "../../src/models/registry.ts";
import { roundTripValues } from "../../src/quant/pack.ts";
import type { Chw32 } from "../../src/vision/canvas.ts";
import { makeTinyIdefics2, tinyIdefics2Tensors, type TinyIdefics2Shape } from "../../scripts/make_tiny_idefics2.ts";
import { loadIdefics2Reference, type Idefics2Reference } from "../reference/idefics2_reference.ts";
import { nmse } from "../util/compare.ts";
import { StaticServer } from "../util/static_server.ts";
import { Engine } from "../../src/engine/engine.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import { encode as encodePng } from "fast-png";

const GREEDY_TOKENS = Number(process.env.WEBVLM_GREEDY_TOKENS ?? 32);
const QUANT_TOKENS = Number(process.env.WEBVLM_QUANT_TOKENS ?? 32);
const F32: WeightLoadOptions = { textLinear: "f32", vision: "f32", embedding: "f32" };
const PROMPT =
  "User:<image>Compare this picture<image>with this one. What differs? Describe the colours, shapes and textures of both.<end_of_utterance>\nAssistant:";

let root = "";
let gpu: GpuContext;
const checkpoints: SafetensorsCheckpoint[] = [];

/** A gradient with a diagonal pattern. */
function gradient(w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      out[i] = Math.round((255 * x) / (w - 1));
      out[i + 1] = Math.round((255 * y) / (h - 1));
      out[i + 2] = (x * 7 + y * 13) & 255;
    }
  }
  return out;
}

/** Seeded noise. */
function noise(w: number, h: number, seed: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s >>> 24;
  }
  return out;
}

const readJson = async (dir: string, f: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(join(dir, f), "utf8"));

async function dirSource(dir: string): Promise<TensorSource> {
  const ckpt = await openCheckpointDir(dir);
  checkpoints.push(ckpt);
  return checkpointTensorSource(ckpt);
}

/** Zero-pads the processed (sub-)images to the largest height and width: transformers' pixel batch. */
function padBatch(images: readonly Chw32[]): { pv: Float32Array; mask: Uint8Array; n: number; h: number; w: number } {
  const h = Math.max(...images.map((i) => i.height));
  const w = Math.max(...images.map((i) => i.width));
  const pv = new Float32Array(images.length * 3 * h * w);
  const mask = new Uint8Array(images.length * h * w);
  images.forEach((img, n) => {
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < img.height; y++) {
        pv.set(img.data.subarray((c * img.height + y) * img.width, (c * img.height + y + 1) * img.width), ((n * 3 + c) * h + y) * w);
      }
    }
    for (let y = 0; y < img.height; y++) mask.fill(1, (n * h + y) * w, (n * h + y) * w + img.width);
  });
  return { pv, mask, n: images.length, h, w };
}

/** §9's choice: argmax with bad_words_ids excluded (first maximum). */
function pick(logits: Float32Array, bad: readonly number[]): number {
  let best = -1;
  for (let i = 0; i < logits.length; i++) if (!bad.includes(i) && (best < 0 || logits[i] > logits[best])) best = i;
  return best;
}

interface GreedyRun {
  tokens: number[];
  logits: Float32Array;
  cache: Idefics2Cache;
}

/** Prefill, then decode steps choosing as generate does; stops after an eos id. */
async function gpuGreedy(model: Idefics2Model, ids: number[], images: Idefics2ImageItem[], count: number, eos: readonly number[], bad: readonly number[]): Promise<GreedyRun> {
  const cache = model.createCache(ids.length + count + 1);
  const pre = await model.prefill(ids, images, cache, { read: "logits" });
  const tokens = [pick(pre.logits!, bad)];
  while (tokens.length < count && !eos.includes(tokens[tokens.length - 1])) {
    const step = await model.decode(tokens[tokens.length - 1], cache, { read: "logits" });
    tokens.push(pick(step.logits!, bad));
  }
  return { tokens, logits: pre.logits!, cache };
}

/** Runs fn with queue.submit counted; `onSubmit(n)` sees each submit's number before it goes out. */
async function withSubmits<T>(fn: () => Promise<T>, onSubmit: (n: number) => void = () => {}): Promise<{ value: T; submits: number }> {
  const queue = gpu.device.queue as GPUQueue & { submit: GPUQueue["submit"] };
  const submit = queue.submit;
  let submits = 0;
  queue.submit = function (this: GPUQueue, buffers: Iterable<GPUCommandBuffer>) {
    onSubmit(++submits);
    return submit.call(this, buffers);
  };
  try {
    return { value: await fn(), submits };
  } finally {
    queue.submit = submit;
  }
}

function assertWebvlmError(code: string, includes: string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected a WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.includes(includes), `message "${e.message}" should name "${includes}"`);
    return true;
  };
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-idefics2-"));
  for (const s of ["tiny-a", "tiny-b"] as const) await makeTinyIdefics2(s, join(root, s));
  gpu = await acquireNodeGpu();
});

after(async () => {
  setPrefillChunkTokens();
  for (const c of checkpoints) await c.close();
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

for (const shape of ["tiny-a", "tiny-b"] as const satisfies readonly TinyIdefics2Shape[]) {
  describe(shape, () => {
    let dir = "";
    let config: Idefics2Config;
    let ref: Idefics2Reference;
    let model: Idefics2Model;
    let images: Idefics2ImageItem[];
    let subImages: Chw32[];
    let ids: number[];
    let refFeatures: Float32Array;
    let refGen: { tokens: number[] };
    let refLogits: Float32Array;
    let greedyCache: Idefics2Cache | undefined;
    let greedyTokens: number[] = [];

    before(async () => {
      dir = join(root, shape);
      config = parseIdefics2Config(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
      const preprocess = parseIdefics2Preprocess(await readJson(dir, "preprocessor_config.json"), await readJson(dir, "processor_config.json"));
      const v = config.vision;
      // 50x37 stays (tiny-a's crops are stretched to the 28 px floor); 70x40 is shrunk to 64 px wide.
      const perImage = [
        processIdefics2Image({ rgb: gradient(50, 37), width: 50, height: 37 }, preprocess),
        processIdefics2Image({ rgb: noise(70, 40, 7), width: 70, height: 40 }, preprocess),
      ];
      subImages = perImage.flat();
      images = perImage.map((subs) => ({ crops: subs.map((s) => idefics2CropPatches(s, v.patchSize, v.imageSize)) }));
      ref = loadIdefics2Reference(dir);
      ids = ref.promptIds(PROMPT);
      const b = padBatch(subImages);
      refFeatures = ref.imageFeatures(b.pv, b.mask, b.n, b.h, b.w);
      refLogits = ref.logits(ids, refFeatures);
      refGen = ref.generate(ids, refFeatures, Math.max(GREEDY_TOKENS, QUANT_TOKENS));
      model = await Idefics2Model.load(gpu, config, await dirSource(dir), F32);
    });
    after(() => {
      greedyCache?.dispose();
      model?.dispose();
    });

    test("image features of two images (crops of several sizes) match the reference (f32, NMSE <= 1e-6)", async (t) => {
      const sizes = new Set(images.flatMap((it) => it.crops.map((c) => `${c.patchesH}x${c.patchesW}`)));
      assert.ok(sizes.size >= 2, `crops of one size only: ${[...sizes]}`);
      const feats = await model.encodeImages(images);
      const got = await readF32(gpu, feats);
      gpu.pool.release(feats.buffer);
      const L = config.perceiver.numLatents;
      assert.deepEqual(feats.shape, [subImages.length * L, config.text.hiddenSize]);
      const e = nmse(got, refFeatures);
      assert.ok(e <= 1e-6, `image features NMSE ${e}`);
      t.diagnostic(`${subImages.length} crops (${[...sizes].join(", ")} patches) -> [${feats.shape}] NMSE=${e.toExponential(2)}`);
    });

    test("crops encoded in groups under a small binding budget, the projection in row passes: same features", async (t) => {
      const rowsPerCrop = images.flatMap((it) => it.crops.map((c) => c.patchesH * c.patchesW));
      const saved = model.visionBindingBytes;
      // Room for the largest crop alone: several groups, and projection passes of fewer rows than a crop.
      const c = config;
      const width = Math.max(3 * c.vision.hiddenSize, c.vision.intermediateSize, c.text.hiddenSize, 2 * c.perceiver.numKvHeads * c.perceiver.headDim, c.perceiver.numHeads * c.perceiver.headDim);
      model.visionBindingBytes = (Math.max(...rowsPerCrop) + c.perceiver.numLatents) * width * 4;
      const passRows = Math.floor(model.visionBindingBytes / (8 * c.text.intermediateSize));
      try {
        assert.ok(passRows < Math.max(...rowsPerCrop), `projection passes of ${passRows} rows`);
        const { value: feats, submits } = await withSubmits(() => model.encodeImages(images));
        const got = await readF32(gpu, feats);
        gpu.pool.release(feats.buffer);
        const e = nmse(got, refFeatures);
        assert.ok(e <= 1e-6, `grouped image features NMSE ${e}`);
        assert.ok(submits > 1, "one submit per group of crops");
        // An abort between groups stops the encode.
        const ac = new AbortController();
        await assert.rejects(withSubmits(() => model.encodeImages(images, ac.signal), () => ac.abort()), assertWebvlmError("aborted", "aborted"));
        model.visionBindingBytes = 1024;
        await assert.rejects(model.encodeImages(images), assertWebvlmError("limit_exceeded", "crop"));
        t.diagnostic(`budget ${(saved / 1e6).toFixed(0)} MB -> ${(((Math.max(...rowsPerCrop) + c.perceiver.numLatents) * width * 4) / 1e3).toFixed(1)} kB: NMSE=${e.toExponential(2)}, projection passes of ${passRows} rows`);
      } finally {
        model.visionBindingBytes = saved;
      }
    });

    test("f32 prompt logits (NMSE <= 1e-6) and 32 greedy tokens equal the reference", async (t) => {
      const run = await gpuGreedy(model, ids, images, GREEDY_TOKENS, config.eosTokenIds, [32000, 32001]);
      greedyCache = run.cache;
      greedyTokens = run.tokens;
      const e = nmse(run.logits, refLogits);
      assert.ok(e <= 1e-6, `last-position logits NMSE ${e}`);
      const want = refGen.tokens.slice(0, GREEDY_TOKENS);
      assert.deepEqual(run.tokens, want);
      const eosAt = want.findIndex((x) => config.eosTokenIds.includes(x));
      t.diagnostic(`T=${ids.length}: logits NMSE=${e.toExponential(2)}; ${run.tokens.length} tokens identical${eosAt >= 0 ? ` (eos at ${eosAt})` : ""}, ${new Set(run.tokens).size} distinct`);
    });

    test("a prefill in chunks of 7 tokens (images straddling chunk boundaries) gives the reference logits", async (t) => {
      const first = ids.indexOf(config.imageTokenId);
      const last = ids.lastIndexOf(config.imageTokenId);
      assert.ok(Math.floor(first / 7) !== Math.floor(last / 7), "the images must straddle a boundary");
      setPrefillChunkTokens(7);
      try {
        const cache = model.createCache(ids.length);
        const pre = await model.prefill(ids, images, cache, { read: "logits" });
        cache.dispose();
        assert.equal(pre.chunks, Math.ceil(ids.length / 7));
        const e = nmse(pre.logits!, refLogits);
        assert.ok(e <= 1e-6, `chunked prefill logits NMSE ${e}`);
        assert.equal(pick(pre.logits!, [32000, 32001]), refGen.tokens[0]);
        t.diagnostic(`${pre.chunks} chunks: logits NMSE=${e.toExponential(2)}`);
      } finally {
        setPrefillChunkTokens();
      }
    });

    test("KV prefix reuse: a cut inside the second image, and a second turn, give the reference logits", async (t) => {
      const cache = greedyCache!;
      assert.ok(cache.length > ids.length);
      // Inside image 2: its first rows come from the cache, the rest from a fresh encode of image 2 only.
      const cut = ids.lastIndexOf(config.imageTokenId) - 3;
      cache.truncate(cut);
      const r1 = await model.prefill(ids, images, cache, { read: "logits" });
      assert.equal(r1.reused, cut);
      const e1 = nmse(r1.logits!, refLogits);
      assert.ok(e1 <= 1e-6, `cut-inside-image re-prefill NMSE ${e1}`);
      // A second turn: the first turn's prompt and answer are the cached prefix (images not encoded).
      const answer = greedyTokens.slice(0, 4);
      for (const id of answer.slice(0, -1)) await model.decode(id, cache);
      const more = ref.promptIds("<end_of_utterance>\nUser: And the edges?<end_of_utterance>\nAssistant:").slice(1); // no second BOS
      const ids2 = [...ids, ...answer, ...more];
      const r2 = await model.prefill(ids2, images, cache, { read: "logits" });
      assert.equal(r2.reused, ids.length + answer.length - 1);
      const want = ref.logits(ids2, refFeatures);
      const e2 = nmse(r2.logits!, want);
      assert.ok(e2 <= 1e-6, `second-turn logits NMSE ${e2}`);
      t.diagnostic(`NMSE vs reference: cut inside image ${e1.toExponential(2)}; second turn (${r2.reused} reused of ${ids2.length}) ${e2.toExponential(2)}`);
    });

    if (shape === "tiny-b") {
      for (const fmt of ["q8", "q4"] as const) {
        test(`${fmt} load: logits and greedy tokens equal a reference on the ${fmt}-rounded weights`, async (t) => {
          const q = await Idefics2Model.load(gpu, config, await dirSource(dir), { textLinear: fmt, vision: fmt, embedding: fmt });
          try {
            const run = await gpuGreedy(q, ids, images, QUANT_TOKENS, config.eosTokenIds, [32000, 32001]);
            run.cache.dispose();
            // Every matrix the load quantizes, rounded as the loader does (row-wise along K); the
            // latents, norms and biases stay f32.
            const refQ = loadIdefics2Reference(dir, {
              transform: (name, data, shape) => (shape.length < 2 || name === idefics2Names.latents ? data : roundTripValues(data, shape[0], data.length / shape[0], fmt)),
            });
            const b = padBatch(subImages);
            const featsQ = refQ.imageFeatures(b.pv, b.mask, b.n, b.h, b.w);
            const gotFeats = await q.encodeImages(images);
            const eF = nmse(await readF32(gpu, gotFeats), featsQ);
            gpu.pool.release(gotFeats.buffer);
            const genQ = refQ.generate(ids, featsQ, QUANT_TOKENS);
            const eL = nmse(run.logits, refQ.logits(ids, featsQ));
            assert.ok(eF <= 1e-6, `${fmt} image features vs the rounded reference: NMSE ${eF}`);
            assert.ok(eL <= 1e-6, `${fmt} logits vs the rounded reference: NMSE ${eL}`);
            assert.deepEqual(run.tokens, genQ.tokens);
            const eF32 = nmse(run.logits, refLogits);
            t.diagnostic(`${fmt}: features NMSE=${eF.toExponential(2)}, logits NMSE=${eL.toExponential(2)} vs rounded reference, ${run.tokens.length} tokens identical; vs f32 logits NMSE=${eF32.toExponential(2)}; GPU weights ${(q.weights.gpuBytes / 1e6).toFixed(2)} MB`);
          } finally {
            q.dispose();
          }
        });
      }
    }

    test("the tensor table equals the checkpoint's and the generator's lists", async () => {
      const ckpt = await openCheckpointDir(dir);
      checkpoints.push(ckpt);
      const table = idefics2TensorTable(config);
      const sorted = (xs: { name: string; shape: readonly number[] }[]): string[] => xs.map((s) => `${s.name} [${s.shape.join(",")}]`).sort();
      assert.deepEqual(sorted(table), sorted(ckpt.names().map((name) => ({ name, shape: ckpt.info(name).shape }))));
      assert.deepEqual(sorted(table), sorted(tinyIdefics2Tensors(shape)));
    });
  });
}

test("prefill errors: mismatched <image> count, aborts before and between chunks (cache restored), missing and misshapen tensors", async () => {
  const dir = join(root, "tiny-b");
  const config = parseIdefics2Config(await readJson(dir, "config.json"));
  const model = await Idefics2Model.load(gpu, config, await dirSource(dir), F32);
  try {
    const v = config.vision;
    const crop = { patchesH: 2, patchesW: 3, patchRows: new Float32Array(6 * 3 * v.patchSize ** 2).fill(0.25), positionIds: Int32Array.from([0, 2, 4, 12, 14, 16]) };
    const L = config.perceiver.numLatents;
    const ids = [1, 32000, ...new Array<number>(L).fill(config.imageTokenId), 32000, 330];
    const cache = model.createCache(ids.length + 2);
    await assert.rejects(model.prefill(ids.slice(0, -3), [{ crops: [crop] }], cache), assertWebvlmError("bad_request", "<image> tokens"));
    await assert.rejects(model.prefill(ids, [], cache), assertWebvlmError("bad_request", "<image> tokens"));
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(model.prefill(ids, [{ crops: [crop] }], cache, { signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
    assert.equal(cache.length, 0);
    const bad = { ...crop, positionIds: Int32Array.from([0, 1, 2, 3, 4, v.positionsPerSide ** 2]) };
    await assert.rejects(model.prefill(ids, [{ crops: [bad] }], cache), assertWebvlmError("bad_request", "position id"));
    // An abort while the chunks run: the chunk in flight finishes, the next is not started, the cache is restored.
    const full = await model.prefill(ids, [{ crops: [crop] }], cache, { read: "logits" });
    assert.equal(cache.length, ids.length);
    cache.truncate(3);
    setPrefillChunkTokens(4);
    const late = new AbortController();
    let submits = 0;
    try {
      const run = withSubmits(() => model.prefill(ids, [{ crops: [crop] }], cache, { signal: late.signal }), (n) => {
        submits = n;
        if (n === 2) late.abort(); // the vision submit, then the first chunk
      });
      await assert.rejects(run, assertWebvlmError("aborted", "aborted"));
    } finally {
      setPrefillChunkTokens();
    }
    assert.equal(submits, 2);
    assert.equal(cache.length, 3);
    const again = await model.prefill(ids, [{ crops: [crop] }], cache, { read: "logits" });
    assert.equal(again.reused, 3);
    assert.ok(nmse(again.logits!, full.logits!) <= 1e-10);
    cache.dispose();
  } finally {
    model.dispose();
  }
  const base = await dirSource(dir);
  const gone = "model.connector.perceiver_resampler.layers.0.self_attn.k_proj.weight";
  const missing: TensorSource = { ...base, has: (n) => n !== gone && base.has(n) };
  await assert.rejects(Idefics2Model.load(gpu, config, missing), assertWebvlmError("missing_tensor", gone));
  const wrong = "model.vision_model.encoder.layers.1.self_attn.v_proj.bias";
  const misshapen: TensorSource = { ...base, shape: (n) => (n === wrong ? [7] : base.shape(n)) };
  await assert.rejects(Idefics2Model.load(gpu, config, misshapen), assertWebvlmError("shape_mismatch", wrong));
});

test("family: registry, config parsing rules, processor wiring, adapter prefill/decode and warm-up", async () => {
  const dir = join(root, "tiny-a");
  const cfgJson = await readJson(dir, "config.json");
  const fam = resolveFamily(cfgJson);
  assert.equal(fam.name, "idefics2");
  assert.equal(resolveFamily({ model_type: "idefics2" }).name, "idefics2");
  const opened = fam.open(cfgJson, await readJson(dir, "generation_config.json"));
  assert.equal(opened.maxPositions, 32768);
  assert.deepEqual(opened.eosTokenIds, [2, 32002]);
  assert.deepEqual({ ...opened.prompt, build: undefined }, { stringContentAsParts: true, addSpecialTokens: true, build: undefined });

  // §2: the perceiver keeps its own eps when its hidden size equals the text's, else takes the text's size and eps.
  const a = parseIdefics2Config(cfgJson);
  assert.equal(a.perceiver.rmsNormEps, 1e-3);
  assert.deepEqual(a.text.slidingWindow, [4096, 4096]); // MistralConfig default when the key is absent
  const b = parseIdefics2Config(await readJson(join(root, "tiny-b"), "config.json"));
  assert.deepEqual([b.perceiver.hiddenSize, b.perceiver.rmsNormEps, b.text.tieWordEmbeddings], [48, 1e-6, true]);
  assert.deepEqual(b.text.slidingWindow, [48, 48]);
  // The official config's sparse text_config takes MistralConfig's sizes; either tie flag ties.
  const official = parseIdefics2Config({
    architectures: ["Idefics2ForConditionalGeneration"], model_type: "idefics2", tie_word_embeddings: true,
    vision_config: { hidden_size: 1152, image_size: 980, intermediate_size: 4304, num_attention_heads: 16, num_hidden_layers: 27, patch_size: 14 },
    perceiver_config: { model_type: "idefics2" },
    text_config: { max_position_embeddings: 32768, model_type: "mistral", pad_token_id: 0, rms_norm_eps: 1e-5, vocab_size: 32003 },
  });
  assert.deepEqual(
    [official.text.hiddenSize, official.text.numLayers, official.text.numKvHeads, official.text.headDim, official.text.intermediateSize, official.text.slidingWindow[0], official.text.tieWordEmbeddings],
    [4096, 32, 8, 128, 14336, 4096, true],
  );
  assert.deepEqual([official.perceiver.rmsNormEps, official.perceiver.headDim, official.vision.positionsPerSide, official.imageTokenId], [1e-6, 96, 70, 32001]);
  assert.throws(() => parseIdefics2Config({ ...cfgJson, vision_config: { num_attention_heads: 5 } }), assertWebvlmError("bad_request", "vision_config.hidden_size"));
  assert.throws(() => parseIdefics2Config({ ...cfgJson, image_token_id: -1 }), assertWebvlmError("bad_request", "image_token_id"));
  assert.throws(() => parseIdefics2Config({ ...cfgJson, architectures: ["Qwen2VLForConditionalGeneration"] }), assertWebvlmError("unsupported_architecture", "idefics2"));

  // The processor: the fake token from the tokenizer, image_seq_len == resampler_n_latents.
  const ctx = (over: Partial<ProcessorContext> = {}): ProcessorContext => ({
    preprocessorConfig: {},
    processorConfig: { image_seq_len: a.perceiver.numLatents },
    addedTokenId: (c) => (c === "<fake_token_around_image>" ? 32000 : undefined),
    ...over,
  });
  const proc = createIdefics2Processor(a, ctx());
  assert.deepEqual([proc.options.fakeTokenId, proc.options.imageTokenId, proc.options.patchSize, proc.options.imageSize], [32000, 32001, 7, 56]);
  assert.throws(() => createIdefics2Processor(a, ctx({ addedTokenId: () => undefined })), assertWebvlmError("bad_request", "<fake_token_around_image>"));
  assert.throws(() => createIdefics2Processor(a, ctx({ processorConfig: { image_seq_len: 64 } })), assertWebvlmError("bad_request", "image_seq_len"));

  // The adapter behind the contract: prepared media in, the reference's logits out; warm-up compiles.
  const vlm = await opened.load(gpu, await dirSource(dir), F32);
  try {
    const v = a.vision;
    const subs = processIdefics2Image({ rgb: noise(30, 33, 3), width: 30, height: 33 }, parseIdefics2Preprocess(await readJson(dir, "preprocessor_config.json")));
    const payload = { crops: subs.map((sub) => idefics2CropPatches(sub, v.patchSize, v.imageSize)) };
    const media: PreparedMedia[] = [{ kind: "image", hash: "x", tokens: subs.length * a.perceiver.numLatents, payload }];
    const ref = loadIdefics2Reference(dir);
    const ids = ref.promptIds("User:<image>Hi<end_of_utterance>\nAssistant:");
    const padded = padBatch(subs);
    const want = ref.logits(ids, ref.imageFeatures(padded.pv, padded.mask, padded.n, padded.h, padded.w));
    const cache = vlm.createCache(ids.length + 1);
    try {
      const pre = await vlm.prefill(ids, media, cache, { read: "both" });
      assert.equal(pre.reused, 0);
      const e = nmse(pre.logits!, want);
      assert.ok(e <= 1e-6, `adapter logits NMSE ${e}`);
      const step = await vlm.decode(pre.tokenId!, cache, { read: "argmax" });
      assert.equal(typeof step.tokenId, "number");
      assert.equal(cache.length, ids.length + 1);
    } finally {
      cache.dispose();
    }
    await vlm.warmUp();
    const other = vlm.createCache(4);
    try {
      await assert.rejects(vlm.prefill(ids, [{ kind: "image", hash: "y", tokens: 1, payload: {} }], other), assertWebvlmError("internal", "idefics2"));
    } finally {
      other.dispose();
    }
  } finally {
    vlm.dispose();
  }
  assert.deepEqual(gpu.uncapturedErrors, []);
});

test("a bf16 checkpoint loads (upcast to f32) and gives the reference's image features and logits", async (t) => {
  const dir = join(root, "tiny-a-bf16");
  await makeTinyIdefics2("tiny-a", dir, { dtype: "bf16" });
  const config = parseIdefics2Config(await readJson(dir, "config.json"));
  const ref = loadIdefics2Reference(dir);
  const subs = processIdefics2Image({ rgb: gradient(40, 45), width: 40, height: 45 }, parseIdefics2Preprocess(await readJson(dir, "preprocessor_config.json")));
  const b = padBatch(subs);
  const want = ref.imageFeatures(b.pv, b.mask, b.n, b.h, b.w);
  const ids = ref.promptIds("User:<image>Describe it.<end_of_utterance>\nAssistant:");
  const model = await Idefics2Model.load(gpu, config, await dirSource(dir), F32);
  try {
    const items = [{ crops: subs.map((s) => idefics2CropPatches(s, config.vision.patchSize, config.vision.imageSize)) }];
    const feats = await model.encodeImages(items);
    const eF = nmse(await readF32(gpu, feats), want);
    gpu.pool.release(feats.buffer);
    const cache = model.createCache(ids.length);
    const pre = await model.prefill(ids, items, cache, { read: "logits" });
    cache.dispose();
    const eL = nmse(pre.logits!, ref.logits(ids, want));
    assert.ok(eF <= 1e-6 && eL <= 1e-6, `bf16 checkpoint: features NMSE ${eF}, logits NMSE ${eL}`);
    t.diagnostic(`features NMSE=${eF.toExponential(2)}, logits NMSE=${eL.toExponential(2)}`);
  } finally {
    model.dispose();
  }
});

test("GPU preprocessing: the processor's GPU payloads (one tensor per image, and mixed with a CPU item) give the CPU-prepared run's logits and greedy tokens exactly", async (t) => {
  const dir = join(root, "tiny-a"); // splits: 4 crops + the full image, crops of several sizes
  const config = parseIdefics2Config(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
  const preprocessorConfig = await readJson(dir, "preprocessor_config.json");
  const processorConfig = await readJson(dir, "processor_config.json");
  const ctx = (withGpu: boolean): ProcessorContext => ({
    preprocessorConfig,
    processorConfig,
    addedTokenId: (c) => (c === "<fake_token_around_image>" ? 32000 : undefined),
    ...(withGpu ? { gpu: () => gpu } : {}),
  });
  const png = (rgb: Uint8Array, w: number, h: number): Uint8Array => encodePng({ width: w, height: h, data: rgb, channels: 3, depth: 8 });
  const refs = [png(gradient(50, 37), 50, 37), png(noise(70, 40, 7), 70, 40)].map((source) => ({ kind: "image" as const, source, options: {} }));
  const onGpuProc = createIdefics2Processor(config, ctx(true));
  const onGpu = await onGpuProc.prepare(refs);
  const onCpu = await createIdefics2Processor(config, ctx(false)).prepare(refs);
  assert.deepEqual(onGpu.map((m) => m.device), ["gpu", "gpu"]);
  assert.deepEqual(onGpu.map((m) => m.tokens), onCpu.map((m) => m.tokens));
  const vlm = await resolveFamily(await readJson(dir, "config.json")).open(await readJson(dir, "config.json")).load(gpu, await dirSource(dir), F32);
  const ids = loadIdefics2Reference(dir).promptIds("User:<image>And<image>?<end_of_utterance>\nAssistant:");
  const run = async (media: PreparedMedia[]): Promise<{ logits: Float32Array; tokens: number[] }> => {
    const cache = vlm.createCache(ids.length + 2);
    try {
      const pre = await vlm.prefill(ids, media, cache, { read: "both" });
      const tokens = [pre.tokenId!];
      tokens.push((await vlm.decode(tokens[0], cache, { read: "argmax" })).tokenId!);
      return { logits: pre.logits!, tokens };
    } finally {
      cache.dispose();
    }
  };
  try {
    const want = await run(onCpu);
    const t0 = Date.now();
    for (const [what, media] of [["GPU", onGpu], ["mixed", [onCpu[0], onGpu[1]]]] as const) {
      const got = await run([...media]);
      assert.deepEqual(got.tokens, want.tokens, `${what}: greedy tokens`);
      let diff = 0;
      for (let i = 0; i < want.logits.length; i++) if (!Object.is(got.logits[i], want.logits[i])) diff++;
      assert.equal(diff, 0, `${what}: ${diff} logits differ from the CPU-prepared run`);
    }
    t.diagnostic(`${onGpu.length} images, ${ids.length} prompt tokens: logits identical, tokens ${want.tokens}; ${Date.now() - t0} ms for the GPU and mixed runs`);
  } finally {
    for (const m of onGpu) m.release?.();
    onGpuProc.dispose?.();
    vlm.dispose();
  }
  assert.deepEqual(gpu.uncapturedErrors, []);
});

test("engine: an image question through the chat API answers with the reference's tokens and logprobs", async (t) => {
  const image = join(process.cwd(), "test/fixtures/vision/resize_src_160x120.png");
  const question = "What is in this picture?";
  const dir = join(root, "tiny-a");
  const ref = loadIdefics2Reference(dir);
  const decoded = await loadImage(image);
  const subs = processIdefics2Image(decoded, parseIdefics2Preprocess(await readJson(dir, "preprocessor_config.json")));
  const b = padBatch(subs);
  // §4.2's rendering of one user message that starts with an image.
  const want = ref.generate(ref.promptIds(`User:<image>${question}<end_of_utterance>\nAssistant:`), ref.imageFeatures(b.pv, b.mask, b.n, b.h, b.w), 8);
  const models = await StaticServer.start({ root });
  const engine = await Engine.create({ gpu });
  try {
    const info = await engine.load(models.url("tiny-a"), { quantization: "f32", embedding: "f32", vision: "f32" });
    assert.equal(info.family, "idefics2");
    const r = await engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text: question }] }],
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
    });
    const lps = (r.choices[0].logprobs?.content ?? []).map((l) => l.logprob);
    assert.equal(r.choices[0].message.content, ref.decode(want.tokens));
    assert.equal(lps.length, want.logprobs.length);
    lps.forEach((lp, i) => assert.ok(Math.abs(lp - want.logprobs[i]) <= 1e-4, `token ${i}: logprob ${lp}, reference ${want.logprobs[i]}`));
    t.diagnostic(`${r.usage.prompt_tokens} prompt tokens -> ${JSON.stringify(r.choices[0].message.content)} (${r.choices[0].finish_reason})`);
  } finally {
    await engine.unload();
    await models.close();
  }
});
