// Kernel benchmarks: copy bandwidth, q4/q8 GEMV bandwidth and its ratio to copy,
// GEMM GFLOPS (f32 and q4) at Qwen2-VL-2B MLP shapes, decode attention at 4k context.
// `--reduced` (default on software adapters) shrinks sizes to run in minutes on SwiftShader;
// `--full` forces the real sizes. Prints a table and writes bench/results/kernels.json.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { acquireNodeGpu } from "../src/gpu/node.ts";
import { allocTensor, uploadTensor } from "../src/gpu/transfer.ts";
import { gemvConfig, linear, type GemvConfig } from "../src/ops/linear.ts";
import { uploadWeight } from "../src/quant/pack.ts";
import type { WeightFormat } from "../src/quant/formats.ts";
import { benchAttentionDecode } from "./attention.ts";
import { copyBandwidth } from "./limits.ts";
import { timeGpu } from "./timing.ts";
import { randomArray } from "../test/util/compare.ts";

interface Row {
  name: string;
  value: number;
  unit: string;
  note?: string;
}

const argv = process.argv.slice(2);
const args = new Set(argv);
const outArg = argv.indexOf("--out") >= 0 ? argv[argv.indexOf("--out") + 1] : undefined;
const gpu = await acquireNodeGpu();
const software = /swiftshader|llvmpipe|software/i.test(`${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description}`);
const reduced = args.has("--reduced") || (software && !args.has("--full"));
const rows: Row[] = [];
const sweeps: unknown[] = [];
const add = (r: Row): void => {
  rows.push(r);
  console.log(`${r.name.padEnd(48)} ${r.value.toFixed(r.value < 10 ? 3 : 1).padStart(10)} ${r.unit}${r.note ? `  (${r.note})` : ""}`);
};

console.log(`adapter: ${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description}`);
console.log(`mode: ${reduced ? "reduced sizes (software adapter or --reduced)" : "full Qwen2-VL-2B sizes"}\n`);

const copyGBs = await copyBandwidth(gpu, reduced ? 32 << 20 : 256 << 20, reduced ? 4 : 50);
add({ name: "copy kernel bandwidth (read+write)", value: copyGBs, unit: "GB/s" });

// Qwen2-VL-2B MLP shapes: up/gate 1536 -> 8960 ([8960, 1536] weights), down 8960 -> 1536.
const scale = reduced ? 4 : 1;
const shapes: [number, number][] = [
  [8960 / scale, 1536 / scale],
  [1536 / scale, 8960 / scale],
];

function weightBytes(format: WeightFormat, n: number, k: number): number {
  const groups = Math.ceil(k / 32);
  if (format === "q4") return n * groups * (16 + 2);
  if (format === "q8") return n * groups * (32 + 2);
  return n * k * (format === "f16" ? 2 : 4);
}

for (const [n, k] of shapes) {
  const values = randomArray(n * k, 7, -0.05, 0.05);
  for (const format of ["q4", "q8", "f16", "f32"] as const) {
    const w = uploadWeight(gpu, values, n, k, format, `bench.${format}`);
    for (const m of reduced ? [1, 64] : [1, 512]) {
      const x = uploadTensor(gpu, randomArray(m * k, 3), [m, k], "f32");
      const y = allocTensor(gpu, [m, n], "f32");
      const iters = reduced ? (m === 1 ? 4 : 1) : m === 1 ? 100 : 10;
      const t = await timeGpu(gpu, (rec) => linear(rec, x, w, undefined, y), iters, reduced ? 3 : 5);
      const gflops = (2 * m * n * k) / (t.ms * 1e6);
      if (m === 1) {
        const gbs = (weightBytes(format, n, k) + 4 * (k + n)) / (t.ms * 1e6);
        add({
          name: `GEMV ${format} N=${n} K=${k}`,
          value: gbs,
          unit: "GB/s",
          note: `${((100 * gbs) / copyGBs).toFixed(0)}% of copy, ${(t.ms * 1000).toFixed(0)} us`,
        });
      } else if (format === "q4" || format === "f32") {
        add({ name: `GEMM ${format} M=${m} N=${n} K=${k}`, value: gflops, unit: "GFLOPS", note: `${t.ms.toFixed(2)} ms` });
      }
      gpu.pool.release(x.buffer);
      gpu.pool.release(y.buffer);
    }
  }
}

// q4 GEMV shape sweep at the decode step's four shapes (M = 1; qkv and gate|up with the fused
// RMSNorm, as the decoder runs them): every LANES x TEAMS x R, the heuristic's pick marked.
// Same-output repetitions serialize like the decoder's dependent dispatches, so each figure is a
// latency including the barrier between dispatches.
if (!reduced || args.has("--sweep")) {
  const decodeShapes: [number, number, boolean][] = [[2048, 1536, true], [1536, 1536, false], [17920, 1536, true], [1536, 8960, false]];
  for (const [n, k, norm] of decodeShapes) {
    const w = uploadWeight(gpu, randomArray(n * k, 9, -0.05, 0.05), n, k, "q4", "bench.sweep");
    const x = uploadTensor(gpu, randomArray(k, 5), [1, k], "f32");
    const g = uploadTensor(gpu, randomArray(k, 6, 0.5, 1.5), [k], "f32");
    const y = allocTensor(gpu, [1, n], "f32");
    const auto = gemvConfig(1, n, Math.ceil(k / 32));
    const results: { shape: GemvConfig; us: number }[] = [];
    for (const threads of [128, 256]) {
      for (const LANES of [8, 16, 32, 64]) {
        for (const R of [1, 2, 4, 8]) {
          const shape = { LANES, TEAMS: threads / LANES, R, MROWS: 1 };
          const t = await timeGpu(gpu, (rec) => linear(rec, x, w, undefined, y, { gemvShape: shape, rmsNorm: norm ? { weight: g, eps: 1e-6 } : undefined }), reduced ? 2 : 100, reduced ? 1 : 5);
          results.push({ shape, us: t.ms * 1000 });
        }
      }
    }
    results.sort((a, b) => a.us - b.us);
    const bytes = weightBytes("q4", n, k) + 4 * (2 * k + n);
    const fmt = (r: { shape: GemvConfig; us: number }): string =>
      `L${r.shape.LANES}xT${r.shape.TEAMS} R${r.shape.R} ${r.us.toFixed(1)} us (${((100 * bytes) / (r.us * 1e3) / copyGBs).toFixed(0)}% of copy)`;
    const heuristic = results.find((r) => r.shape.LANES === auto.LANES && r.shape.TEAMS === auto.TEAMS && r.shape.R === auto.R);
    console.log(`sweep q4 GEMV N=${n} K=${k}${norm ? " +norm" : ""}: best ${results.slice(0, 3).map(fmt).join(", ")}; heuristic ${heuristic ? fmt(heuristic) : "?"}`);
    sweeps.push({ n, k, norm, results, heuristic: auto });
    for (const t of [x, g, y]) gpu.pool.release(t.buffer);
  }
}

const context = reduced ? 512 : 4096;
const attn = await benchAttentionDecode(gpu, context, reduced);
add({ name: `attention decode, context ${context} (12 q / 2 kv heads, d=128)`, value: attn.ms * 1000, unit: "us", note: `${attn.gbs.toFixed(2)} GB/s of KV read` });

const out = outArg ?? new URL("./results/kernels.json", import.meta.url).pathname;
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), adapter: gpu.adapter, reduced, rows, sweeps }, null, 2));
console.log(`\nwrote ${out}`);
gpu.destroy();
