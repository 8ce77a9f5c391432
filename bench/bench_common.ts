// Helpers the end-to-end benchmarks share (bench/qwen2vl.ts, bench/idefics2.ts): command-line
// options, median wall time, deterministic random pixels and token ids, per-kernel GPU time
// shares, and the adapter's measured copy bandwidth / FMA peak (the roofline denominators).
import type { GpuContext } from "../src/gpu/device.ts";
import { TimestampProfiler, type KernelTime } from "../src/gpu/profiler.ts";
import { copyBandwidth, peakFlops } from "./limits.ts";

export interface CliArgs {
  readonly argv: readonly string[];
  flag(name: string): boolean;
  option(name: string): string | undefined;
}

export function cliArgs(argv: readonly string[]): CliArgs {
  return {
    argv,
    flag: (name) => argv.includes(name),
    option: (name) => {
      const i = argv.indexOf(name);
      return i >= 0 ? argv[i + 1] : undefined;
    },
  };
}

/** Wall time of `fn` (which waits for its GPU work): one warm-up, then the median of `n`. */
export async function median(n: number, fn: () => Promise<void>): Promise<number> {
  await fn();
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)];
}

/** RGB8 pixels from a linear congruential generator (timing does not depend on the values). */
export function randomRgb(width: number, height: number, seed: number): Uint8Array {
  const rgb = new Uint8Array(width * height * 3);
  let s = seed >>> 0;
  for (let i = 0; i < rgb.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    rgb[i] = s >>> 24;
  }
  return rgb;
}

/** `n` token ids in [lo, lo + span): ordinary vocabulary, clear of the special ids at either end. */
export function randomIds(n: number, seed: number, lo = 1000, span = 100000): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return lo + (s % span);
  });
}

/** Timestamp-query time per kernel label of the work `run` records; null without timestamp-query. */
export async function profileKernels(gpu: GpuContext, run: () => Promise<void>): Promise<KernelTime[] | null> {
  if (!gpu.features.has("timestamp-query")) return null;
  const profiler = new TimestampProfiler(gpu);
  gpu.dispatchTimer = profiler;
  try {
    await run();
  } finally {
    gpu.dispatchTimer = null;
  }
  const times = await profiler.collect();
  profiler.destroy();
  return times;
}

export function isSoftwareAdapter(gpu: GpuContext): boolean {
  return /swiftshader|llvmpipe|software/i.test(`${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description}`);
}

/**
 * Measured copy bandwidth (GB/s, read + write) and FMA peak (GFLOPS). `small`: probe sizes a
 * software adapter finishes in seconds (the figures are then regressions only, never GPU claims).
 */
export async function measureLimits(gpu: GpuContext, small: boolean): Promise<{ copyGBs: number; peakGFLOPS: number }> {
  const copyGBs = await copyBandwidth(gpu, small ? 32 << 20 : 512 << 20, small ? 4 : 20);
  const peakGFLOPS = await peakFlops(gpu, small ? 1 << 16 : 1 << 22, small ? 256 : 2048, small ? 1 : 10);
  gpu.pool.trim();
  return { copyGBs, peakGFLOPS };
}
