// End-to-end benchmark at Qwen2-VL-2B-Instruct's exact shapes with random weights made on
// the GPU (bench/random_weights.ts; no files), in q4 (default formats) and f16:
// vision encode, prefill, decode at two contexts, time to first token for image + question,
// peak GPU memory, dispatches and submits per decoded token, per-kernel time shares, and
// roofline ratios against the adapter's measured copy bandwidth and FMA peak.
//
//   npm run bench                 full 2B shapes (a real GPU)
//   npm run bench -- --tiny       a small model of the same architecture (SwiftShader, minutes)
//   options: --formats q4,f16  --steps N (decode steps per context)  --out FILE
// Prints a table and writes bench/results/model[-tiny].json. (bench/model.ts dispatches here.)
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { acquireNodeGpu } from "../src/gpu/node.ts";
import { parseQwen2VLConfig } from "../src/models/qwen2_vl/config.ts";
import { Qwen2VLModel, type Qwen2VLCache } from "../src/models/qwen2_vl/model.ts";
import type { LinearWeight } from "../src/models/qwen2_vl/weights.ts";
import { tensorsOf } from "../src/models/common/weight_loader.ts";
import { type WeightFormats } from "../src/models/common/source.ts";
import { byteSize } from "../src/gpu/tensor.ts";
import { preprocessImage } from "../src/models/qwen2_vl/image_processor.ts";
import { uploadNormalizeTable } from "../src/ops/image_patches.ts";
import { benchPreprocess, cpuPatchRows, gpuPatchRows } from "./preprocess.ts";
import { QWEN2VL_2B_CONFIG, QWEN2VL_7B_CONFIG, TINY_CONFIG } from "./configs.ts";
import { cliArgs, isSoftwareAdapter, measureLimits, median, profileKernels, randomIds, randomRgb } from "./bench_common.ts";
import { randomQwen2VLWeights } from "./random_weights.ts";
import { printReport, type FormatResult, type Report } from "./report.ts";

/** The Qwen2-VL benchmark with `argv` (the options above). */
export async function runQwen2VLBench(argv: readonly string[], size: "qwen2-vl-2b" | "qwen2-vl-7b" = "qwen2-vl-2b"): Promise<void> {
  const { flag, option } = cliArgs(argv);

  const tiny = flag("--tiny");
  const plan = tiny
    ? { images: [[56, 56], [112, 84]] as [number, number][], prefill: 64, contexts: [32, 256], steps: 4, question: 20, repeats: 1 }
    : { images: [[448, 448], [1288, 966]] as [number, number][], prefill: 1024, contexts: [1, 6144, 14336, 30720], steps: 32, question: 20, repeats: 3 };
  // Overrides (e.g. a quick check of the full shapes on a slow adapter):
  //   --images 448x448,1288x966|none  --prefill N  --contexts 1,6144,14336,30720 (Qwen's table's input
  //   lengths)  --kv-cache f16|f32 (default f16)
  // CPU vs GPU preprocessing sizes: --preprocess-sizes 1280x960,...|none
  const preprocessSizes = (option("--preprocess-sizes") ?? "1280x960,4032x3024,3840x2160");
  const images = option("--images");
  if (images !== undefined) plan.images = images === "none" ? [] : images.split(",").map((s) => s.split("x").map(Number) as [number, number]);
  if (option("--prefill")) plan.prefill = Number(option("--prefill"));
  if (option("--contexts")) plan.contexts = option("--contexts")!.split(",").map(Number);
  const steps = Number(option("--steps") ?? plan.steps);
  const formats = (option("--formats") ?? "q4,f16").split(",") as ("q4" | "f16")[];
  const kvDtype = (option("--kv-cache") ?? "f16") as "f16" | "f32";
  if (kvDtype !== "f16" && kvDtype !== "f32") throw new Error("--kv-cache f16|f32");
  const out = option("--out") ?? new URL(`./results/model${tiny ? "-tiny" : size === "qwen2-vl-7b" ? "-7b" : ""}.json`, import.meta.url).pathname;

  const gpu = await acquireNodeGpu();
  const config = parseQwen2VLConfig(tiny ? TINY_CONFIG : size === "qwen2-vl-7b" ? QWEN2VL_7B_CONFIG : QWEN2VL_2B_CONFIG);
  const log = (s: string): void => console.error(s);
  log(`adapter: ${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description}; ${tiny ? "tiny model" : size === "qwen2-vl-7b" ? "Qwen2-VL-7B shapes" : "Qwen2-VL-2B shapes"}; ${kvDtype} KV cache`);

  // Probe sizes for a GPU; a software adapter (SwiftShader) gets the small ones even at full shapes.
  const { copyGBs, peakGFLOPS } = await measureLimits(gpu, tiny || isSoftwareAdapter(gpu));
  log(`copy ${copyGBs.toFixed(2)} GB/s, FMA peak ${peakGFLOPS.toFixed(1)} GFLOPS`);

  function weightBytes(ws: readonly LinearWeight[]): number {
    return tensorsOf(ws).reduce((n, t) => n + byteSize(t), 0);
  }

  /** Multiply-adds of the text decoder's linear layers for one token (lm_head counted separately). */
  function textLinearFlopsPerToken(): number {
    const t = config.text;
    const q = t.numHeads * t.headDim;
    const kv = t.numKvHeads * t.headDim;
    return 2 * t.numLayers * (t.hiddenSize * (q + 2 * kv) + q * t.hiddenSize + 3 * t.hiddenSize * t.intermediateSize);
  }

  /** Linear-layer FLOPs of the vision tower for `patches` patch rows. */
  function visionLinearFlops(patches: number): number {
    const v = config.vision;
    const e = v.embedDim;
    const patchDim = v.inChannels * v.temporalPatchSize * v.patchSize ** 2;
    const merged = e * v.spatialMergeSize ** 2;
    const perPatch = patchDim * e + v.depth * (3 * e * e + e * e + 2 * e * v.mlpHiddenDim);
    return 2 * (patches * perPatch + (patches / v.spatialMergeSize ** 2) * (merged * merged + merged * v.hiddenSize));
  }

  async function benchFormat(format: "q4" | "f16"): Promise<FormatResult> {
    const formatsUsed: WeightFormats = { textLinear: format, embedding: "f16", vision: "f16" };
    gpu.pool.peakBytes = gpu.pool.allocatedBytes;
    const t0 = performance.now();
    const weights = await randomQwen2VLWeights(gpu, config, formatsUsed);
    log(`[${format}] random weights: ${(weights.gpuBytes / 2 ** 30).toFixed(2)} GiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const model = Qwen2VLModel.fromWeights(gpu, config, weights);
    const t = config.text;
    const linearBytes = weightBytes(weights.text.layers.flatMap((l) => [l.qkv, l.o, l.gateUp, l.down]));
    const lmHeadBytes = weightBytes([weights.text.lmHead]);
    const normBytes = (2 * t.numLayers + 1) * t.hiddenSize * 4;
    const weightBytesPerToken = linearBytes + lmHeadBytes + normBytes;
    const maxCtx = Math.max(plan.prefill, ...plan.contexts) + steps + 8;
    const cache: Qwen2VLCache = model.createCache(maxCtx, { kvDtype });
    const result: FormatResult = {
      format, formats: formatsUsed, weightBytes: weights.gpuBytes, weightBytesPerToken,
      vision: [], prefill: { tokens: plan.prefill, ms: 0, tokensPerSec: 0, gflops: 0, ofPeak: 0 }, decode: [],
      ttft: { image: plan.images[0] ?? [0, 0], questionTokens: plan.question, promptTokens: 0, ms: 0, msGpuPreprocess: 0 },
      peakBytes: 0, profiles: { decode: null, prefill: null, vision: null },
    };
    try {
      // Vision encode, one image at a time (pixels preprocessed beforehand, not timed).
      for (const [w, h] of plan.images) {
        const img = preprocessImage(randomRgb(w, h, 7), w, h);
        const patches = img.grid[0] * img.grid[1] * img.grid[2];
        const ms = await median(plan.repeats, async () => {
          const emb = model.encodeVision(img.pixelValues, [img.grid]);
          await gpu.device.queue.onSubmittedWorkDone();
          gpu.pool.release(emb.buffer);
        });
        const gflops = visionLinearFlops(patches) / (ms * 1e6);
        result.vision.push({ width: w, height: h, resized: [img.resizedWidth, img.resizedHeight], llmTokens: patches / 4, ms, gflops, ofPeak: gflops / peakGFLOPS });
        log(`[${format}] vision ${w}x${h}: ${ms.toFixed(1)} ms`);
      }

      // Prefill of a text prompt (the logits of its last position read back).
      const ids = randomIds(plan.prefill, 11);
      const prefillMs = await median(plan.repeats, async () => {
        cache.truncate(0);
        await model.prefill(ids, {}, cache);
      });
      const prefillFlops = plan.prefill * textLinearFlopsPerToken() + 2 * t.vocabSize * t.hiddenSize;
      result.prefill = {
        tokens: plan.prefill, ms: prefillMs, tokensPerSec: (plan.prefill * 1000) / prefillMs,
        gflops: prefillFlops / (prefillMs * 1e6), ofPeak: prefillFlops / (prefillMs * 1e6) / peakGFLOPS,
      };
      log(`[${format}] prefill ${plan.prefill}: ${prefillMs.toFixed(1)} ms`);

      // Decode at each context: the cache is set to that length (contents do not change timing).
      // Peak GPU memory per context: weights, the cache grown to that length, a decode step's buffers.
      for (const ctx of plan.contexts) {
        cache.truncate(0);
        await model.prefill(randomIds(8, 3), {}, cache);
        cache.ensure(ctx + steps + 1);
        for (const l of cache.layers) l.length = ctx;
        gpu.pool.trim();
        gpu.pool.peakBytes = gpu.pool.allocatedBytes;
        let id = 1000;
        await model.decode(id, cache); // warm-up at this context
        const before = { ...gpu.stats };
        const stepMs: number[] = [];
        for (let i = 0; i < steps; i++) {
          const s0 = performance.now();
          id = (await model.decode(id, cache)).tokenId ?? 1000;
          stepMs.push(performance.now() - s0);
        }
        const meanMs = stepMs.reduce((a, b) => a + b, 0) / steps;
        const kvRowBytes = (cache.memory().allocatedBytes / cache.layers[0].capacity) / t.numLayers / 2;
        const kvBytes = 2 * t.numLayers * (ctx + steps / 2) * kvRowBytes;
        const rooflineTokS = (copyGBs * 1e9) / (weightBytesPerToken + kvBytes);
        result.decode.push({
          context: ctx, steps, msPerToken: meanMs, tokensPerSec: 1000 / meanMs,
          bytesPerToken: weightBytesPerToken + kvBytes, rooflineTokensPerSec: rooflineTokS, ofRoofline: 1000 / meanMs / rooflineTokS,
          dispatchesPerToken: (gpu.stats.dispatches - before.dispatches) / steps, submitsPerToken: (gpu.stats.submits - before.submits) / steps,
          peakBytes: gpu.pool.peakBytes, kvAllocatedBytes: cache.memory().allocatedBytes,
        });
        log(`[${format}] decode at ${ctx}: ${meanMs.toFixed(1)} ms/token`);
      }

      // Time to first token: raw image pixels + question -> first sampled id (tokenization excluded).
      // Skipped with --images none (ttft.ms stays 0).
      // Once with each preprocessing path (CPU rows uploaded, or GPU rows used in place).
      const [iw, ih] = plan.images[0] ?? [0, 0];
      const rgb = randomRgb(iw, ih, 5);
      let promptTokens = 0;
      const table = uploadNormalizeTable(gpu, {});
      const ttftWith = (onGpu: boolean) => plan.images.length === 0 ? Promise.resolve(0) : median(plan.repeats, async () => {
        cache.truncate(0);
        const img = onGpu ? gpuPatchRows(gpu, table, rgb, iw, ih) : cpuPatchRows(gpu, rgb, iw, ih);
        const pads = (img.grid[0] * img.grid[1] * img.grid[2]) / 4;
        const prompt = [151644, 872, 198, config.visionStartTokenId, ...new Array<number>(pads).fill(config.imageTokenId), config.visionEndTokenId,
          ...randomIds(plan.question, 9), 151645, 198, 151644, 77091, 198];
        promptTokens = prompt.length;
        await model.prefill(prompt, { images: [{ grid: img.grid, pixelValues: img.rows }] }, cache);
        gpu.pool.release(img.rows.buffer);
      });
      const ttftMs = await ttftWith(false);
      const ttftGpuMs = await ttftWith(true);
      gpu.pool.release(table.buffer);
      result.ttft = { image: [iw, ih], questionTokens: plan.question, promptTokens, ms: ttftMs, msGpuPreprocess: ttftGpuMs };
      log(`[${format}] time to first token: ${ttftMs.toFixed(1)} ms (CPU preprocessing), ${ttftGpuMs.toFixed(1)} ms (GPU preprocessing)`);

      // Per-kernel time shares of one decode step (first context) and one prefill.
      cache.truncate(0);
      await model.prefill(randomIds(8, 3), {}, cache);
      for (const l of cache.layers) l.length = plan.contexts[0];
      result.profiles.decode = await profileKernels(gpu, async () => void (await model.decode(1000, cache)));
      cache.truncate(0);
      result.profiles.prefill = await profileKernels(gpu, async () => void (await model.prefill(ids, {}, cache)));
      if (plan.images.length > 0) {
        const [vw, vh] = plan.images[0];
        const img0 = preprocessImage(randomRgb(vw, vh, 7), vw, vh);
        result.profiles.vision = await profileKernels(gpu, async () => {
          const emb = model.encodeVision(img0.pixelValues, [img0.grid]);
          await gpu.device.queue.onSubmittedWorkDone();
          gpu.pool.release(emb.buffer);
        });
      }
      result.peakBytes = gpu.pool.peakBytes;
    } finally {
      cache.dispose();
      model.dispose();
      gpu.pool.trim();
    }
    return result;
  }

  const sizes = preprocessSizes === "none" ? [] : preprocessSizes.split(",").map((x) => x.split("x").map(Number) as [number, number]);
  const preprocess = await benchPreprocess(gpu, sizes, plan.repeats, log);
  const results: FormatResult[] = [];
  for (const f of formats) results.push(await benchFormat(f));
  const report: Report = {
    date: new Date().toISOString(),
    mode: tiny ? "tiny" : size,
    kvCache: kvDtype,
    command: `npm run bench -- ${argv.join(" ")}`.trim(),
    adapter: gpu.adapter,
    limits: { copyGBs, peakGFLOPS },
    config: tiny ? TINY_CONFIG : size === "qwen2-vl-7b" ? QWEN2VL_7B_CONFIG : QWEN2VL_2B_CONFIG,
    preprocess,
    results,
  };
  printReport(report);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(report, null, 2));
  console.log(`\nwrote ${out}`);
  if (gpu.uncapturedErrors.length) {
    console.error(`GPU errors: ${gpu.uncapturedErrors.join("\n")}`);
    process.exitCode = 1;
  }
  gpu.destroy();
}
