import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "./device.ts";
import type { DispatchTimer } from "./recorder.ts";
import { readBytes } from "./transfer.ts";

export interface KernelTime {
  label: string;
  count: number;
  /** total GPU nanoseconds over all dispatches with this label */
  ns: number;
}

/**
 * Times each dispatch with timestamp queries (one compute pass per dispatch,
 * so it perturbs what it measures a little: use it for time shares, not totals).
 * Attach with `recorder.timer = profiler`, submit, then `await profiler.collect()`.
 */
export class TimestampProfiler implements DispatchTimer {
  private readonly querySet: GPUQuerySet;
  private readonly resolveBuffer: GPUBuffer;
  private labels: string[] = [];

  constructor(
    private readonly ctx: GpuContext,
    private capacity = 2048,
  ) {
    if (!ctx.features.has("timestamp-query")) {
      throw new WebvlmError("unsupported_feature", "this adapter has no timestamp-query");
    }
    // A query set holds at most 4096 queries (WebGPU limit): 2048 timed dispatches.
    this.capacity = Math.min(capacity, 2048);
    this.querySet = ctx.device.createQuerySet({ type: "timestamp", count: 2 * this.capacity });
    this.resolveBuffer = ctx.device.createBuffer({
      size: 16 * this.capacity,
      usage: 0x200 | 0x04, // QUERY_RESOLVE | COPY_SRC
    });
  }

  next(label: string): GPUComputePassTimestampWrites | undefined {
    const i = this.labels.length;
    if (i >= this.capacity) return undefined; // beyond capacity: untimed, still correct
    this.labels.push(label);
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Per-label totals for everything timed since the last collect, largest first. */
  async collect(): Promise<KernelTime[]> {
    const n = this.labels.length;
    if (n === 0) return [];
    // Resolved in one go (destination offsets must be 256-aligned, so not per pass).
    const encoder = this.ctx.device.createCommandEncoder();
    encoder.resolveQuerySet(this.querySet, 0, 2 * n, this.resolveBuffer, 0);
    this.ctx.device.queue.submit([encoder.finish()]);
    const stamps = new BigUint64Array(await readBytes(this.ctx, this.resolveBuffer, 0, 16 * n));
    const byLabel = new Map<string, KernelTime>();
    for (let i = 0; i < n; i++) {
      const ns = Number(stamps[2 * i + 1] - stamps[2 * i]);
      const entry = byLabel.get(this.labels[i]) ?? { label: this.labels[i], count: 0, ns: 0 };
      entry.count++;
      entry.ns += Math.max(0, ns);
      byLabel.set(this.labels[i], entry);
    }
    this.labels = [];
    return [...byLabel.values()].sort((a, b) => b.ns - a.ns);
  }

  destroy(): void {
    this.querySet.destroy();
    this.resolveBuffer.destroy();
  }
}
