// The end-to-end benchmark's result shape (written as JSON) and its terminal table.
import type { PreprocessRow } from "./preprocess.ts";
import type { AdapterReport } from "../src/gpu/device.ts";
import type { KernelTime } from "../src/gpu/profiler.ts";
import type { WeightFormats } from "../src/models/common/source.ts";

export interface FormatResult {
  format: "q4" | "f16";
  formats: WeightFormats;
  /** Bytes of all weights on the GPU. */
  weightBytes: number;
  /** Weight bytes one decode step reads: decoder linears, lm_head, norms. */
  weightBytesPerToken: number;
  /** gflops: the linear layers' FLOPs per second (attention not counted); ofPeak: / FMA peak. */
  vision: { width: number; height: number; resized: [number, number]; llmTokens: number; ms: number; gflops: number; ofPeak: number }[];
  prefill: { tokens: number; ms: number; tokensPerSec: number; gflops: number; ofPeak: number };
  decode: {
    context: number;
    steps: number;
    msPerToken: number;
    tokensPerSec: number;
    /** Weights plus the KV rows read per token. */
    bytesPerToken: number;
    /** copy bandwidth / bytesPerToken */
    rooflineTokensPerSec: number;
    ofRoofline: number;
    dispatchesPerToken: number;
    submitsPerToken: number;
    /** Peak pooled GPU bytes while decoding at this context (weights + KV grown to it + step buffers). */
    peakBytes: number;
    /** The KV cache's allocated bytes at this context. */
    kvAllocatedBytes: number;
  }[];
  /** Raw pixels + question -> first token: `ms` with CPU preprocessing, `msGpuPreprocess` with GPU preprocessing. */
  ttft: { image: [number, number]; questionTokens: number; promptTokens: number; ms: number; msGpuPreprocess: number };
  /** Peak bytes of pooled GPU buffers (weights, KV cache, activations) during this format's run. */
  peakBytes: number;
  /** Timestamp-query time per kernel label; null where the adapter has no timestamp-query. */
  profiles: { decode: KernelTime[] | null; prefill: KernelTime[] | null; vision: KernelTime[] | null };
}

export interface Report {
  date: string;
  mode: "tiny" | "qwen2-vl-2b" | "qwen2-vl-7b";
  /** The KV cache's element type in this run. */
  kvCache: "f16" | "f32";
  command: string;
  adapter: AdapterReport;
  limits: { copyGBs: number; peakGFLOPS: number };
  config: unknown;
  /** Qwen2-VL preprocessing of decoded pixels, CPU path vs GPU path (bench/preprocess.ts). */
  preprocess: PreprocessRow[];
  results: FormatResult[];
}

const num = (x: number): string => x.toPrecision(3);
const pct = (x: number): string => `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`;
const gib = (b: number): string => `${(b / 2 ** 30).toFixed(2)} GiB`;

function shares(times: KernelTime[] | null, top: number): string[] {
  if (!times) return ["  (no timestamp-query on this adapter)"];
  const total = times.reduce((a, t) => a + t.ns, 0);
  return times.slice(0, top).map((t) => `  ${pct(t.ns / total).padStart(6)}  ${(t.ns / 1e6).toFixed(3).padStart(9)} ms  x${String(t.count).padEnd(4)} ${t.label}`);
}

/** Qwen's table (Qwen2-VL README, "Speed Benchmark", transformers, GPU memory in GB for 2048 generated tokens). */
const SEED_MEMORY: Record<string, Record<number, string>> = {
  "qwen2-vl-2b": { 1: "BF16 4.68, GPTQ-Int4 2.91, AWQ 2.88", 6144: "BF16 10.01, GPTQ-Int4 8.21, AWQ 8.18", 14336: "BF16 17.20, GPTQ-Int4 15.40, AWQ 15.40", 30720: "BF16 31.64, GPTQ-Int4 29.84, AWQ 29.84" },
  "qwen2-vl-7b": { 1: "BF16 16.07, GPTQ-Int4 7.20, AWQ 7.07", 6144: "BF16 21.56, GPTQ-Int4 12.69, AWQ 12.56", 14336: "BF16 29.07, GPTQ-Int4 20.20, AWQ 20.07", 30720: "BF16 44.08, GPTQ-Int4 35.22, AWQ 35.08" },
};

function seedMemory(mode: string, context: number): string {
  const row = SEED_MEMORY[mode]?.[context];
  return row ? `; Qwen's table: ${row}` : "";
}

export function printReport(r: Report): void {
  const a = r.adapter;
  const lines: string[] = [
    `webvlm end-to-end benchmark (${r.mode}), ${r.date}`,
    `adapter: ${a.vendor} ${a.architecture} ${a.description}`.trim(),
    `measured limits: copy ${r.limits.copyGBs.toFixed(2)} GB/s (read+write), FMA peak ${num(r.limits.peakGFLOPS)} GFLOPS`,
  ];
  if (r.preprocess.length > 0) lines.push("", "== preprocessing (Qwen2-VL processor, decoded RGB8 -> patch rows on the GPU)");
  for (const p of r.preprocess) {
    lines.push(
      `${p.image.join("x")} -> ${p.resized.join("x")} (${p.llmTokens} tokens)`.padEnd(58) +
        `CPU ${p.cpuMs.toFixed(1).padStart(8)} ms   GPU ${p.gpuMs.toFixed(1).padStart(8)} ms   (${(p.cpuMs / p.gpuMs).toFixed(2)}x)`,
    );
  }
  for (const f of r.results) {
    lines.push("", `== ${f.format} (linear ${f.formats.textLinear}, embedding ${f.formats.embedding}, vision ${f.formats.vision}): weights ${gib(f.weightBytes)}, peak GPU memory ${gib(f.peakBytes)}`);
    for (const v of f.vision) {
      lines.push(`vision encode ${v.width}x${v.height} (${v.resized.join("x")}, ${v.llmTokens} tokens)`.padEnd(58) + `${v.ms.toFixed(1).padStart(9)} ms   ${num(v.gflops)} linear GFLOPS = ${pct(v.ofPeak)} of peak`);
    }
    const p = f.prefill;
    lines.push(`prefill ${p.tokens} tokens`.padEnd(58) + `${p.tokensPerSec.toFixed(1).padStart(9)} tok/s  ${num(p.gflops)} linear GFLOPS = ${pct(p.ofPeak)} of peak`);
    for (const d of f.decode) {
      lines.push(
        `decode at context ${d.context}`.padEnd(58) +
          `${d.tokensPerSec.toFixed(2).padStart(9)} tok/s  ${pct(d.ofRoofline)} of roofline ${d.rooflineTokensPerSec.toFixed(1)} tok/s ` +
          `(${(d.bytesPerToken / 2 ** 20).toFixed(0)} MiB/token); ${d.dispatchesPerToken} dispatches, ${d.submitsPerToken} submits per token; ` +
          `peak GPU memory ${(d.peakBytes / 1e9).toFixed(2)} GB (KV ${(d.kvAllocatedBytes / 1e9).toFixed(2)} GB)${seedMemory(r.mode, d.context)}`,
      );
    }
    if (f.ttft.ms > 0) {
      lines.push(
        `time to first token, ${f.ttft.image.join("x")} image + ${f.ttft.questionTokens}-token question (${f.ttft.promptTokens} tokens)`.padEnd(58) +
          `${f.ttft.ms.toFixed(1).padStart(9)} ms with CPU preprocessing, ${f.ttft.msGpuPreprocess.toFixed(1)} ms with GPU preprocessing`,
      );
    }
    lines.push(`GPU time shares, one decode step (context ${f.decode[0]?.context}):`, ...shares(f.profiles.decode, 10));
    lines.push(`GPU time shares, prefill of ${p.tokens} tokens:`, ...shares(f.profiles.prefill, 10));
    if (f.vision.length > 0) lines.push(`GPU time shares, vision encode of the ${f.vision[0].width}x${f.vision[0].height} image:`, ...shares(f.profiles.vision, 8));
  }
  console.log(lines.join("\n"));
}
