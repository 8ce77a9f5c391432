// The Qwen2-VL model on the GPU (src/models/qwen2_vl) against the independent
// f32 CPU reference (test/reference), on tiny random checkpoints written at
// test time: two procedural images (one resized by the processor), a chat
// prompt from the real tokenizer and template, then positions, image
// embeddings, prompt logits and greedy tokens; quantized loads; loader errors.
//
// 32 greedy tokens per run (f32 both shapes, q8 and q4 on tiny-b); WEBVLM_GREEDY_TOKENS /
// WEBVLM_QUANT_TOKENS override the counts. The 66-token prompt makes every decode step span two
// of the decode attention kernel's 64-key chunks.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { readF32 } from "../../src/gpu/transfer.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { Tensor } from "../../src/gpu/tensor.ts";
import { imagePatches, uploadNormalizeTable } from "../../src/ops/image_patches.ts";
import { resizeImage } from "../../src/ops/image_resample.ts";
import { uploadImage8 } from "../../src/vision/gpu_image.ts";
import { openCheckpoint } from "../../src/loader/checkpoint.ts";
import { openCheckpointDir, writeSafetensorsFile } from "../../src/loader/file_node.ts";
import type { SafetensorsCheckpoint } from "../../src/loader/safetensors.ts";
import { parseQwen2VLConfig, type Qwen2VLConfig } from "../../src/models/qwen2_vl/config.ts";
import { loadQwen2VL, type Qwen2VLCache, type Qwen2VLModel, type VisionItem } from "../../src/models/qwen2_vl/model.ts";
import { qwen2VLTensorTable } from "../../src/models/qwen2_vl/weights.ts";
import { checkpointTensorSource, type TensorSource, type WeightLoadOptions } from "../../src/models/common/source.ts";
import { setPrefillChunkTokens } from "../../src/models/common/step.ts";
import { resolveFamily } from "../../src/models/registry.ts";
import { roundTripValues } from "../../src/quant/pack.ts";
import { buildChatPrompt, ChatTemplate, resolveChatTemplate } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { visionTokenCount } from "../../src/models/qwen2_vl/vision.ts";
import { normalizeRgb8ToChw } from "../../src/vision/normalize.ts";
import { patchify } from "../../src/models/qwen2_vl/patchify.ts";
import { preprocessImage, type PreprocessedImage } from "../../src/models/qwen2_vl/image_processor.ts";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import {
  argmax as refArgmax, buildReferenceModel, getRopeIndex as refRopeIndex, greedyGenerate, loadReferenceModel, parseConfig,
  readSafetensorsDir, visionForward, type RefModel,
} from "../reference/qwen2vl_reference.ts";
import { nmse } from "../util/compare.ts";

const GREEDY_TOKENS = Number(process.env.WEBVLM_GREEDY_TOKENS ?? 32);
const QUANT_TOKENS = Number(process.env.WEBVLM_QUANT_TOKENS ?? 32);
const F32: WeightLoadOptions = { textLinear: "f32", vision: "f32", embedding: "f32" };

let root = "";
let gpu: GpuContext;
const checkpoints: SafetensorsCheckpoint[] = [];
const closers: (() => Promise<void>)[] = [];
let imgA: PreprocessedImage;
let imgB: PreprocessedImage;
let ids: number[] = [];
let tok: TextTokenizer;
let tpl: ChatTemplate;

/** A gradient (no resize needed: 84x56 is a multiple of 28) and seeded noise (100x70 -> 112x56). */
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
async function loadConfig(dir: string): Promise<Qwen2VLConfig> {
  return parseQwen2VLConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
}

/** The checkpoint directory as a TensorSource (no readRows); `reads` records whole-tensor reads. */
async function dirSource(dir: string, reads?: string[]): Promise<TensorSource> {
  const ckpt = await openCheckpointDir(dir);
  checkpoints.push(ckpt);
  const base = checkpointTensorSource(ckpt);
  return { ...base, read: (name) => (reads?.push(name), base.read(name)) };
}

/** The loader's own checkpoint source (src/loader/checkpoint.ts), which has ranged readRows. */
async function loaderSource(dir: string, reads: string[]): Promise<TensorSource> {
  const ckpt = await openCheckpoint({ path: dir });
  closers.push(() => ckpt.close());
  const w: TensorSource = ckpt.weights; // structurally a TensorSource
  return { has: (n) => w.has(n), shape: (n) => w.shape(n), read: (n) => (reads.push(n), w.read(n)), readRows: w.readRows!.bind(w) };
}

/**
 * The reference on the values a quantized load represents: every matrix (embedding, lm_head,
 * all linear weights incl. the patch embedding; the 1-D norm weights and biases stay f32)
 * replaced by roundTripValues, row-wise along K as the loader quantizes it.
 */
function roundedReference(dir: string, fmt: "q8" | "q4"): RefModel {
  const raw = readSafetensorsDir(dir);
  for (const t of raw.values()) {
    if (t.shape.length < 2) continue;
    t.data = roundTripValues(t.data, t.shape[0], t.data.length / t.shape[0], fmt);
  }
  return buildReferenceModel(parseConfig(JSON.parse(readFileSync(join(dir, "config.json"), "utf8"))), raw);
}

/** The same tensors under transformers' newer names (model.language_model.*, model.visual.*). */
function renamedSource(src: TensorSource): TensorSource {
  const toOld = (n: string): string | null => {
    if (n.startsWith("model.language_model.")) return "model." + n.slice("model.language_model.".length);
    if (n.startsWith("model.visual.")) return n.slice("model.".length);
    if (n.startsWith("model.") || n.startsWith("visual.")) return null; // old spellings are gone
    return n;
  };
  return {
    has: (n) => toOld(n) !== null && src.has(toOld(n)!),
    shape: (n) => src.shape(toOld(n)!),
    read: (n) => src.read(toOld(n)!),
  };
}

const images = (): VisionItem[] => [
  { grid: imgA.grid, pixelValues: imgA.pixelValues },
  { grid: imgB.grid, pixelValues: imgB.pixelValues },
];
const allPixels = (): Float32Array => {
  const pv = new Float32Array(imgA.pixelValues.length + imgB.pixelValues.length);
  pv.set(imgA.pixelValues);
  pv.set(imgB.pixelValues, imgA.pixelValues.length);
  return pv;
};

/** Counts queue submits while fn runs (each forward must be one submit, readback included). */
async function countSubmits<T>(fn: () => Promise<T>): Promise<{ value: T; submits: number }> {
  const queue = gpu.device.queue as GPUQueue & { submit: GPUQueue["submit"] };
  const original = queue.submit;
  let submits = 0;
  queue.submit = function (this: GPUQueue, buffers: Iterable<GPUCommandBuffer>) {
    submits++;
    return original.call(this, buffers);
  };
  try {
    return { value: await fn(), submits };
  } finally {
    queue.submit = original;
  }
}

interface GreedyRun {
  tokens: number[];
  logits: Float32Array;
  ms: number;
  prefillMs: number;
  /** Queue submits of the prefill and of every decode step. */
  submits: number[];
  /** The cache after the run (prompt + generated tokens); the caller disposes it. */
  cache: Qwen2VLCache;
}

/** Greedy tokens from the GPU model: prefill, then decode steps, stopping at eos. */
async function gpuGreedy(model: Qwen2VLModel, count: number, eos: number[]): Promise<GreedyRun> {
  const cache = model.createCache(ids.length + count + 1);
  const t0 = performance.now();
  const pre = await countSubmits(() => model.prefill(ids, { images: images() }, cache, { read: "both" }));
  const prefillMs = performance.now() - t0;
  const submits = [pre.submits];
  const tokens = [pre.value.tokenId!];
  while (tokens.length < count && !eos.includes(tokens[tokens.length - 1])) {
    const step = await countSubmits(() => model.decode(tokens[tokens.length - 1], cache));
    submits.push(step.submits);
    tokens.push(step.value.tokenId!);
  }
  return { tokens, logits: pre.value.logits!, ms: performance.now() - t0, prefillMs, submits, cache };
}

function assertWebvlmError(code: string, includes: string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected a WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.includes(includes), `message "${e.message}" should name "${includes}"`);
    return true;
  };
}

/** Qwen2-VL's placeholders (<|image_pad|> 151655, <|video_pad|> 151656), t*h*w/4 copies per grid. */
const qwenPads = (images: readonly Grid3[], videos: readonly Grid3[] = []) => [
  { kind: "image", tokenId: 151655, counts: images.map((g) => visionTokenCount([g], 2)) },
  { kind: "video", tokenId: 151656, counts: videos.map((g) => visionTokenCount([g], 2)) },
];
type Grid3 = readonly [number, number, number];

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-gpu-model-"));
  await makeTinyQwen2VL(join(root, "tiny-a"), "tiny-a");
  await makeTinyQwen2VL(join(root, "tiny-b"), "tiny-b");
  gpu = await acquireNodeGpu();
  const dir = join(root, "tiny-a");
  tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
  tpl = new ChatTemplate(resolveChatTemplate({ chatTemplateJson: await readJson(dir, "chat_template.json") }));
  imgA = preprocessImage(gradient(84, 56), 84, 56);
  imgB = preprocessImage(noise(100, 70, 99), 100, 70);
  assert.deepEqual(imgA.grid, [1, 4, 6]);
  assert.deepEqual([imgB.resizedWidth, imgB.resizedHeight, ...imgB.grid], [112, 56, 1, 4, 8]);
  const messages = [{
    role: "user",
    content: [
      { type: "image" as const },
      { type: "text" as const, text: "Compare this picture" },
      { type: "image" as const },
      { type: "text" as const, text: "with this one. What differs? Describe the colours, shapes and textures of both, then say which looks more like a photograph." },
    ],
  }];
  ids = buildChatPrompt(tok, tpl, messages, qwenPads([imgA.grid, imgB.grid]), { addGenerationPrompt: true }).ids;
});

after(async () => {
  for (const c of checkpoints) await c.close();
  for (const c of closers) await c();
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

for (const shape of ["tiny-a", "tiny-b"] as const) {
  describe(shape, () => {
    let dir = "";
    let config: Qwen2VLConfig;
    let ref: RefModel;
    let refGen: ReturnType<typeof greedyGenerate>;
    let model: Qwen2VLModel;
    /** Last-position logits of the f32 prefill (reused by later tests as the "full prefill"). */
    let promptLogits: Float32Array;
    /** The cache of that run (prompt + greedy tokens), reused by the cache-reuse test. */
    let greedyCache: Qwen2VLCache | undefined;

    before(async () => {
      dir = join(root, shape);
      config = await loadConfig(dir);
      ref = loadReferenceModel(dir);
      const count = Math.max(GREEDY_TOKENS, shape === "tiny-b" ? QUANT_TOKENS : 0);
      refGen = greedyGenerate(ref, ids, allPixels(), [imgA.grid, imgB.grid], count, config.eosTokenIds);
      model = await loadQwen2VL(gpu, config, await dirSource(dir), F32);
    });
    after(() => {
      greedyCache?.dispose();
      model?.dispose();
    });

    test("M-RoPE positions and rope delta equal the reference", (t) => {
      const got = model.ropeIndex(ids, [imgA.grid, imgB.grid]);
      const want = refRopeIndex(ids, [[...imgA.grid], [...imgB.grid]], ref.config);
      assert.deepEqual(Array.from(got.positions), want.positions.flat());
      assert.equal(got.ropeDelta, want.ropeDelta);
      assert.notEqual(got.ropeDelta, 0); // images do shift the positions
      t.diagnostic(`L=${ids.length} ropeDelta=${got.ropeDelta}`);
    });

    test("image embeddings of two images (one resized) match the reference (f32, NMSE <= 1e-6)", async (t) => {
      const want = visionForward(ref, allPixels(), [[...imgA.grid], [...imgB.grid]]);
      const t0 = performance.now();
      const emb = model.encodeVision(allPixels(), [imgA.grid, imgB.grid]);
      const got = await readF32(gpu, emb);
      const ms = performance.now() - t0;
      gpu.pool.release(emb.buffer);
      assert.deepEqual(emb.shape, [14, config.text.hiddenSize]);
      const e = nmse(got, want);
      assert.ok(e <= 1e-6, `image embeddings NMSE ${e}`);
      t.diagnostic(`image embeddings [${emb.shape}] NMSE=${e.toExponential(3)} (${ms.toFixed(0)} ms)`);
    });

    test("f32 prompt logits (NMSE <= 1e-6) and greedy tokens equal the reference", async (t) => {
      const count = GREEDY_TOKENS;
      const run = await gpuGreedy(model, count, config.eosTokenIds);
      promptLogits = run.logits;
      greedyCache = run.cache;
      const e = nmse(run.logits, refGen.firstLogits);
      assert.ok(e <= 1e-6, `last-position logits NMSE ${e}`);
      assert.equal(run.tokens[0], refArgmax(refGen.firstLogits));
      assert.deepEqual(run.submits, run.tokens.map(() => 1), "one submit per forward (readback included)");
      // Both stop after an eos id, so an early eos compares the tokens up to it.
      const want = refGen.tokens.slice(0, count);
      assert.deepEqual(run.tokens, want);
      const eosAt = want.findIndex((x) => config.eosTokenIds.includes(x));
      t.diagnostic(
        `logits NMSE=${e.toExponential(2)}; ${run.tokens.length} tokens identical` +
          `${eosAt >= 0 ? ` (eos at ${eosAt})` : ""}, ${new Set(run.tokens).size} distinct; ` +
          `GPU prefill ${run.prefillMs.toFixed(0)} ms, ${((run.ms - run.prefillMs) / Math.max(1, run.tokens.length - 1)).toFixed(0)} ms/decode step`,
      );
    });

    if (shape === "tiny-a") {
      test("GPU preprocessing: the same images resized and patchified in WGSL give the same pixels and identical logits", async (t) => {
        // The GPU path's steps on the test's own RGB images: upload, Pillow-exact resize, patchify.
        const onGpu = (rgb: Uint8Array, w: number, h: number, nw: number, nh: number): Tensor => {
          const img = uploadImage8(gpu, rgb, w, h, 3);
          const rec = new Recorder(gpu);
          const resized = resizeImage(rec, img, nw, nh, { filter: "bicubic" });
          const table = uploadNormalizeTable(gpu, {});
          const out = imagePatches(rec, [resized, resized], table, { patchSize: 14, gridW: nw / 14, gridH: nh / 14, mergeSize: 2 });
          rec.submit();
          for (const b of [img.buffer, resized.buffer, table.buffer]) gpu.pool.release(b);
          return out;
        };
        const pa = onGpu(gradient(84, 56), 84, 56, 84, 56);
        const pb = onGpu(noise(100, 70, 99), 100, 70, 112, 56);
        assert.deepEqual(Array.from(new Uint32Array((await readF32(gpu, pa)).buffer)), Array.from(new Uint32Array(imgA.pixelValues.buffer)));
        assert.deepEqual(Array.from(new Uint32Array((await readF32(gpu, pb)).buffer)), Array.from(new Uint32Array(imgB.pixelValues.buffer)));
        const cache = model.createCache(ids.length + 1);
        const r = await model.prefill(ids, { images: [{ grid: imgA.grid, pixelValues: pa }, { grid: imgB.grid, pixelValues: pb }] }, cache, { read: "logits" });
        cache.dispose();
        for (const b of [pa.buffer, pb.buffer]) gpu.pool.release(b);
        const got = r.logits!;
        let diff = 0;
        for (let i = 0; i < got.length; i++) if (!Object.is(got[i], promptLogits[i])) diff++;
        assert.equal(diff, 0, `${diff} logits differ from the host-pixel prefill`);
        t.diagnostic(`${got.length} logits identical with GPU-tensor pixel values`);
      });

      test("f16 KV cache: 32 greedy tokens equal the f32 cache's (both grown from 16 rows); logit NMSE per step", async (t) => {
        const count = GREEDY_TOKENS;
        // Prefill and decode steps reading the logits of every step; the caches start at 16 rows
        // and grow (prefill to the prompt, then by doubling) on the way.
        const run = async (kvDtype: "f16" | "f32"): Promise<{ tokens: number[]; logits: Float32Array[]; capacity: number }> => {
          const cache = model.createCache(ids.length + count + 1, { kvDtype, initialRows: 16 });
          try {
            const pre = await model.prefill(ids, { images: images() }, cache, { read: "both" });
            const tokens = [pre.tokenId!];
            const logits = [pre.logits!];
            while (tokens.length < count && !config.eosTokenIds.includes(tokens[tokens.length - 1])) {
              const step = await model.decode(tokens[tokens.length - 1], cache, { read: "both" });
              tokens.push(step.tokenId!);
              logits.push(step.logits!);
            }
            assert.equal(cache.kvDtype, kvDtype);
            return { tokens, logits, capacity: cache.capacity };
          } finally {
            cache.dispose();
          }
        };
        const a = await run("f32");
        const b = await run("f16");
        // The grown f32 cache is the exact path: the reference's tokens.
        assert.deepEqual(a.tokens, refGen.tokens.slice(0, count));
        assert.deepEqual(b.tokens, a.tokens);
        const errs = a.logits.map((l, i) => nmse(b.logits[i], l));
        const worst = Math.max(...errs);
        assert.ok(worst <= 1e-3, `f16-KV logits NMSE up to ${worst}`);
        t.diagnostic(
          `${b.tokens.length} tokens identical (prompt ${ids.length}); f16-KV vs f32-KV logit NMSE: prefill ${errs[0].toExponential(2)}, ` +
            `max over ${errs.length} steps ${worst.toExponential(2)}, mean ${(errs.reduce((x, y) => x + y, 0) / errs.length).toExponential(2)}; ` +
            `capacity 16 -> ${a.capacity} rows`,
        );
      });
    }

    if (shape === "tiny-b") {
      for (const fmt of ["q8", "q4"] as const) {
        test(`${fmt} load: exact vs a reference on the ${fmt}-rounded weights; NMSE and greedy agreement vs f32 (measured)`, async (t) => {
          const q = await loadQwen2VL(gpu, config, await dirSource(dir), { textLinear: fmt, vision: fmt, embedding: fmt });
          try {
            const count = QUANT_TOKENS;
            const run = await gpuGreedy(q, count, config.eosTokenIds);
            run.cache.dispose();
            // The kernels must compute exactly what the dequantized weights define.
            const refQ = greedyGenerate(roundedReference(dir, fmt), ids, allPixels(), [imgA.grid, imgB.grid], count, config.eosTokenIds);
            const eq = nmse(run.logits, refQ.firstLogits);
            assert.ok(eq <= 1e-6, `${fmt} logits vs the ${fmt}-rounded reference: NMSE ${eq}`);
            assert.deepEqual(run.tokens, refQ.tokens);
            // Against the f32 model: quantization error, a property of the weights. Loose bounds only.
            const e = nmse(run.logits, refGen.firstLogits);
            const n = Math.min(run.tokens.length, refGen.tokens.length);
            let same = 0;
            let prefix = -1;
            for (let i = 0; i < n; i++) {
              if (run.tokens[i] === refGen.tokens[i]) same++;
              else if (prefix < 0) prefix = i;
            }
            if (prefix < 0) prefix = n;
            assert.ok(e < (fmt === "q8" ? 1e-2 : 2e-1), `${fmt} logits NMSE vs f32 ${e}`);
            t.diagnostic(
              `${fmt}: vs ${fmt}-rounded reference NMSE=${eq.toExponential(2)}, ${run.tokens.length} tokens identical; ` +
                `vs f32 reference NMSE=${e.toExponential(2)}, greedy ${same}/${n} tokens equal (first ${prefix} identical); ` +
                `GPU weights ${(q.weights.gpuBytes / 1e6).toFixed(1)} MB`,
            );
          } finally {
            q.dispose();
          }
        });
      }

      test("default formats (q4 text, f16 vision + embedding): prompt logits NMSE (measured)", async (t) => {
        const q = await loadQwen2VL(gpu, config, await dirSource(dir));
        try {
          assert.deepEqual(q.weights.formats, { textLinear: "q4", vision: "f16", embedding: "f16" });
          const cache = q.createCache(ids.length);
          const pre = await q.prefill(ids, { images: images() }, cache, { read: "logits" });
          cache.dispose();
          const e = nmse(pre.logits!, refGen.firstLogits);
          assert.ok(e < 2e-1, `default-format logits NMSE ${e}`);
          t.diagnostic(`default formats: logits NMSE=${e.toExponential(2)}, argmax ${refArgmax(pre.logits!) === refGen.tokens[0] ? "equal" : "differs"}`);
        } finally {
          q.dispose();
        }
      });
    }

    if (shape === "tiny-a") {
      test("cache reuse: truncate inside image B, and after both images, then re-prefill = full prefill", async (t) => {
        // The greedy run's cache holds the prompt and the generated tokens; cut back into the prompt.
        const cache = greedyCache!;
        assert.ok(cache.length > ids.length);
        const firstB = ids.indexOf(config.imageTokenId, ids.lastIndexOf(config.visionStartTokenId) + 1);
        // Inside image B: its rows past the cut are copied from a fresh encode.
        cache.truncate(firstB + 3);
        const r1 = await model.prefill(ids, { images: images() }, cache, { read: "logits" });
        assert.equal(r1.reused, firstB + 3);
        // After both images: they are not needed, so grids alone are enough.
        cache.truncate(ids.length - 4);
        const r2 = await model.prefill(ids, { images: [{ grid: imgA.grid }, { grid: imgB.grid }] }, cache, { read: "logits" });
        assert.equal(cache.length, ids.length);
        const e1 = nmse(r1.logits!, promptLogits);
        const e2 = nmse(r2.logits!, promptLogits);
        assert.ok(e1 <= 1e-10 && e2 <= 1e-10, `re-prefill NMSE ${e1}, ${e2}`);
        t.diagnostic(`NMSE vs full prefill: cut inside image ${e1.toExponential(2)}, after images ${e2.toExponential(2)}`);
      });

      test("chunked prefill: images straddling chunk boundaries give the one-pass logits; an abort between chunks leaves the cache as it was", async (t) => {
        // A chunk boundary 3 rows into image A (6 pad tokens), so both images straddle some boundary.
        const firstA = ids.indexOf(config.imageTokenId);
        const chunk = firstA + 3;
        const countA = visionTokenCount([imgA.grid], 2);
        const firstB = ids.indexOf(config.imageTokenId, firstA + countA);
        const straddles = (first: number, n: number): boolean => Math.floor(first / chunk) !== Math.floor((first + n - 1) / chunk);
        assert.ok(straddles(firstA, countA), "image A straddles a chunk boundary");
        const chunks = Math.ceil(ids.length / chunk);
        assert.ok(chunks >= 3);
        setPrefillChunkTokens(chunk);
        try {
          const cache = model.createCache(ids.length + 1);
          const full = await countSubmits(() => model.prefill(ids, { images: images() }, cache, { read: "both" }));
          assert.equal(full.submits, chunks, "one submit per chunk");
          const e = nmse(full.value.logits!, promptLogits);
          const eRef = nmse(full.value.logits!, refGen.firstLogits);
          assert.ok(e <= 1e-10 && eRef <= 1e-6, `chunked logits NMSE vs one pass ${e}, vs reference ${eRef}`);
          assert.equal(full.value.tokenId, refGen.tokens[0]);
          assert.equal(full.value.ropeDelta, model.ropeIndex(ids, [imgA.grid, imgB.grid]).ropeDelta);

          // From a cached prefix inside image B: the rest of B is encoded once and copied across chunks.
          cache.truncate(firstB + 2);
          const part = await model.prefill(ids, { images: images() }, cache, { read: "logits" });
          assert.equal(part.reused, firstB + 2);
          assert.ok(nmse(part.logits!, promptLogits) <= 1e-10);

          // Abort fired during the first chunk's submit: the prefill stops before the second chunk.
          cache.truncate(firstA + 1);
          const ac = new AbortController();
          const queue = gpu.device.queue as GPUQueue & { submit: GPUQueue["submit"] };
          const original = queue.submit;
          let submits = 0;
          queue.submit = function (this: GPUQueue, buffers: Iterable<GPUCommandBuffer>) {
            if (++submits === 1) ac.abort();
            return original.call(this, buffers);
          };
          try {
            await assert.rejects(model.prefill(ids, { images: images() }, cache, { read: "logits", signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
          } finally {
            queue.submit = original;
          }
          assert.equal(submits, 1, "no chunk ran after the abort");
          assert.equal(cache.length, firstA + 1, "the cache is back at its length before the call");
          // An already aborted signal runs nothing; then the same cache prefills to the same logits.
          await assert.rejects(model.prefill(ids, { images: images() }, cache, { signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
          const again = await model.prefill(ids, { images: images() }, cache, { read: "logits" });
          assert.ok(nmse(again.logits!, promptLogits) <= 1e-10);
          cache.dispose();
          t.diagnostic(`L=${ids.length}, chunks of ${chunk} (${chunks} submits): NMSE vs one pass ${e.toExponential(2)}, vs reference ${eRef.toExponential(2)}`);
        } finally {
          setPrefillChunkTokens();
        }
      });

      test("newer checkpoint names (model.language_model.*, model.visual.*) load to the same model", async () => {
        const m2 = await loadQwen2VL(gpu, config, renamedSource(await dirSource(dir)), F32);
        try {
          const c2 = m2.createCache(ids.length);
          const b = await m2.prefill(ids, { images: images() }, c2, { read: "logits" });
          c2.dispose();
          assert.deepEqual(b.logits, promptLogits);
        } finally {
          m2.dispose();
        }
      });

      test("a video (4 frames, t = 2) before an image: positions and prompt logits equal the reference", async (t) => {
        const frames = [0, 1, 2, 3].map((f) => normalizeRgb8ToChw(noise(84, 56, 1000 + f), 84, 56));
        const video = patchify(frames, 56, 84);
        assert.deepEqual(video.grid, [2, 4, 6]);
        const messages = [{ role: "user", content: [
          { type: "text" as const, text: "Watch" },
          { type: "video" as const },
          { type: "image" as const },
          { type: "text" as const, text: "Same scene?" },
        ] }];
        const vids = buildChatPrompt(tok, tpl, messages, qwenPads([imgA.grid], [video.grid]), { addGenerationPrompt: true }).ids;
        const got = model.ropeIndex(vids, [imgA.grid], [video.grid]);
        const want = refRopeIndex(vids, [[...imgA.grid]], ref.config, [video.grid]);
        assert.deepEqual(Array.from(got.positions), want.positions.flat());
        assert.equal(got.ropeDelta, want.ropeDelta);
        const refRun = greedyGenerate(ref, vids, imgA.pixelValues, [[...imgA.grid]], 1, config.eosTokenIds, {
          videoPixelValues: video.pixelValues,
          videoGrids: [video.grid],
        });
        const cache = model.createCache(vids.length);
        const pre = await model.prefill(vids, {
          images: [{ grid: imgA.grid, pixelValues: imgA.pixelValues }],
          videos: [{ grid: video.grid, pixelValues: video.pixelValues }],
        }, cache, { read: "both" });
        cache.dispose();
        assert.equal(pre.ropeDelta, want.ropeDelta);
        const e = nmse(pre.logits!, refRun.firstLogits);
        assert.ok(e <= 1e-6, `video prompt logits NMSE ${e}`);
        assert.equal(pre.tokenId, refRun.tokens[0]);
        t.diagnostic(`L=${vids.length} ropeDelta=${got.ropeDelta} logits NMSE=${e.toExponential(2)}`);
      });

      test("a mismatched image pad count is a bad_request", async () => {
        const cache = model.createCache(ids.length + 1);
        const fewer = ids.filter((x, i) => !(x === config.imageTokenId && i === ids.indexOf(config.imageTokenId)));
        await assert.rejects(model.prefill(fewer, { images: images() }, cache), assertWebvlmError("bad_request", "image pad tokens"));
        const more = [...ids.slice(0, -1), config.imageTokenId, ids[ids.length - 1]];
        await assert.rejects(model.prefill(more, { images: images() }, cache), assertWebvlmError("bad_request", "image pad tokens"));
        await assert.rejects(model.prefill(ids, { images: [] }, cache), assertWebvlmError("bad_request", "image pad tokens"));
        assert.equal(cache.length, 0);
        cache.dispose();
      });
    }
  });
}

test("embedding / lm_head over the binding limit are split (streamed rows; shardWeight) and give the reference logits", async (t) => {
  // tiny-a: tied, the table streamed by rows (the loader source's readRows) and shared as lm_head;
  // tiny-b: untied, a source without readRows (whole read, then shardWeight).
  const limit = 4 << 20;
  for (const [shape, rows] of [["tiny-a", true], ["tiny-b", false]] as const) {
    const dir = join(root, shape);
    const config = await loadConfig(dir);
    const reads: string[] = [];
    const src = rows ? await loaderSource(dir, reads) : await dirSource(dir, reads);
    const m = await loadQwen2VL(gpu, config, src, { ...F32, maxBindingBytes: limit });
    try {
      const { embed, lmHead } = m.weights.text;
      assert.ok("shards" in embed && embed.shards.length === Math.ceil((config.text.vocabSize * config.text.hiddenSize * 4) / limit));
      assert.ok("shards" in lmHead && lmHead.shards.length > 1);
      assert.equal(lmHead === embed, config.text.tieWordEmbeddings);
      assert.equal(reads.includes("model.embed_tokens.weight"), !rows, "streamed table must not be read whole");
      const ref = loadReferenceModel(dir);
      const want = greedyGenerate(ref, ids, allPixels(), [imgA.grid, imgB.grid], 1, config.eosTokenIds).firstLogits;
      const cache = m.createCache(ids.length);
      const pre = await m.prefill(ids, { images: images() }, cache, { read: "both" });
      cache.dispose();
      const e = nmse(pre.logits!, want);
      assert.ok(e <= 1e-6, `${shape} sharded logits NMSE ${e}`);
      assert.equal(pre.tokenId, refArgmax(want));
      t.diagnostic(`${shape}: ${"shards" in embed ? embed.shards.length : 1} shards, logits NMSE=${e.toExponential(2)}`);
    } finally {
      m.dispose();
    }
  }
});

test("the name table covers exactly the checkpoint's tensors, with their shapes", async () => {
  for (const shape of ["tiny-a", "tiny-b"]) {
    const dir = join(root, shape);
    const ckpt = await openCheckpointDir(dir);
    checkpoints.push(ckpt);
    const table = qwen2VLTensorTable(await loadConfig(dir));
    assert.deepEqual(table.map((s) => s.name).sort(), ckpt.names().sort());
    for (const s of table) assert.ok([s.shape, s.alt].some((x) => x && x.join() === ckpt.info(s.name).shape.join()), s.name);
  }
});

test("a tensor missing from the checkpoint is named; a wrong shape is named", async () => {
  const src = join(root, "tiny-a");
  const dst = join(root, "tiny-a-missing");
  await mkdir(dst, { recursive: true });
  const ckpt = await openCheckpointDir(src);
  const gone = "model.layers.1.mlp.up_proj.weight";
  const tensors = [];
  for (const name of ckpt.names()) {
    if (name === gone) continue;
    tensors.push({ name, dtype: "F32" as const, shape: ckpt.info(name).shape, data: await ckpt.readF32(name) });
  }
  await ckpt.close();
  await writeSafetensorsFile(join(dst, "model.safetensors"), tensors);
  await writeFile(join(dst, "config.json"), await readFile(join(src, "config.json")));
  const config = await loadConfig(src);
  await assert.rejects(loadQwen2VL(gpu, config, await dirSource(dst)), assertWebvlmError("missing_tensor", gone));

  const base = await dirSource(src);
  const wrong = "visual.blocks.1.attn.qkv.bias";
  const bad: TensorSource = { ...base, shape: (n) => (n === wrong ? [7] : base.shape(n)) };
  await assert.rejects(loadQwen2VL(gpu, config, bad), assertWebvlmError("shape_mismatch", wrong));
});

test("registry: Qwen2-VL resolves, an unknown architecture is rejected", async () => {
  const cfg = await readJson(join(root, "tiny-a"), "config.json");
  assert.equal(resolveFamily(cfg).name, "qwen2_vl");
  assert.equal(resolveFamily({ model_type: "qwen2_vl" }).name, "qwen2_vl");
  assert.throws(() => resolveFamily({ architectures: ["GPT2LMHeadModel"], model_type: "gpt2" }), assertWebvlmError("unsupported_architecture", "GPT2LMHeadModel"));
  assert.throws(() => resolveFamily({ model_type: "qwen2_5_vl" }), assertWebvlmError("unsupported_architecture", "qwen2_5_vl"));
  assert.deepEqual(gpu.uncapturedErrors, []);
});
