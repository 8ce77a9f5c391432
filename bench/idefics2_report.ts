// The Idefics2 benchmark's result shape (written as JSON) and its terminal table.
import type { AdapterReport } from "../src/gpu/device.ts";
import type { KernelTime } from "../src/gpu/profiler.ts";
import type { WeightFormats } from "../src/models/common/source.ts";
import type { Idefics2WeightPart, ShardCensus } from "./idefics2_census.ts";

/** One image question: preprocessing, vision, prefill of the image prompt, decode after it. */
export interface Idefics2ImageRun {
  /** Input image size and whether it was split into 4 crops + the full image. */
  image: [number, number];
  split: boolean;
  /** Processed (resized) size of each crop, and valid patches over all crops. */
  crops: [number, number][];
  patches: number;
  /** <image> rows (crops x latents) and the whole prompt's tokens. */
  imageTokens: number;
  promptTokens: number;
  /** CPU preprocessing (resize, normalize, patch rows, position ids). */
  preprocessMs: number;
  /** Vision tower + connector for all crops (encodeImages, waited for). */
  visionMs: number;
  visionSubmits: number;
  /** Linear-layer FLOPs per second of the vision tower + connector; ofPeak: / FMA peak. */
  visionGflops: number;
  visionOfPeak: number;
  /** Decoder prefill of promptTokens text tokens (same length as the image prompt, no vision). */
  prefillMs: number;
  prefillTokensPerSec: number;
  /** Raw pixels + prompt ids -> first sampled id: preprocessing, vision, prefill, argmax read. */
  ttftMs: number;
  decode: {
    context: number;
    steps: number;
    msPerToken: number;
    tokensPerSec: number;
    /** Weights plus KV rows read per token. */
    bytesPerToken: number;
    rooflineTokensPerSec: number;
    ofRoofline: number;
    dispatchesPerToken: number;
    submitsPerToken: number;
  };
}

export interface Idefics2Report {
  date: string;
  mode: "idefics2-8b" | "idefics2-tiny";
  /** "forward": images, prefill, decode; "build-only": the weights alone. */
  run: "forward" | "build-only";
  command: string;
  adapter: AdapterReport;
  /** The adapter's limits that bound one buffer / one storage binding. */
  adapterLimits: { maxBufferSize: number; maxStorageBufferBindingSize: number };
  /** Measured copy bandwidth and FMA peak (null in build-only runs). */
  measured: { copyGBs: number; peakGFLOPS: number } | null;
  config: unknown;
  formats: WeightFormats;
  /** Weight bytes per part and in all (tensor bytes). */
  weightBytes: Record<Idefics2WeightPart | "total", number>;
  /** Weight bytes one decode step reads: decoder linears, lm_head, norms. */
  weightBytesPerToken: number;
  buildMs: number;
  shards: ShardCensus;
  /** Pool bytes (rounded buffer sizes): right after the build, and the peak over the whole run. */
  gpuBytesAfterBuild: number;
  peakBytes: number;
  images: Idefics2ImageRun[];
  /** Timestamp-query time per kernel: one decode step; null without timestamp-query or in build-only runs. */
  decodeProfile: KernelTime[] | null;
}

const gib = (b: number): string => `${(b / 2 ** 30).toFixed(2)} GiB`;
const mib = (b: number): string => (b < 2 ** 20 ? `${(b / 2 ** 10).toFixed(0)} KiB` : `${(b / 2 ** 20).toFixed(0)} MiB`);
const pct = (x: number): string => `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`;

export function printIdefics2Report(r: Idefics2Report): void {
  const a = r.adapter;
  const w = r.weightBytes;
  const s = r.shards;
  const lines: string[] = [
    `webvlm Idefics2 benchmark (${r.mode}, ${r.run}), ${r.date}`,
    `adapter: ${a.vendor} ${a.architecture} ${a.description}`.trim(),
    `adapter limits: maxBufferSize ${r.adapterLimits.maxBufferSize} (${mib(r.adapterLimits.maxBufferSize)}), maxStorageBufferBindingSize ${r.adapterLimits.maxStorageBufferBindingSize} (${mib(r.adapterLimits.maxStorageBufferBindingSize)})`,
  ];
  if (r.measured) lines.push(`measured: copy ${r.measured.copyGBs.toFixed(2)} GB/s (read+write), FMA peak ${r.measured.peakGFLOPS.toPrecision(3)} GFLOPS`);
  lines.push(
    `formats: text linears ${r.formats.textLinear}, embedding/lm_head ${r.formats.embedding}, vision + connector ${r.formats.vision}; built in ${(r.buildMs / 1000).toFixed(1)} s`,
    `weights ${gib(w.total)}: text linears ${gib(w.textLinear)}, embedding + lm_head ${gib(w.embedding)}, vision ${gib(w.vision)}, connector ${gib(w.connector)}, norms/biases ${mib(w.normsAndBiases)}`,
    `GPU memory: ${gib(r.gpuBytesAfterBuild)} after the build, peak ${gib(r.peakBytes)}`,
    `binding limit ${mib(s.maxBindingBytes)}: ${s.shardedMatrices} of ${s.matrices} matrices split into ${s.shards} row shards; largest tensor ${mib(s.largestTensorBytes)}`,
    ...s.sharded.slice(0, 12).map((t) => `  ${t.name} ${t.format} [${t.rows}, ${t.cols}] -> ${t.shards} shards`),
    ...(s.sharded.length > 12 ? [`  ... ${s.sharded.length - 12} more`] : []),
    `same shapes at other binding limits: ${s.atOtherLimits.map((o) => `${mib(o.bindingBytes)}: ${o.shardedMatrices} split (${o.shards} shards)`).join("; ")}`,
  );
  for (const im of r.images) {
    lines.push(
      "",
      `== ${im.image.join("x")} image${im.split ? ", split into 4 crops + full" : ""}: ${im.crops.length} crop(s) ${im.crops.map((c) => c.join("x")).join(" ")}, ${im.patches} patches, ${im.imageTokens} image tokens, ${im.promptTokens}-token prompt`,
      `preprocess (CPU)`.padEnd(40) + `${im.preprocessMs.toFixed(1).padStart(9)} ms`,
      `vision tower + connector`.padEnd(40) + `${im.visionMs.toFixed(1).padStart(9)} ms   ${im.visionGflops.toPrecision(3)} linear GFLOPS = ${pct(im.visionOfPeak)} of peak, ${im.visionSubmits} submit(s)`,
      `prefill ${im.promptTokens} tokens`.padEnd(40) + `${im.prefillTokensPerSec.toFixed(1).padStart(9)} tok/s (${im.prefillMs.toFixed(1)} ms)`,
      `time to first token`.padEnd(40) + `${im.ttftMs.toFixed(1).padStart(9)} ms`,
      `decode at context ${im.decode.context}`.padEnd(40) +
        `${im.decode.tokensPerSec.toFixed(2).padStart(9)} tok/s  ${pct(im.decode.ofRoofline)} of roofline ${im.decode.rooflineTokensPerSec.toFixed(1)} tok/s (${mib(im.decode.bytesPerToken)}/token); ` +
        `${im.decode.dispatchesPerToken} dispatches, ${im.decode.submitsPerToken} submits per token`,
    );
  }
  if (r.decodeProfile) {
    const total = r.decodeProfile.reduce((n, k) => n + k.ns, 0);
    lines.push("", "GPU time shares, one decode step:", ...r.decodeProfile.slice(0, 10).map((k) => `  ${pct(k.ns / total).padStart(6)}  ${(k.ns / 1e6).toFixed(3).padStart(9)} ms  x${String(k.count).padEnd(4)} ${k.label}`));
  }
  console.log(lines.join("\n"));
}
