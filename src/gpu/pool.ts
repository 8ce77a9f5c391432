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
  /** Bytes in buffers this pool created and has not destroyed. */
  allocatedBytes = 0;
  peakBytes = 0;

  constructor(private readonly device: GPUDevice) {}

  acquire(bytes: number, label = "webvlm"): GPUBuffer {
    const size = sizeClass(bytes);
    const reuse = this.free.get(size)?.pop();
    if (reuse) {
      this.live.add(reuse);
      return reuse;
    }
    const buffer = this.device.createBuffer({ size, usage: STORAGE_USAGE, label });
    this.allocatedBytes += size;
    this.peakBytes = Math.max(this.peakBytes, this.allocatedBytes);
    this.live.add(buffer);
    return buffer;
  }

  /** Returns a buffer for reuse; work already submitted that reads it stays valid (queue order). */
  release(buffer: GPUBuffer): void {
    if (!this.live.delete(buffer)) return;
    const list = this.free.get(buffer.size) ?? [];
    list.push(buffer);
    this.free.set(buffer.size, list);
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
  }
}
