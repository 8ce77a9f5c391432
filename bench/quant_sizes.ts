// Bytes downloaded and bytes on the GPU for Qwen2-VL-2B and -7B in each way to get q4/q8 weights:
// bf16 quantized in the browser (in-situ q4), GPTQ-Int4 / GPTQ-Int8 (group 128, sym, as Qwen
// publishes them), AWQ (group 128, zero points) and webvlm's own q4 / q8 format. Computed from
// the checkpoints' tensor shapes (bench/qwen2-vl-*.config.json) with the stored layouts of each
// format and the layouts the loader makes (src/quant/formats.ts: 32-wide groups; GPTQ/AWQ groups
// of 128 become runs of 32 with equal scale (and zero: one byte per 32)); not a measured transfer.
// The decoder's linear layers are what every format quantizes; embeddings, lm_head and the
// vision tower are stored in bf16/f16 (2 bytes) and held in f16 on the GPU, norms and biases f32.
//   node --import ./scripts/register-loaders.mjs bench/quant_sizes.ts      (npm run bench:sizes)
import { readFileSync } from "node:fs";
import { parseQwen2VLConfig } from "../src/models/qwen2_vl/config.ts";
import { qwen2VLTensorTable } from "../src/models/qwen2_vl/weights.ts";
import { paddedCols } from "../src/quant/formats.ts";

type Way = "bf16 + in-situ q4" | "GPTQ-Int4" | "GPTQ-Int8" | "AWQ" | "webvlm q4" | "webvlm q8";
const WAYS: Way[] = ["bf16 + in-situ q4", "GPTQ-Int4", "GPTQ-Int8", "AWQ", "webvlm q4", "webvlm q8"];
const GROUP = 128;

/** Seed table (Qwen2-VL README, "Speed Benchmark"): GPU memory in GB at input length 1, transformers. */
const SEED: Record<string, Partial<Record<string, number>>> = {
  "2B": { BF16: 4.68, "GPTQ-Int8": 3.55, "GPTQ-Int4": 2.91, AWQ: 2.88 },
  "7B": { BF16: 16.07, "GPTQ-Int8": 10.11, "GPTQ-Int4": 7.2, AWQ: 7.07 },
};

const isDecoderLinear = (name: string, shape: readonly number[]): boolean =>
  shape.length === 2 && /^model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+\.weight$/.test(name);

/** Packed q4/q8 with 32-wide f16 scales (+ one zero byte per group), as the GPU holds it. */
const gpuQ = (rows: number, cols: number, bits: 4 | 8, zeros: boolean): number => {
  const pc = paddedCols(cols);
  return rows * ((pc * bits) / 8 + (pc / 32) * 2 + (zeros ? pc / 32 : 0));
};

/** A GPTQ (qweight int32 [in*bits/32, out], qzeros int32 [in/g, out*bits/32], scales f16 [in/g, out], g_idx int32 [in]) or AWQ (no g_idx) matrix as stored. */
const stored = (rows: number, cols: number, bits: 4 | 8, gIdx: boolean): number =>
  (rows * cols * bits) / 8 + (cols / GROUP) * ((rows * bits) / 8) + (cols / GROUP) * rows * 2 + (gIdx ? cols * 4 : 0);

function sizes(configFile: string): Record<Way, { download: number; gpu: number }> {
  const config = parseQwen2VLConfig(JSON.parse(readFileSync(new URL(configFile, import.meta.url), "utf8")));
  const out = Object.fromEntries(WAYS.map((w) => [w, { download: 0, gpu: 0 }])) as Record<Way, { download: number; gpu: number }>;
  for (const { name, shape } of qwen2VLTensorTable(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (isDecoderLinear(name, shape)) {
      const [rows, cols] = shape;
      const add = (w: Way, download: number, gpu: number): void => {
        out[w].download += download;
        out[w].gpu += gpu;
      };
      add("bf16 + in-situ q4", n * 2, gpuQ(rows, cols, 4, false));
      add("GPTQ-Int4", stored(rows, cols, 4, true), gpuQ(rows, cols, 4, false)); // sym: zeros all 8, loaded without
      add("GPTQ-Int8", stored(rows, cols, 8, true), gpuQ(rows, cols, 8, false));
      add("AWQ", stored(rows, cols, 4, false), gpuQ(rows, cols, 4, true));
      add("webvlm q4", gpuQ(rows, cols, 4, false), gpuQ(rows, cols, 4, false));
      add("webvlm q8", gpuQ(rows, cols, 8, false), gpuQ(rows, cols, 8, false));
      continue;
    }
    // Everything else: stored in 2 bytes; matrices f16 on the GPU, vectors f32.
    for (const w of WAYS) {
      out[w].download += n * 2;
      out[w].gpu += n * (shape.length >= 2 ? 2 : 4);
    }
  }
  return out;
}

const gb = (b: number): string => (b / 1e9).toFixed(2);
const lines: string[] = [];

/** KV cache bytes per token: every layer's K and V rows, f16 (packed pairs) or f32. */
function kvBytesPerToken(configFile: string, dtype: "f16" | "f32"): number {
  const t = parseQwen2VLConfig(JSON.parse(readFileSync(new URL(configFile, import.meta.url), "utf8"))).text;
  const width = t.numKvHeads * t.headDim;
  return 2 * t.numLayers * (dtype === "f16" ? Math.ceil(width / 2) * 4 : width * 4);
}

/** Qwen's table (transformers, GPU memory in GB for 2048 generated tokens) at the same input lengths. */
const SEED_CONTEXT: Record<string, Record<number, string>> = {
  "2B": { 1: "4.68 / 2.91 / 2.88", 6144: "10.01 / 8.21 / 8.18", 14336: "17.20 / 15.40 / 15.40", 30720: "31.64 / 29.84 / 29.84" },
  "7B": { 1: "16.07 / 7.20 / 7.07", 6144: "21.56 / 12.69 / 12.56", 14336: "29.07 / 20.20 / 20.07", 30720: "44.08 / 35.22 / 35.08" },
};
for (const [size, file] of [["2B", "./qwen2-vl-2b.config.json"], ["7B", "./qwen2-vl-7b.config.json"]] as const) {
  const s = sizes(file);
  const bf16 = s["bf16 + in-situ q4"].download;
  lines.push(`Qwen2-VL-${size}-Instruct shapes (GB = 1e9 bytes)`, "way".padEnd(20) + "download GB  of bf16   on the GPU GB   seed: GPU memory at input 1 (transformers)");
  for (const w of WAYS) {
    const seedKey = w.startsWith("bf16") ? "BF16" : w;
    const seed = SEED[size][seedKey];
    lines.push(`${w.padEnd(20)}${gb(s[w].download).padStart(11)}  ${((100 * s[w].download) / bf16).toFixed(0).padStart(5)}%  ${gb(s[w].gpu).padStart(14)}   ${seed !== undefined ? `${seed.toFixed(2)} (${seedKey})` : "-"}`);
  }
  lines.push("");
}
// Weights (q4 as loaded) plus the KV cache holding input + 2048 generated tokens, the seed table's setting.
for (const [size, file] of [["2B", "./qwen2-vl-2b.config.json"], ["7B", "./qwen2-vl-7b.config.json"]] as const) {
  const w = sizes(file)["bf16 + in-situ q4"].gpu;
  lines.push(`Qwen2-VL-${size}: q4 weights + KV cache for input + 2048 tokens (GB; activations not counted)`,
    "input length".padEnd(14) + "KV f16".padStart(8) + "total f16".padStart(11) + "KV f32".padStart(8) + "total f32".padStart(11) + "   seed BF16 / GPTQ-Int4 / AWQ");
  for (const ctx of [1, 6144, 14336, 30720]) {
    const kv16 = (ctx + 2048) * kvBytesPerToken(file, "f16");
    const kv32 = (ctx + 2048) * kvBytesPerToken(file, "f32");
    lines.push(String(ctx).padEnd(14) + gb(kv16).padStart(8) + gb(w + kv16).padStart(11) + gb(kv32).padStart(8) + gb(w + kv32).padStart(11) + `   ${SEED_CONTEXT[size][ctx]}`);
  }
  lines.push("");
}
console.log(lines.join("\n"));
