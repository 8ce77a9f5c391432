// Llama 3.2 Vision at meta-llama/Llama-3.2-11B-Vision-Instruct's exact shapes with random weights
// made on the GPU (bench/random_weights.ts' maker; no files): text linears q4 (cross-attention layers
// included), embed_tokens / lm_head f16, vision tower, embedding tables and projector f16 (the
// loader's defaults). Reports weight bytes, the adapter's limits, GPU memory after the build and at
// peak over one image question (all 4 tiles through the tower, cross K/V of the 8 cross layers, a
// prefill, decode steps), and the times of each part.
//
//   npm run bench -- --model llama-3.2-11b-vision            11B shapes (a real GPU)
//   npm run bench -- --model llama-3.2-11b-vision --tiny     tiny-a's shapes (SwiftShader, seconds)
//   options: --build-only  --steps N  --prompt N  --text-linear q4|q8|f16  --out FILE
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { acquireNodeGpu } from "../src/gpu/node.ts";
import { byteSize } from "../src/gpu/tensor.ts";
import type { LinearWeight, WeightFormats } from "../src/models/common/source.ts";
import { tensorsOf } from "../src/models/common/weight_loader.ts";
import { parseMllamaConfig } from "../src/models/mllama/config.ts";
import { MllamaModel, type MllamaImageItem } from "../src/models/mllama/model.ts";
import { buildMllamaWeights, releaseMllamaWeights, type MllamaWeights } from "../src/models/mllama/weights.ts";
import type { WeightFormat } from "../src/quant/formats.ts";
import { tinyMllamaConfig } from "../scripts/make_tiny_mllama.ts";
import { RandomWeightMaker } from "./random_weights.ts";

/** config.json of Llama-3.2-11B-Vision-Instruct (MLLAMA.md §1). */
const LLAMA32_11B_VISION_CONFIG = {
  architectures: ["MllamaForConditionalGeneration"],
  model_type: "mllama",
  image_token_index: 128256,
  text_config: {
    vocab_size: 128256, hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 40,
    cross_attention_layers: [3, 8, 13, 18, 23, 28, 33, 38], num_attention_heads: 32, num_key_value_heads: 8,
    rms_norm_eps: 1e-5, rope_theta: 500000.0, max_position_embeddings: 131072, hidden_act: "silu", tie_word_embeddings: false,
    rope_scaling: { rope_type: "llama3", factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 },
    bos_token_id: 128000, eos_token_id: [128001, 128008, 128009], pad_token_id: 128004,
  },
  vision_config: {
    hidden_size: 1280, attention_heads: 16, intermediate_size: 5120, hidden_act: "gelu", num_hidden_layers: 32, num_global_layers: 8,
    intermediate_layers_indices: [3, 7, 15, 23, 30], vision_output_dim: 7680, image_size: 560, patch_size: 14, num_channels: 3,
    norm_eps: 1e-5, max_num_tiles: 4,
    supported_aspect_ratios: [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
  },
};

function bytesOf(items: readonly LinearWeight[]): number {
  return tensorsOf(items).reduce((a, t) => a + byteSize(t), 0);
}

/** Weight bytes by part. */
function weightCensus(w: MllamaWeights): Record<string, number> {
  const t = w.text;
  const self = t.layers.flatMap((l) => [l.qkv, l.o, l.gateUp, l.down]);
  const cross = t.crossLayers.flatMap((l) => [l.q, l.k, l.v, l.o, l.gateUp, l.down]);
  const v = w.vision;
  const blocks = [...v.local, ...v.global].flatMap((b) => [b.qkv, b.proj, b.fc1, b.fc2]);
  const tables = [v.patch, v.positionEmbedding, v.tileEmbedding, v.preTileEmbedding, v.postTileEmbedding];
  return {
    selfAttentionLayers: bytesOf(self),
    crossAttentionLayers: bytesOf(cross),
    embedTokens: bytesOf([t.embed]),
    lmHead: bytesOf([t.lmHead]),
    visionBlocks: bytesOf(blocks),
    visionTables: bytesOf(tables),
    projector: bytesOf(v.projector),
  };
}

export async function runMllamaBench(argv: readonly string[]): Promise<void> {
  const option = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const tiny = argv.includes("--tiny");
  const buildOnly = argv.includes("--build-only");
  const steps = Number(option("--steps") ?? 16);
  const promptLength = Number(option("--prompt") ?? 64);
  const textLinear = (option("--text-linear") ?? "q4") as WeightFormat;
  const out = option("--out") ?? `bench/results/mllama-${tiny ? "tiny" : "11b"}${buildOnly ? "-build" : ""}.json`;
  const log = (s: string): void => console.error(s);
  const gb = (n: number): string => `${(n / 2 ** 30).toFixed(3)} GiB`;

  const gpu = await acquireNodeGpu();
  const config = parseMllamaConfig(tiny ? tinyMllamaConfig("tiny-a") : LLAMA32_11B_VISION_CONFIG);
  const limits = { maxBufferSize: gpu.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.limits.maxStorageBufferBindingSize };
  log(`adapter: ${gpu.adapter.vendor} ${gpu.adapter.description}; ${tiny ? "tiny-a" : "Llama-3.2-11B-Vision"} shapes; ${JSON.stringify(limits)}`);

  const formats: WeightFormats = { textLinear, embedding: "f16", vision: "f16" };
  gpu.pool.peakBytes = gpu.pool.allocatedBytes;
  const t0 = performance.now();
  const maker = new RandomWeightMaker(gpu);
  const weights = await buildMllamaWeights(gpu, config, maker, formats);
  maker.finish();
  await gpu.device.queue.onSubmittedWorkDone();
  const buildMs = performance.now() - t0;
  const census = weightCensus(weights);
  const weightBytes = Object.values(census).reduce((a, b) => a + b, 0);
  const afterBuild = gpu.pool.allocatedBytes;
  log(`random weights: ${gb(weightBytes)} (${Object.entries(census).map(([k, b]) => `${k} ${gb(b)}`).join(", ")}) in ${(buildMs / 1000).toFixed(1)} s; GPU memory ${gb(afterBuild)}`);

  const report: Record<string, unknown> = { shape: tiny ? "tiny-a" : "11b", formats, limits, weightBytes, census, gpuBytesAfterBuild: afterBuild };
  if (buildOnly) {
    releaseMllamaWeights(gpu, weights);
  } else {
    const model = MllamaModel.fromWeights(gpu, config, weights);
    const v = config.vision;
    const image: MllamaImageItem = {
      pixelValues: Float32Array.from({ length: v.maxNumTiles * v.numChannels * v.tileSize * v.tileSize }, (_, i) => Math.sin(i * 0.37)),
      aspectRatioId: 6 <= v.aspectRatios.length ? 6 : 1,
      numTiles: 6 <= v.aspectRatios.length ? 4 : 1,
      hash: "bench",
    };
    const ids = [config.bosTokenId ?? 128000, config.imageTokenId, ...Array.from({ length: promptLength - 2 }, (_, i) => 1000 + ((i * 7919) % 30000))];
    const cache = model.createCache(ids.length + steps + 1);
    try {
      const p0 = performance.now();
      const r = await model.prefill(ids, [image], cache);
      const ttftMs = performance.now() - p0;
      const afterPrefill = gpu.pool.allocatedBytes;
      // The same prompt again with the image set cached: the prefill alone.
      cache.truncate(0);
      const q0 = performance.now();
      await model.prefill(ids, [image], cache);
      const prefillMs = performance.now() - q0;
      let id = r.tokenId ?? 1000;
      const d0 = performance.now();
      for (let i = 0; i < steps; i++) id = (await model.decode(id, cache)).tokenId ?? 1000;
      const msPerToken = (performance.now() - d0) / steps;
      Object.assign(report, { promptTokens: ids.length, ttftMs, visionAndCrossKvMs: ttftMs - prefillMs, prefillMs, msPerToken, gpuBytesAfterPrefill: afterPrefill, peakGpuBytes: gpu.pool.peakBytes });
      log(`first token ${ttftMs.toFixed(0)} ms (vision + cross K/V ${(ttftMs - prefillMs).toFixed(0)} ms, prefill of ${ids.length} tokens ${prefillMs.toFixed(0)} ms); decode ${msPerToken.toFixed(1)} ms/token`);
    } finally {
      cache.dispose();
      model.dispose();
    }
  }
  report.peakGpuBytes = gpu.pool.peakBytes;
  log(`peak GPU memory ${gb(gpu.pool.peakBytes)}`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(report, null, 2));
  gpu.destroy();
}
