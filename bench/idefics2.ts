// End-to-end benchmark at HuggingFaceM4/idefics2-8b's exact shapes with random weights made on the
// GPU (bench/random_weights.ts; no files): text linears q4, embed_tokens / lm_head f16, vision tower
// and connector f16 (the loader's defaults). Reports weight bytes per part, the adapter's buffer /
// binding limits and the matrices split into row shards past them, GPU memory after the build and
// at peak; then, per image question (one 980x980 crop; a 1960x1960 image split by the real
// preprocessor into 4 crops + the full image, 980x980 each, the most patches one image gives):
// CPU preprocessing, vision tower + connector, prefill of the prompt's length, time to first
// token, and decode after the image prompt.
//
//   npm run bench -- --model idefics2-8b                 full 8B shapes (a real GPU)
//   npm run bench -- --model idefics2-8b --tiny          a tiny model of the same architecture (SwiftShader, seconds)
//   npm run bench -- --model idefics2-8b --build-only    the full-shape weights alone: bytes, memory, shards
//   options: --images 980x980,1960x1960:split|none  --steps N  --repeats N  --text-linear q4|q8|f16
//            --max-binding-bytes N (build as an adapter with that binding limit would: more shards)  --out FILE
// Prints a table and writes bench/results/idefics2-{8b,tiny}[-build].json.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { acquireNodeGpu } from "../src/gpu/node.ts";
import type { WeightFormats } from "../src/models/common/source.ts";
import { parseIdefics2Config, type Idefics2Config } from "../src/models/idefics2/config.ts";
import { parseIdefics2Preprocess, processIdefics2Image, type Idefics2PreprocessOptions } from "../src/models/idefics2/image_processor.ts";
import { Idefics2Model, type Idefics2Cache, type Idefics2ImageItem } from "../src/models/idefics2/model.ts";
import { idefics2CropPatches, type Idefics2CropPatches } from "../src/models/idefics2/patches.ts";
import { releaseIdefics2Weights } from "../src/models/idefics2/weights.ts";
import type { WeightFormat } from "../src/quant/formats.ts";
import { maxWeightBytes } from "../src/quant/pack.ts";
import { cliArgs, isSoftwareAdapter, measureLimits, median, profileKernels, randomIds, randomRgb } from "./bench_common.ts";
import {
  IDEFICS2_8B_CONFIG, IDEFICS2_8B_PREPROCESSOR, IDEFICS2_8B_PROCESSOR, TINY_IDEFICS2_CONFIG, TINY_IDEFICS2_PREPROCESSOR, TINY_IDEFICS2_PROCESSOR,
} from "./configs.ts";
import { idefics2WeightBytes, shardCensus } from "./idefics2_census.ts";
import { printIdefics2Report, type Idefics2ImageRun, type Idefics2Report } from "./idefics2_report.ts";
import { randomIdefics2Weights } from "./random_weights.ts";

/** Idefics2's added tokens (IDEFICS2.md §4): <fake_token_around_image>, <end_of_utterance>; BOS. */
const FAKE_TOKEN = 32000;
const END_OF_UTTERANCE = 32002;
const BOS = 1;

interface ImageCase {
  width: number;
  height: number;
  split: boolean;
}

function parseImages(s: string): ImageCase[] {
  if (s === "none") return [];
  return s.split(",").map((part) => {
    const [size, how] = part.split(":");
    const [width, height] = size.split("x").map(Number);
    if (!(width > 0 && height > 0) || (how !== undefined && how !== "split")) throw new Error(`--images: bad entry ${part} (WxH or WxH:split)`);
    return { width, height, split: how === "split" };
  });
}

/**
 * The chat prompt of one image question as the processor expands it: BOS "User:" F (<image> x L F)
 * per crop, the question, <end_of_utterance> "\nAssistant:" (words as ordinary ids; the values do
 * not change timing).
 */
function imagePrompt(crops: number, latents: number, imageTokenId: number, questionTokens: number): number[] {
  const image = [FAKE_TOKEN];
  for (let c = 0; c < crops; c++) image.push(...new Array<number>(latents).fill(imageTokenId), FAKE_TOKEN);
  return [BOS, ...randomIds(2, 3, 1000, 30000), ...image, ...randomIds(questionTokens, 9, 1000, 30000), END_OF_UTTERANCE, ...randomIds(3, 5, 1000, 30000)];
}

/** Multiply-adds x 2 of the vision tower's and connector's linear layers over `crops` (attention not counted). */
function visionLinearFlops(config: Idefics2Config, patchesPerCrop: readonly number[]): number {
  const v = config.vision;
  const D = v.hiddenSize;
  const H = config.text.hiddenSize;
  const I = config.text.intermediateSize;
  const p = config.perceiver;
  const L = p.numLatents;
  const q = p.numHeads * p.headDim;
  const kv = p.numKvHeads * p.headDim;
  let macs = 0;
  for (const n of patchesPerCrop) {
    macs += n * (v.numChannels * v.patchSize ** 2 * D + v.numLayers * (4 * D * D + 2 * D * v.intermediateSize));
    macs += n * (2 * I * D + H * I);
    macs += p.depth * (L * H * q + (n + L) * H * 2 * kv + L * q * H + L * 3 * 4 * H * H);
  }
  return 2 * macs;
}

/** The Idefics2 benchmark with `argv` (the options above). */
export async function runIdefics2Bench(argv: readonly string[]): Promise<void> {
  const { flag, option } = cliArgs(argv);
  const tiny = flag("--tiny");
  const buildOnly = flag("--build-only");
  const plan = tiny
    ? { images: parseImages("56x56,112x112:split"), steps: 4, repeats: 1, question: 12 }
    // One timed run after a warm-up: the split image is ~25 TFLOP of vision per encode (seconds even on a big GPU).
    : { images: parseImages("980x980,1960x1960:split"), steps: 16, repeats: 1, question: 20 };
  if (option("--images")) plan.images = parseImages(option("--images")!);
  if (option("--steps")) plan.steps = Number(option("--steps"));
  if (option("--repeats")) plan.repeats = Number(option("--repeats"));
  const textLinear = (option("--text-linear") ?? "q4") as WeightFormat;
  const name = `idefics2-${tiny ? "tiny" : "8b"}${buildOnly ? "-build" : ""}`;
  const out = option("--out") ?? new URL(`./results/${name}.json`, import.meta.url).pathname;
  const log = (s: string): void => console.error(s);

  const gpu = await acquireNodeGpu();
  const configJson = tiny ? TINY_IDEFICS2_CONFIG : IDEFICS2_8B_CONFIG;
  const config = parseIdefics2Config(configJson);
  const preprocess: Idefics2PreprocessOptions = tiny
    ? parseIdefics2Preprocess(TINY_IDEFICS2_PREPROCESSOR, TINY_IDEFICS2_PROCESSOR)
    : parseIdefics2Preprocess(IDEFICS2_8B_PREPROCESSOR, IDEFICS2_8B_PROCESSOR);
  if (preprocess.imageSeqLen !== config.perceiver.numLatents) throw new Error("image_seq_len must equal resampler_n_latents");
  const adapterLimits = { maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize };
  const maxBindingBytes = option("--max-binding-bytes") ? Number(option("--max-binding-bytes")) : maxWeightBytes(gpu);
  log(`adapter: ${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description}; ${tiny ? "tiny Idefics2" : "idefics2-8b shapes"}; ` +
    `maxBufferSize ${adapterLimits.maxBufferSize}, maxStorageBufferBindingSize ${adapterLimits.maxStorageBufferBindingSize}, weights split past ${maxBindingBytes} bytes`);
  const measured = buildOnly ? null : await measureLimits(gpu, tiny || isSoftwareAdapter(gpu));
  if (measured) log(`copy ${measured.copyGBs.toFixed(2)} GB/s, FMA peak ${measured.peakGFLOPS.toFixed(1)} GFLOPS`);

  const formats: WeightFormats = { textLinear, embedding: "f16", vision: "f16" };
  gpu.pool.peakBytes = gpu.pool.allocatedBytes;
  const t0 = performance.now();
  const weights = await randomIdefics2Weights(gpu, config, formats, maxBindingBytes);
  const buildMs = performance.now() - t0;
  const gpuBytesAfterBuild = gpu.pool.allocatedBytes;
  const weightBytes = idefics2WeightBytes(weights);
  const shards = shardCensus(weights, maxBindingBytes);
  log(`random weights: ${(weightBytes.total / 2 ** 30).toFixed(2)} GiB in ${(buildMs / 1000).toFixed(1)} s; ${shards.shardedMatrices} matrices in ${shards.shards} shards`);
  const t = config.text;
  // A decode step reads every decoder linear, the lm_head (untied: half the embedding part, same shape and format) and the norms.
  const lmHeadBytes = t.tieWordEmbeddings ? weightBytes.embedding : weightBytes.embedding / 2;
  const weightBytesPerToken = weightBytes.textLinear + lmHeadBytes + (2 * t.numLayers + 1) * t.hiddenSize * 4;

  const images: Idefics2ImageRun[] = [];
  let decodeProfile: Idefics2Report["decodeProfile"] = null;
  if (buildOnly) {
    releaseIdefics2Weights(gpu, weights);
  } else {
    const model = Idefics2Model.fromWeights(gpu, config, weights);
    // The vision path's activations take the same (possibly lowered) binding limit as the weights.
    model.visionBindingBytes = maxBindingBytes;
    const L = config.perceiver.numLatents;
    const v = config.vision;
    const cases = plan.images.map((c, k) => {
      const rgb = randomRgb(c.width, c.height, 7 + k);
      const opts = { ...preprocess, doImageSplitting: c.split };
      const prepare = (): Idefics2CropPatches[] =>
        processIdefics2Image({ rgb, width: c.width, height: c.height }, opts).map((s) => idefics2CropPatches(s, v.patchSize, v.imageSize));
      const crops = prepare();
      return { ...c, prepare, crops, prompt: imagePrompt(crops.length, L, config.imageTokenId, plan.question) };
    });
    const maxPrompt = Math.max(16, ...cases.map((c) => c.prompt.length));
    const cache: Idefics2Cache = model.createCache(maxPrompt + plan.steps + 8);
    try {
      for (const c of cases) {
        const item: Idefics2ImageItem = { crops: c.crops };
        const label = `${c.width}x${c.height}${c.split ? " split" : ""}`;
        const preprocessMs = await median(plan.repeats, async () => void c.prepare());
        const submits0 = gpu.stats.submits;
        const encode = async (): Promise<void> => {
          const features = await model.encodeImages([item]);
          await gpu.device.queue.onSubmittedWorkDone();
          gpu.pool.release(features.buffer);
        };
        await encode();
        const visionSubmits = gpu.stats.submits - submits0;
        const visionMs = await median(plan.repeats, encode);
        const patches = c.crops.map((k) => k.patchesH * k.patchesW);
        const visionGflops = visionLinearFlops(config, patches) / (visionMs * 1e6);
        log(`[${label}] vision ${visionMs.toFixed(1)} ms (${c.crops.length} crops, ${patches.reduce((a, b) => a + b, 0)} patches)`);

        // Decoder prefill of the prompt's length, text ids only (the image rows' cost is in visionMs).
        const textIds = [BOS, ...randomIds(c.prompt.length - 1, 13, 1000, 30000)];
        const prefillMs = await median(plan.repeats, async () => {
          cache.truncate(0);
          await model.prefill(textIds, [], cache);
        });
        log(`[${label}] prefill ${c.prompt.length} tokens: ${prefillMs.toFixed(1)} ms`);

        // Time to first token: raw pixels + prompt ids -> first sampled id.
        let first = 1000;
        const ttftMs = await median(plan.repeats, async () => {
          cache.truncate(0);
          first = (await model.prefill(c.prompt, [{ crops: c.prepare() }], cache)).tokenId ?? 1000;
        });
        log(`[${label}] time to first token ${ttftMs.toFixed(1)} ms`);

        // Decode after the image prompt (the cache holds it from the last TTFT run).
        let id = (await model.decode(first, cache)).tokenId ?? 1000; // warm-up
        const context = cache.length;
        const before = { ...gpu.stats };
        const d0 = performance.now();
        for (let i = 0; i < plan.steps; i++) id = (await model.decode(id, cache)).tokenId ?? 1000;
        const msPerToken = (performance.now() - d0) / plan.steps;
        const kvBytes = 2 * t.numLayers * (context + plan.steps / 2) * t.numKvHeads * t.headDim * 4;
        const bytesPerToken = weightBytesPerToken + kvBytes;
        const rooflineTokensPerSec = (measured!.copyGBs * 1e9) / bytesPerToken;
        log(`[${label}] decode at ${context}: ${msPerToken.toFixed(1)} ms/token`);
        images.push({
          image: [c.width, c.height], split: c.split, crops: c.crops.map((k) => [k.width, k.height]), patches: patches.reduce((a, b) => a + b, 0),
          imageTokens: model.imageTokens(item), promptTokens: c.prompt.length, preprocessMs, visionMs, visionSubmits,
          visionGflops, visionOfPeak: visionGflops / measured!.peakGFLOPS,
          prefillMs, prefillTokensPerSec: (c.prompt.length * 1000) / prefillMs, ttftMs,
          decode: {
            context, steps: plan.steps, msPerToken, tokensPerSec: 1000 / msPerToken, bytesPerToken, rooflineTokensPerSec,
            ofRoofline: 1000 / msPerToken / rooflineTokensPerSec,
            dispatchesPerToken: (gpu.stats.dispatches - before.dispatches) / plan.steps, submitsPerToken: (gpu.stats.submits - before.submits) / plan.steps,
          },
        });
      }
      if (cases.length > 0) decodeProfile = await profileKernels(gpu, async () => void (await model.decode(1000, cache)));
    } finally {
      cache.dispose();
      model.dispose();
    }
  }
  const report: Idefics2Report = {
    date: new Date().toISOString(),
    mode: tiny ? "idefics2-tiny" : "idefics2-8b",
    run: buildOnly ? "build-only" : "forward",
    command: `npm run bench -- --model idefics2-8b ${argv.join(" ")}`.trim(),
    adapter: gpu.adapter,
    adapterLimits,
    measured,
    config: configJson,
    formats,
    weightBytes,
    weightBytesPerToken,
    buildMs,
    shards,
    gpuBytesAfterBuild,
    peakBytes: gpu.pool.peakBytes,
    images,
    decodeProfile,
  };
  gpu.pool.trim();
  printIdefics2Report(report);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(report, null, 2));
  console.log(`\nwrote ${out}`);
  if (gpu.uncapturedErrors.length) {
    console.error(`GPU errors: ${gpu.uncapturedErrors.join("\n")}`);
    process.exitCode = 1;
  }
  gpu.destroy();
}
