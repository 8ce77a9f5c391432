// The Phi-3.5-vision model on the GPU (src/models/phi3_v) against the independent f32 CPU reference
// (test/reference/phi3v_reference.ts), on the tiny checkpoints of scripts/make_tiny_phi3v.ts written
// at test time. Images are processed by the family's image processor (processPhi3VImage); the
// reference gets the same crops as pixel values [(1 + hc·wc), 3, 336, 336] and image_size. Checks:
// image features of two images of different crop grids (tiles in several vision submits), f32
// last-position logits and 32 greedy tokens, §6's rotary rule (a prompt longer than
// original_max_position_embeddings O runs with long factors; a generation crossing O + 1 drops the
// cache and recomputes, image positions as token 0), multi-turn with KV prefix reuse (reusing only
// keys a fresh generate() would make), a chunked prefill with an image straddling chunk boundaries,
// q8/q4 loads against the reference on the same rounded weights, aborts, the tensor table; GPU
// preprocessing (the processor's patch rows as GPU tensors: identical logits and tokens).
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
import { isTensor, type Tensor } from "../../src/gpu/tensor.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import { encode as encodePng } from "fast-png";
import { releaseMedia } from "../../src/vision/gpu_preprocess.ts";
import { openCheckpointDir } from "../../src/loader/file_node.ts";
import type { SafetensorsCheckpoint } from "../../src/loader/safetensors.ts";
import { checkpointTensorSource, type TensorSource, type WeightLoadOptions } from "../../src/models/common/source.ts";
import { setPrefillChunkTokens } from "../../src/models/common/step.ts";
import { Engine } from "../../src/engine/engine.ts";
import type { MediaRef, PreparedMedia, ProcessorContext } from "../../src/models/family.ts";
import { parsePhi3VConfig, phi3VVisionConfig, type Phi3VConfig } from "../../src/models/phi3_v/config.ts";
import { createPhi3VProcessor } from "../../src/models/phi3_v/family.ts";
import { parsePhi3VPreprocess, processPhi3VImage, type Phi3VPixels, type Phi3VPreprocessOptions } from "../../src/models/phi3_v/image_processor.ts";
import { Phi3VModel, type Phi3VCache } from "../../src/models/phi3_v/model.ts";
import { phi3VNames, phi3VTensorTable } from "../../src/models/phi3_v/names.ts";
import { phi3vPatchRows, type Phi3VImagePayload } from "../../src/models/phi3_v/processor.ts";
import { PHI3V_PROMPT_STYLE } from "../../src/models/phi3_v/prompt.ts";
import { hdGatherIds, type Phi3VImageItem } from "../../src/models/phi3_v/vision.ts";
import { resolveFamily } from "../../src/models/registry.ts";
import { roundTripValues } from "../../src/quant/pack.ts";
import { loadImage } from "../../src/vision/load_image.ts";
import { makeTinyPhi3V, tinyPhi3VTensors, type TinyPhi3VShape } from "../../scripts/make_tiny_phi3v.ts";
import { loadPhi3VReference, type Phi3VReference } from "../reference/phi3v_reference.ts";
import { nmse } from "../util/compare.ts";
import { StaticServer } from "../util/static_server.ts";

const GREEDY_TOKENS = Number(process.env.WEBVLM_GREEDY_TOKENS ?? 32);
const F32: WeightLoadOptions = { textLinear: "f32", vision: "f32", embedding: "f32" };
const IMAGE_TOKEN = 32044;

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

/** The processor's crops as the reference takes them: [(1 + hc·wc), 3, 336, 336], global first. */
function pixelValues(px: Phi3VPixels): Float32Array {
  const S = 336;
  const { hc, wc } = px.geometry;
  const tile = 3 * S * S;
  const out = new Float32Array((1 + hc * wc) * tile);
  out.set(px.global.data, 0);
  for (let r = 0; r < hc; r++) {
    for (let c = 0; c < wc; c++) {
      const t = 1 + r * wc + c;
      for (let ch = 0; ch < 3; ch++) {
        for (let y = 0; y < S; y++) {
          const from = ch * px.hd.width * px.hd.height + (r * S + y) * px.hd.width + c * S;
          out.set(px.hd.data.subarray(from, from + S), t * tile + (ch * S + y) * S);
        }
      }
    }
  }
  return out;
}

interface TestImage {
  item: Phi3VImageItem;
  pv: Float32Array;
  size: [number, number];
}

function testImage(rgb: Uint8Array, width: number, height: number, pre: Phi3VPreprocessOptions, numCrops: number): TestImage {
  const px = processPhi3VImage({ rgb, width, height }, pre, numCrops);
  const g = px.geometry;
  return { item: { hc: g.hc, wc: g.wc, numImgTokens: g.numImgTokens, patchRows: phi3vPatchRows(px) }, pv: pixelValues(px), size: [g.height, g.width] };
}

interface GreedyRun {
  tokens: number[];
  logits: Float32Array;
  cache: Phi3VCache;
  /** Sequence length at which a decode step recomputed the cache (null: none). */
  recomputedAt: number | null;
}

/** Prefill, then greedy decode steps; stops after an eos id. */
async function gpuGreedy(model: Phi3VModel, ids: number[], images: Phi3VImageItem[], count: number, eos: readonly number[]): Promise<GreedyRun> {
  const cache = model.createCache(ids.length + count + 1);
  const pre = await model.prefill(ids, images, cache, { read: "both" });
  const tokens = [pre.tokenId!];
  let recomputedAt: number | null = null;
  while (tokens.length < count && !eos.includes(tokens[tokens.length - 1])) {
    const step = await model.decode(tokens[tokens.length - 1], cache, { read: "argmax" });
    if (step.recomputed) recomputedAt = cache.length;
    tokens.push(step.tokenId!);
  }
  return { tokens, logits: pre.logits!, cache, recomputedAt };
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
  root = await mkdtemp(join(tmpdir(), "webvlm-phi3v-"));
  for (const s of ["tiny-a", "tiny-b"] as const) await makeTinyPhi3V(s, join(root, s));
  gpu = await acquireNodeGpu();
});

after(async () => {
  setPrefillChunkTokens();
  for (const c of checkpoints) await c.close();
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

/**
 * Per shape: two images of different sizes and crop grids (1x2 and 1x1 crops; the first with a
 * request's num_crops 2), so both prompts are longer than O (long factors from prefill).
 */
const IMAGES: Record<TinyPhi3VShape, { w: number; h: number; crops: number; seed: number }[]> = {
  "tiny-a": [{ w: 500, h: 230, crops: 2, seed: 0 }, { w: 120, h: 150, crops: 1, seed: 7 }],
  "tiny-b": [{ w: 420, h: 180, crops: 2, seed: 0 }, { w: 90, h: 140, crops: 1, seed: 7 }],
};

for (const shape of ["tiny-a", "tiny-b"] as const satisfies readonly TinyPhi3VShape[]) {
  describe(shape, () => {
    let dir = "";
    let config: Phi3VConfig;
    let pre: Phi3VPreprocessOptions;
    let ref: Phi3VReference;
    let model: Phi3VModel;
    let images: TestImage[];
    let ids: number[];
    let refFeatures: Float32Array[];
    let greedy: GreedyRun | undefined;
    const O = (): number => ref.config.rope.originalMax;

    before(async () => {
      dir = join(root, shape);
      config = parsePhi3VConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
      pre = parsePhi3VPreprocess(await readJson(dir, "preprocessor_config.json"));
      images = IMAGES[shape].map((s) => testImage(s.seed ? noise(s.w, s.h, s.seed) : gradient(s.w, s.h), s.w, s.h, pre, s.crops));
      ref = loadPhi3VReference(dir);
      const text = ref.renderChat([{ role: "user", content: [{ type: "image_url" }, { type: "image_url" }, { type: "text", text: "Compare these two pictures. What differs?" }] }]);
      ids = ref.promptIds(text, images.map((im) => im.item.numImgTokens), IMAGE_TOKEN);
      refFeatures = images.map((im) => ref.imageFeatures(im.pv, im.size));
      model = await Phi3VModel.load(gpu, config, await dirSource(dir), F32);
    });
    after(() => {
      greedy?.cache.dispose();
      model?.dispose();
    });

    test("image features of two images (crop grids of different sizes, tiles in several submits) match the reference", async (t) => {
      const grids = new Set(images.map((im) => `${im.item.hc}x${im.item.wc}`));
      assert.ok(grids.size >= 2, `one crop grid only: ${[...grids]}`);
      model.visionTilesPerSubmit = 2;
      try {
        const { value: feats, submits } = await withSubmits(() => model.encodeImages(images.map((im) => im.item)));
        const got = await readF32(gpu, feats);
        gpu.pool.release(feats.buffer);
        const want = new Float32Array(refFeatures.reduce((a, f) => a + f.length, 0));
        let at = 0;
        for (const f of refFeatures) (want.set(f, at), (at += f.length));
        const e = nmse(got, want);
        assert.ok(e <= 1e-6, `image features NMSE ${e}`);
        const tiles = images.map((im) => 1 + im.item.hc * im.item.wc);
        assert.equal(submits, tiles.reduce((a, n) => a + Math.ceil(n / 2), 0));
        // An abort between vision submits stops the encode.
        const ac = new AbortController();
        await assert.rejects(withSubmits(() => model.encodeImages(images.map((im) => im.item), ac.signal), () => ac.abort()), assertWebvlmError("aborted", "aborted"));
        t.diagnostic(`${images.map((im) => `${im.item.hc}x${im.item.wc} crops -> ${im.item.numImgTokens} tokens`).join(", ")}; ${submits} submits; NMSE=${e.toExponential(2)}`);
      } finally {
        model.visionTilesPerSubmit = 4;
      }
    });

    test("f32 prompt logits (NMSE <= 1e-6) and 32 greedy tokens equal the reference; the prompt is longer than O (long factors)", async (t) => {
      assert.ok(ids.length > O(), `prompt of ${ids.length} tokens should exceed O = ${O()}`);
      const want = ref.generate(ids, refFeatures, GREEDY_TOKENS);
      greedy = await gpuGreedy(model, ids, images.map((im) => im.item), GREEDY_TOKENS, config.eosTokenIds);
      const e = nmse(greedy.logits, ref.logits(ids, refFeatures));
      assert.ok(e <= 1e-6, `last-position logits NMSE ${e}`);
      // The same prompt with short factors would differ: the rule is exercised, not vacuous.
      const eShort = nmse(greedy.logits, ref.logits(ids, refFeatures, { factors: "short" }));
      assert.ok(eShort > 1e-4, `short-factor logits are as close (${eShort})`);
      assert.deepEqual(greedy.tokens, want.tokens);
      assert.equal(greedy.recomputedAt, null);
      assert.ok(greedy.cache.longKeys.every((x) => x));
      t.diagnostic(`T=${ids.length} > O=${O()}: logits NMSE=${e.toExponential(2)} (short factors: ${eShort.toExponential(2)}); ${greedy.tokens.length} tokens identical, ${new Set(greedy.tokens).size} distinct`);
    });

    if (shape === "tiny-a") {
      test("GPU preprocessing: the processor's GPU tensors hold the CPU path's patch rows and give identical prompt logits and greedy tokens", async (t) => {
        assert.ok(greedy, "runs after the host-pixel greedy test (its logits and tokens are the baseline)");
        const baseline = greedy;
        const proc = createPhi3VProcessor(config, {
          preprocessorConfig: await readJson(dir, "preprocessor_config.json"),
          processorConfig: {},
          addedTokenId: (s) => (s === "<|image|>" ? IMAGE_TOKEN : undefined),
          gpu: () => gpu,
        });
        // The test's RGB images as PNG bytes (lossless: the same pixels), each with its request num_crops.
        const refs: MediaRef[] = IMAGES[shape].map((s) => ({
          kind: "image",
          source: encodePng({ width: s.w, height: s.h, data: s.seed ? noise(s.w, s.h, s.seed) : gradient(s.w, s.h), channels: 3, depth: 8 }),
          options: { numCrops: s.crops },
        }));
        const media = await proc.prepare(refs);
        const count = 8;
        try {
          const items = media.map((m, i): Phi3VImageItem => {
            const p = m.payload as Phi3VImagePayload;
            assert.equal(m.device, "gpu", `image ${i + 1} preprocessed on the GPU`);
            assert.ok(isTensor(p.patchRows), `image ${i + 1}: patch rows stay on the GPU`);
            assert.deepEqual([p.hc, p.wc, p.numImgTokens], [images[i].item.hc, images[i].item.wc, images[i].item.numImgTokens]);
            return { hc: p.hc, wc: p.wc, numImgTokens: p.numImgTokens, patchRows: p.patchRows };
          });
          for (const [i, it] of items.entries()) {
            const got = new Uint32Array((await readF32(gpu, it.patchRows as Tensor)).buffer);
            const want = images[i].item.patchRows as Float32Array;
            assert.deepEqual(got, new Uint32Array(want.buffer, want.byteOffset, want.length), `image ${i + 1}: patch rows bit for bit`);
          }
          model.visionTilesPerSubmit = 2; // several groups of tiles copied out of each tensor
          const run = await gpuGreedy(model, ids, items, count, config.eosTokenIds);
          run.cache.dispose();
          let diff = 0;
          for (let i = 0; i < run.logits.length; i++) if (!Object.is(run.logits[i], baseline.logits[i])) diff++;
          assert.equal(diff, 0, `${diff} prompt logits differ from the CPU-preprocessed run`);
          assert.deepEqual(run.tokens, baseline.tokens.slice(0, run.tokens.length));
          t.diagnostic(`${items.map((it) => `${it.hc}x${it.wc}`).join(", ")} crops from GPU tensors: ${run.logits.length} logits identical, ${run.tokens.length} greedy tokens identical`);
        } finally {
          model.visionTilesPerSubmit = 4;
          releaseMedia(media);
          proc.dispose?.();
        }
      });
    }

    test("a generation crossing O + 1 drops the cache and recomputes (image positions as token 0): tokens equal the reference", async (t) => {
      // tiny-a: a text prompt just under O; tiny-b: one image and text just under O (the quirk applies).
      const withImage = shape === "tiny-b";
      const im = images[1]; // 1x1 crops: 313 tokens
      const count = withImage ? [im.item.numImgTokens] : [];
      const words = (n: number): string => Array.from({ length: n }, (_, i) => ["red", "blue", "round", "square", "edge"][i % 5]).join(" ");
      let n = 1;
      let p: number[] = [];
      for (;;) {
        const content = withImage ? [{ type: "image_url" as const }, { type: "text" as const, text: words(n) }] : words(n);
        const next = ref.promptIds(ref.renderChat([{ role: "user", content }]), count, IMAGE_TOKEN);
        if (next.length > O() - 8) break;
        p = next;
        n++;
      }
      assert.ok(p.length <= O() && p.length + 16 > O() + 1, `prompt of ${p.length} tokens for O = ${O()}`);
      const feats = withImage ? [refFeatures[1]] : [];
      const want = ref.generate(p, feats, 20);
      assert.equal(want.recomputedAt, O() + 1, "the reference recomputes at O + 1");
      const run = await gpuGreedy(model, p, withImage ? [im.item] : [], 20, config.eosTokenIds);
      try {
        assert.deepEqual(run.tokens, want.tokens);
        assert.equal(run.recomputedAt, O() + 1);
        assert.ok(run.cache.longKeys.every((x) => x), "every key long after the recompute");
        if (withImage) assert.ok(run.cache.imageAsZero.some((x) => x));
        // Multi-turn after the recompute: image positions were recomputed without their image, so a
        // new prompt reuses the cache only up to the first image position (a fresh generate() embeds it).
        if (withImage) {
          const answer = run.tokens.slice(0, 4);
          const more = ref.promptIds("<|end|>\n<|user|>\nAnd the edges?<|end|>\n<|assistant|>\n", []).slice(1);
          const ids2 = [...p, ...answer, ...more];
          run.cache.truncate(p.length + answer.length - 1);
          const r2 = await model.prefill(ids2, [im.item], run.cache, { read: "logits" });
          assert.equal(r2.reused, p.indexOf(IMAGE_TOKEN));
          const e2 = nmse(r2.logits!, ref.logits(ids2, feats));
          assert.ok(e2 <= 1e-6, `second turn after the recompute: NMSE ${e2}`);
        }
        t.diagnostic(`prompt ${p.length} tokens (O = ${O()}${withImage ? ", one image" : ""}): recompute at ${run.recomputedAt}, ${run.tokens.length} tokens identical`);
      } finally {
        run.cache.dispose();
      }
    });

    // Chunked prefill, prefix reuse and q8/q4 run on tiny-b only (its O = 400 sits between a one-image
    // and a two-image prompt, so the short/long reuse rules are live there); tiny-a would repeat them.
    if (shape === "tiny-b") {
      test("a prefill in chunks of 50 tokens (images straddling chunk boundaries) gives the reference logits", async (t) => {
        const first = ids.indexOf(IMAGE_TOKEN);
        const last = ids.lastIndexOf(IMAGE_TOKEN);
        assert.ok(Math.floor(first / 50) !== Math.floor(last / 50));
        setPrefillChunkTokens(50);
        try {
          const cache = model.createCache(ids.length);
          const r = await model.prefill(ids, images.map((im) => im.item), cache, { read: "logits" });
          cache.dispose();
          assert.equal(r.chunks, Math.ceil(ids.length / 50));
          const e = nmse(r.logits!, ref.logits(ids, refFeatures));
          assert.ok(e <= 1e-6, `chunked prefill logits NMSE ${e}`);
          t.diagnostic(`${r.chunks} chunks, one rope table (T = ${ids.length}): NMSE=${e.toExponential(2)}`);
        } finally {
          setPrefillChunkTokens();
        }
      });

      test("KV prefix reuse: a cut inside the second image, a second turn, and a short first turn before a long one", async (t) => {
        const cache = greedy!.cache;
        const want = ref.logits(ids, refFeatures);
        // Inside image 2: its first rows come from the cache, the rest from a fresh encode of image 2 only.
        const cut = ids.lastIndexOf(IMAGE_TOKEN) - 3;
        cache.truncate(cut);
        const r1 = await model.prefill(ids, images.map((im) => im.item), cache, { read: "logits" });
        assert.equal(r1.reused, cut);
        const e1 = nmse(r1.logits!, want);
        assert.ok(e1 <= 1e-6, `cut-inside-image re-prefill NMSE ${e1}`);
        // A second turn: the first turn's prompt and answer (long keys) are reused whole.
        const answer = greedy!.tokens.slice(0, 4);
        for (const id of answer.slice(0, -1)) await model.decode(id, cache);
        const more = ref.promptIds("<|end|>\n<|user|>\nAnd the edges?<|end|>\n<|assistant|>\n", []).slice(1);
        const ids2 = [...ids, ...answer, ...more];
        const r2 = await model.prefill(ids2, images.map((im) => im.item), cache, { read: "logits" });
        assert.equal(r2.reused, ids.length + answer.length - 1);
        const e2 = nmse(r2.logits!, ref.logits(ids2, refFeatures));
        assert.ok(e2 <= 1e-6, `second-turn logits NMSE ${e2}`);
        // A short first turn (short keys), then a prompt longer than O with the same start: a fresh
        // generate() rotates every key with the long factors, so nothing is reused.
        const short = ref.promptIds(ref.renderChat([{ role: "user", content: "Hello there." }]), []);
        assert.ok(short.length < O());
        const long = [...short, ...ids2.slice(1)];
        const c2 = model.createCache(long.length);
        try {
          await model.prefill(short, [], c2, { read: "argmax" });
          assert.ok(c2.longKeys.every((x) => !x));
          const r3 = await model.prefill(long, images.map((im) => im.item), c2, { read: "logits" });
          assert.equal(r3.reused, 0);
          const e3 = nmse(r3.logits!, ref.logits(long, refFeatures));
          assert.ok(e3 <= 1e-6, `long prompt after a short turn: NMSE ${e3}`);
          t.diagnostic(`NMSE: cut inside image ${e1.toExponential(2)}; second turn (${r2.reused} of ${ids2.length} reused) ${e2.toExponential(2)}; short -> long turn (0 reused) ${e3.toExponential(2)}`);
        } finally {
          c2.dispose();
        }
      });

      for (const fmt of ["q8", "q4"] as const) {
        test(`${fmt} load: logits and greedy tokens equal a reference on the ${fmt}-rounded weights`, async (t) => {
          const q = await Phi3VModel.load(gpu, config, await dirSource(dir), { textLinear: fmt, vision: fmt, embedding: fmt });
          try {
            const one = images[1];
            const p = ref.promptIds(ref.renderChat([{ role: "user", content: [{ type: "image_url" }, { type: "text", text: "What is it?" }] }]), [one.item.numImgTokens], IMAGE_TOKEN);
            const run = await gpuGreedy(q, p, [one.item], GREEDY_TOKENS, config.eosTokenIds);
            run.cache.dispose();
            // Every matrix the load quantizes, rounded as the loader does (row-wise along K); the
            // separators, class embedding, norms and biases stay f32.
            const keepF32 = new Set<string>([phi3VNames.glbGN, phi3VNames.subGN]);
            const refQ = loadPhi3VReference(dir, {
              transform: (name, data, shape) => (shape.length < 2 || keepF32.has(name) ? data : roundTripValues(data, shape[0], data.length / shape[0], fmt)),
            });
            const featsQ = refQ.imageFeatures(one.pv, one.size);
            const gotFeats = await q.encodeImages([one.item]);
            const eF = nmse(await readF32(gpu, gotFeats), featsQ);
            gpu.pool.release(gotFeats.buffer);
            const eL = nmse(run.logits, refQ.logits(p, [featsQ]));
            assert.ok(eF <= 1e-6, `${fmt} image features vs the rounded reference: NMSE ${eF}`);
            assert.ok(eL <= 1e-6, `${fmt} logits vs the rounded reference: NMSE ${eL}`);
            assert.deepEqual(run.tokens, refQ.generate(p, [featsQ], GREEDY_TOKENS).tokens);
            t.diagnostic(`${fmt}: features NMSE=${eF.toExponential(2)}, logits NMSE=${eL.toExponential(2)} vs rounded reference, ${run.tokens.length} tokens identical; GPU weights ${(q.weights.gpuBytes / 1e6).toFixed(2)} MB`);
          } finally {
            q.dispose();
          }
        });
      }
    }

    test("the tensor table equals the checkpoint's and the generator's lists; unused entries are what the reference leaves", async () => {
      const ckpt = await openCheckpointDir(dir);
      checkpoints.push(ckpt);
      const source = checkpointTensorSource(ckpt);
      const table = phi3VTensorTable(config, phi3VVisionConfig(config, source));
      const sorted = (xs: { name: string; shape: readonly number[] }[]): string[] => xs.map((s) => `${s.name} [${s.shape.join(",")}]`).sort();
      assert.deepEqual(sorted(table), sorted(ckpt.names().map((name) => ({ name, shape: ckpt.info(name).shape }))));
      assert.deepEqual(sorted(table), sorted(tinyPhi3VTensors(shape)));
      assert.deepEqual(table.filter((s) => !s.used).map((s) => s.name).sort(), [...ref.unusedTensors].sort());
    });
  });
}

test("errors: placeholder count, aborts before and between chunks (cache restored), missing and misshapen tensors", async () => {
  const dir = join(root, "tiny-b");
  const config = parsePhi3VConfig(await readJson(dir, "config.json"));
  const model = await Phi3VModel.load(gpu, config, await dirSource(dir), F32);
  try {
    const pre = parsePhi3VPreprocess(await readJson(dir, "preprocessor_config.json"));
    const im = testImage(gradient(60, 40), 60, 40, pre, 1).item;
    const ids = [1, 32010, ...new Array<number>(im.numImgTokens).fill(IMAGE_TOKEN), 1, 450, 32007, 32001];
    const cache = model.createCache(ids.length + 2);
    await assert.rejects(model.prefill(ids.slice(0, -10).concat([1]), [im], cache), assertWebvlmError("bad_request", "placeholder"));
    await assert.rejects(model.prefill(ids, [], cache), assertWebvlmError("bad_request", "placeholder"));
    await assert.rejects(model.prefill(ids, [{ ...im, numImgTokens: 5 }], cache), assertWebvlmError("bad_request", "tokens"));
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(model.prefill(ids, [im], cache, { signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
    assert.equal(cache.length, 0);
    // An abort while the chunks run: the chunk in flight finishes, the next is not started, the cache is restored.
    const full = await model.prefill(ids, [im], cache, { read: "logits" });
    assert.equal(cache.length, ids.length);
    cache.truncate(3);
    setPrefillChunkTokens(64);
    const late = new AbortController();
    let submits = 0;
    try {
      const run = withSubmits(() => model.prefill(ids, [im], cache, { signal: late.signal }), (n) => {
        submits = n;
        if (n === 2) late.abort(); // the vision submit, then the first chunk
      });
      await assert.rejects(run, assertWebvlmError("aborted", "aborted"));
    } finally {
      setPrefillChunkTokens();
    }
    assert.equal(submits, 2);
    assert.equal(cache.length, 3);
    assert.equal(cache.ids.length, 3);
    const again = await model.prefill(ids, [im], cache, { read: "logits" });
    assert.equal(again.reused, 3);
    assert.ok(nmse(again.logits!, full.logits!) <= 1e-10);
    cache.dispose();
  } finally {
    model.dispose();
  }
  const base = await dirSource(dir);
  const gone = "model.vision_embed_tokens.img_projection.2.bias";
  const missing: TensorSource = { ...base, has: (n) => n !== gone && base.has(n) };
  await assert.rejects(Phi3VModel.load(gpu, config, missing), assertWebvlmError("missing_tensor", gone));
  const wrong = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.v_proj.bias";
  const misshapen: TensorSource = { ...base, shape: (n) => (n === wrong ? [7] : base.shape(n)) };
  await assert.rejects(Phi3VModel.load(gpu, config, misshapen), assertWebvlmError("shape_mismatch", wrong));
  // Layers past layer_idx (tiny-b: layer 1 of 2) and post_layernorm are never read.
  const unused = ["model.vision_embed_tokens.img_processor.vision_model.encoder.layers.1.", "model.vision_embed_tokens.img_processor.vision_model.post_layernorm."];
  const unreadable: TensorSource = {
    ...base,
    read: (n) => (unused.some((u) => n.startsWith(u)) ? Promise.reject(new Error(`read ${n}`)) : base.read(n)),
  };
  const trimmed = await Phi3VModel.load(gpu, config, unreadable, F32);
  assert.deepEqual([trimmed.weights.visionConfig.numLayers, trimmed.weights.visionConfig.layersUsed], [2, 1]);
  trimmed.dispose();
});

test("family: registry, config rules, processor wiring, adapter with warm-up; the engine answers with the reference's tokens and logprobs", async (t) => {
  const dir = join(root, "tiny-b");
  const cfgJson = await readJson(dir, "config.json");
  const fam = resolveFamily(cfgJson);
  assert.equal(fam.name, "phi3_v");
  assert.equal(resolveFamily({ model_type: "phi3_v" }).name, "phi3_v");
  const opened = fam.open(cfgJson, await readJson(dir, "generation_config.json"));
  assert.equal(opened.maxPositions, 131072);
  assert.deepEqual(opened.eosTokenIds, [2]);
  assert.equal(opened.prompt.build, PHI3V_PROMPT_STYLE.build);

  const c = parsePhi3VConfig(cfgJson);
  assert.equal(c.text.rope.kind, "longrope");
  assert.deepEqual([c.text.qkvLayout, c.text.gateUpLayout, c.layerIdx], ["fused", "fused", -2]);
  // §1: "su" and "longrope" name the same scheme; sliding_window w shows w + 1 keys (eager mask).
  const a = parsePhi3VConfig(await readJson(join(root, "tiny-a"), "config.json"));
  assert.equal(a.text.rope.kind, "longrope");
  assert.deepEqual(a.text.slidingWindow, [201, 201]);
  assert.throws(() => parsePhi3VConfig({ ...cfgJson, embd_layer: { hd_transform_order: "glb_sub" } }), assertWebvlmError("unsupported_feature", "hd_transform_order"));
  assert.throws(() => parsePhi3VConfig({ ...cfgJson, img_processor: { type_feature: "cls_patch" } }), assertWebvlmError("unsupported_feature", "type_feature"));
  assert.throws(() => parsePhi3VConfig({ ...cfgJson, architectures: ["Phi3ForCausalLM"] }), assertWebvlmError("unsupported_architecture", "phi3_v"));

  const ctx = (addedTokenId: (s: string) => number | undefined): ProcessorContext => ({ preprocessorConfig: { num_crops: 1 }, processorConfig: {}, addedTokenId });
  const proc = createPhi3VProcessor(c, ctx((s) => (s === "<|image|>" ? 32044 : undefined)));
  assert.deepEqual([proc.options.imageTokenId, proc.options.preprocess.numCrops], [32044, 1]);
  assert.throws(() => createPhi3VProcessor(c, ctx(() => undefined)), assertWebvlmError("bad_request", "<|image|>"));

  // The adapter behind the contract: prepared media in, the reference's logits out; warm-up compiles.
  const vlm = await opened.load(gpu, await dirSource(dir), F32);
  const ref = loadPhi3VReference(dir);
  try {
    const pre = parsePhi3VPreprocess(await readJson(dir, "preprocessor_config.json"));
    const im = testImage(noise(70, 50, 3), 70, 50, pre, 1);
    const media: PreparedMedia[] = [{ kind: "image", hash: "x", tokens: im.item.numImgTokens, payload: { ...im.item, height: im.size[0], width: im.size[1] } }];
    const ids = ref.promptIds(ref.renderChat([{ role: "user", content: [{ type: "image_url" }, { type: "text", text: "Hi" }] }]), [im.item.numImgTokens], IMAGE_TOKEN);
    const cache = vlm.createCache(ids.length + 1);
    try {
      const r = await vlm.prefill(ids, media, cache, { read: "both" });
      const e = nmse(r.logits!, ref.logits(ids, [{ pixelValues: im.pv, imageSize: im.size }]));
      assert.ok(e <= 1e-6, `adapter logits NMSE ${e}`);
      await vlm.decode(r.tokenId!, cache, { read: "argmax" });
      assert.equal(cache.length, ids.length + 1);
    } finally {
      cache.dispose();
    }
    await vlm.warmUp();
  } finally {
    vlm.dispose();
  }

  // The engine: processor, prompt builder and model together.
  const image = join(process.cwd(), "test/fixtures/vision/resize_src_160x120.png");
  const question = "What is in this picture?";
  const decoded = await loadImage(image);
  const im = testImage(decoded.rgb, decoded.width, decoded.height, parsePhi3VPreprocess(await readJson(dir, "preprocessor_config.json")), 1);
  const ids = ref.promptIds([{ role: "user", content: [{ type: "image_url" }, { type: "text", text: question }] }], [im.item.numImgTokens], IMAGE_TOKEN);
  const want = ref.generate(ids, [{ pixelValues: im.pv, imageSize: im.size }], 8);
  const models = await StaticServer.start({ root });
  const engine = await Engine.create({ gpu });
  try {
    const info = await engine.load(models.url("tiny-b"), { quantization: "f32", embedding: "f32", vision: "f32" });
    assert.equal(info.family, "phi3_v");
    const r = await engine.chat.completions.create({
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: image } }, { type: "text", text: question }] }],
      max_tokens: 8,
      temperature: 0,
      logprobs: true,
    });
    assert.equal(r.usage.prompt_tokens, ids.length);
    // The engine's default: the image was preprocessed on the GPU (family processor given ctx.gpu).
    assert.equal(r.usage.preprocess_device, "gpu");
    const lps = (r.choices[0].logprobs?.content ?? []).map((l) => l.logprob);
    // The completion's text is decode(answer ids), as the original decodes it (the leading space the
    // decoder's Strip(start=1) drops is dropped too); the tokens are compared through their logprobs below.
    assert.equal(r.choices[0].message.content, ref.decode(want.tokens));
    assert.equal(lps.length, want.logprobs.length);
    lps.forEach((lp, i) => assert.ok(Math.abs(lp - want.logprobs[i]) <= 1e-4, `token ${i}: logprob ${lp}, reference ${want.logprobs[i]}`));
    t.diagnostic(`${r.usage.prompt_tokens} prompt tokens -> ${JSON.stringify(r.choices[0].message.content)} (${r.choices[0].finish_reason})`);
  } finally {
    await engine.unload();
    await models.close();
  }
  assert.deepEqual(gpu.uncapturedErrors, []);
});

test("the published config and ViT-L/14-336 tensor shapes give §2's sizes; the HD layout has §3.6's token count", () => {
  const factors = Array.from({ length: 48 }, (_, j) => 1 + j / 100);
  const cfg = parsePhi3VConfig({
    architectures: ["Phi3VForCausalLM"], model_type: "phi3_v", hidden_size: 3072, intermediate_size: 8192, num_hidden_layers: 32,
    num_attention_heads: 32, num_key_value_heads: 32, rms_norm_eps: 1e-5, rope_theta: 10000, vocab_size: 32064,
    original_max_position_embeddings: 4096, max_position_embeddings: 131072, sliding_window: 262144, tie_word_embeddings: false,
    rope_scaling: { type: "su", short_factor: factors, long_factor: factors },
    embd_layer: { embedding_cls: "image", hd_transform_order: "sub_glb", projection_cls: "mlp", use_hd_transform: true, with_learnable_separator: true },
    img_processor: { image_dim_out: 1024, model_name: "openai/clip-vit-large-patch14-336", name: "clip_vision_model", num_img_tokens: 144 },
    bos_token_id: 1, eos_token_id: 2, _attn_implementation: "flash_attention_2",
  });
  assert.deepEqual([cfg.text.headDim, cfg.text.slidingWindow[0], cfg.layerIdx, cfg.imageTokenId], [96, 262145, -2, 32044]);
  assert.ok(cfg.text.rope.kind === "longrope" && Math.abs(cfg.text.rope.attentionFactor - 1.19024) < 1e-5);
  const v = "model.vision_embed_tokens.img_processor.vision_model.";
  const shapes = (n: string): number[] | undefined => {
    if (n === `${v}embeddings.patch_embedding.weight`) return [1024, 3, 14, 14];
    const m = /encoder\.layers\.(\d+)\.(layer_norm1\.weight|mlp\.fc1\.weight)$/.exec(n);
    if (!m || Number(m[1]) >= 24) return undefined;
    return m[2] === "layer_norm1.weight" ? [1024] : [4096, 1024];
  };
  const vision = phi3VVisionConfig(cfg, { has: (n) => shapes(n) !== undefined, shape: (n) => shapes(n)! });
  assert.deepEqual(vision, { hiddenSize: 1024, intermediateSize: 4096, numLayers: 24, layersUsed: 23, numHeads: 16, headDim: 64, layerNormEps: 1e-5 });
  for (const [hc, wc] of [[1, 1], [1, 2], [4, 4], [2, 8]]) {
    const ids = hdGatherIds(hc, wc);
    assert.equal(ids.length, 4 * ((hc * wc + 1) * 144 + 1 + (hc + 1) * 12));
    // §4: the first vector is merged token (0, 0) of HD tile (0, 0) = tile 1 (after the global tile):
    // f[0,0], f[0,1], f[1,0], f[1,1] after its class token; the sub grid's first row ends with sub_GN.
    const R = (1 + hc * wc) * 577;
    assert.deepEqual([...ids.subarray(0, 4)], [578, 579, 578 + 24, 579 + 24]);
    const rowEnd = 4 * 12 * wc;
    assert.deepEqual([...ids.subarray(rowEnd, rowEnd + 4)], [R, R + 1, R + 2, R + 3]);
    const glb = 4 * 12 * hc * (12 * wc + 1);
    assert.deepEqual([...ids.subarray(glb, glb + 8)], [R + 4, R + 5, R + 6, R + 7, 1, 2, 25, 26]);
  }
});
