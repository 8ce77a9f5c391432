/**
 * Reuses storage buffers by size class. Sizes round up to one of 8 steps per
 * power of two, so reuse is frequent and waste stays under 12.5%.
 */
export const STORAGE_USAGE = GPUBufferUsageFlags();

function GPUBufferUsageFlags(): number {
  // GPUBufferUsage may be installed as a global only after the module loads (Node/Dawn),
  // so use the numeric values from the WebGPU spec.
  const STORAGE = 0x80, COPY_SRC = 0x04, COPY_DST = 0x08;
  return STORAGE | COPY_SRC | COPY_DST;
}

export function sizeClass(bytes: number): number {
  const min = 256;
  if (bytes <= min) return min;
  const exp = Math.floor(Math.log2(bytes));
  const step = 2 ** Math.max(exp - 3, 8);
  return Math.ceil(bytes / step) * step;
}

export class BufferPool {
  private readonly free = new Map<number, GPUBuffer[]>();
  private readonly live = new Set<GPUBuffer>();
  /** Submission epoch each free buffer was released in (see acquire's forUpload). */
  private readonly releasedIn = new WeakMap<GPUBuffer, number>();
  private epoch = 0;
  /** Bytes in buffers this pool created and has not destroyed. */
  allocatedBytes = 0;
  peakBytes = 0;
  /** Bytes in buffers handed out and not released (allocatedBytes - liveBytes is the pool's slack). */
  liveBytes = 0;

  constructor(private readonly device: GPUDevice) {}

  /**
   * A buffer of at least `bytes`. With forUpload, the caller will fill it with
   * queue.writeBuffer, which runs before commands recorded but not yet
   * submitted; so only buffers released before the last submit are reused.
   */
  acquire(bytes: number, label = "webvlm", forUpload = false): GPUBuffer {
    const size = sizeClass(bytes);
    const list = this.free.get(size);
    if (list && list.length > 0) {
      const i = forUpload ? findLastIndex(list, (b) => (this.releasedIn.get(b) ?? 0) < this.epoch) : list.length - 1;
      if (i >= 0) {
        const [reuse] = list.splice(i, 1);
        this.live.add(reuse);
        this.liveBytes += reuse.size;
        return reuse;
      }
    }
    const buffer = this.device.createBuffer({ size, usage: STORAGE_USAGE, label });
    this.allocatedBytes += size;
    this.peakBytes = Math.max(this.peakBytes, this.allocatedBytes);
    this.live.add(buffer);
    this.liveBytes += size;
    return buffer;
  }

  /** Returns a buffer for reuse; work already submitted that reads it stays valid (queue order). */
  release(buffer: GPUBuffer): void {
    if (!this.live.delete(buffer)) return;
    this.liveBytes -= buffer.size;
    this.releasedIn.set(buffer, this.epoch);
    const list = this.free.get(buffer.size) ?? [];
    list.push(buffer);
    this.free.set(buffer.size, list);
  }

  /** Called at each queue submit. */
  markSubmitted(): void {
    this.epoch++;
  }

  /** Destroys pooled buffers that are not in use. */
  trim(): void {
    for (const list of this.free.values()) {
      for (const b of list) {
        this.allocatedBytes -= b.size;
        b.destroy();
      }
    }
    this.free.clear();
  }

  clear(): void {
    this.trim();
    for (const b of this.live) {
      this.allocatedBytes -= b.size;
      b.destroy();
    }
    this.live.clear();
    this.liveBytes = 0;
  }
}

function findLastIndex<T>(list: T[], pred: (x: T) => boolean): number {
  for (let i = list.length - 1; i >= 0; i--) if (pred(list[i])) return i;
  return -1;
}
