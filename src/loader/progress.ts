// Structured load-progress events and an aggregator that turns per-file
// events into one overall figure for a progress bar.
//
// Each event describes one file (or GPU-side item) in one phase: loadedBytes
// and totalBytes are that file's numbers, non-decreasing over its events, and
// its last event has fraction 1 once it is fully consumed. For a safetensors
// shard the file's bytes are its header plus every tensor, counted once each
// on first read, so the shard reaches 1 when the model has read all of it.

export type ProgressPhase = "download" | "cache" | "quantize" | "upload" | "compile";

export interface ProgressEvent {
  phase: ProgressPhase;
  /** File name relative to the checkpoint root (e.g. "model-00001-of-00002.safetensors"). */
  file: string;
  /** The tensor being read, when the event comes from a tensor read. */
  tensor?: string;
  loadedBytes: number;
  totalBytes: number;
  /** loadedBytes / totalBytes in [0, 1]; 1 for an empty file. */
  fraction: number;
}

export type ProgressCallback = (e: ProgressEvent) => void;

export function progressEvent(phase: ProgressPhase, file: string, loadedBytes: number, totalBytes: number, tensor?: string): ProgressEvent {
  const total = Math.max(totalBytes, loadedBytes, 0);
  const e: ProgressEvent = { phase, file, loadedBytes, totalBytes: total, fraction: total === 0 ? 1 : loadedBytes / total };
  if (tensor !== undefined) e.tensor = tensor;
  return e;
}

/**
 * Per-file byte counter for one phase: items (tensors, or the file's header)
 * are counted at most once, at their largest loaded value, so re-reading a
 * tensor never pushes a file past its total or moves it backwards.
 */
export class FileProgress {
  private readonly items = new Map<string, number>();
  private loaded = 0;

  constructor(
    readonly phase: ProgressPhase,
    readonly file: string,
    /** Can be moved between phases (a cached chunk that fails its check is downloaded instead). */
    public totalBytes: number,
    private readonly emit?: ProgressCallback,
  ) {}

  get loadedBytes(): number {
    return this.loaded;
  }

  /** Sets item `key`'s loaded bytes (ignored if lower than before) and emits. */
  update(key: string, loadedBytes: number, tensor?: string): void {
    // A phase with nothing in it (no cached bytes on a first load) reports nothing.
    if (this.totalBytes === 0) return;
    const prev = this.items.get(key) ?? 0;
    if (loadedBytes <= prev && this.items.has(key)) return;
    this.items.set(key, Math.max(prev, loadedBytes));
    this.loaded = Math.min(this.totalBytes, this.loaded + Math.max(0, loadedBytes - prev));
    this.emit?.(progressEvent(this.phase, this.file, this.loaded, this.totalBytes, tensor));
  }
}

export interface OverallProgress {
  loadedBytes: number;
  totalBytes: number;
  /** Never decreases, even when a newly seen file raises the total. */
  fraction: number;
  /** Per phase, the same sums. */
  phases: Partial<Record<ProgressPhase, { loadedBytes: number; totalBytes: number }>>;
}

/**
 * Sums the latest event of every (phase, file) into one overall figure.
 * Phases can be weighted (e.g. download 0.8, upload 0.2); unweighted phases
 * count bytes as they are. Totals only become known as files are reached, so
 * the reported fraction is clamped to never go backwards.
 */
export class ProgressAggregator {
  private readonly latest = new Map<string, ProgressEvent>();
  private last = 0;

  constructor(
    private readonly onUpdate?: (overall: OverallProgress, event: ProgressEvent) => void,
    private readonly weights: Partial<Record<ProgressPhase, number>> = {},
  ) {}

  /** Declares a file before its first event, so the total is right from the start. */
  expect(phase: ProgressPhase, file: string, totalBytes: number): void {
    const key = `${phase}\u0000${file}`;
    if (!this.latest.has(key)) this.latest.set(key, progressEvent(phase, file, 0, totalBytes));
  }

  /** Feeds one event; usable directly as a ProgressCallback. */
  readonly push = (e: ProgressEvent): void => {
    const key = `${e.phase}\u0000${e.file}`;
    const prev = this.latest.get(key);
    // Keep the larger of loaded/total: events of concurrent reads may arrive out of order.
    this.latest.set(key, prev && prev.loadedBytes > e.loadedBytes ? { ...prev, totalBytes: Math.max(prev.totalBytes, e.totalBytes) } : e);
    this.onUpdate?.(this.overall(), e);
  };

  overall(): OverallProgress {
    const phases: OverallProgress["phases"] = {};
    for (const e of this.latest.values()) {
      const p = (phases[e.phase] ??= { loadedBytes: 0, totalBytes: 0 });
      p.loadedBytes += e.loadedBytes;
      p.totalBytes += e.totalBytes;
    }
    let loaded = 0;
    let total = 0;
    let wfrac = 0;
    // Weighted phases not seen yet count as 0 done, so the bar cannot hit 1 before they run.
    const wsum = Object.values(this.weights).reduce((s, w) => s + (w ?? 0), 0);
    const weighted = wsum > 0;
    for (const [phase, p] of Object.entries(phases) as [ProgressPhase, { loadedBytes: number; totalBytes: number }][]) {
      loaded += p.loadedBytes;
      total += p.totalBytes;
      wfrac += (this.weights[phase] ?? 0) * (p.totalBytes === 0 ? 1 : p.loadedBytes / p.totalBytes);
    }
    const raw = weighted ? wfrac / wsum : total === 0 ? 0 : loaded / total;
    this.last = Math.max(this.last, Math.min(1, raw));
    return { loadedBytes: loaded, totalBytes: total, fraction: this.last, phases };
  }
}
