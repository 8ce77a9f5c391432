// What every family's GPU preprocessing shares: getting a request's image onto the GPU as 8-bit
// RGB (decoded in the browser by copyExternalImageToTexture, in Node by the CPU decoder and one
// upload; alpha composited on the GPU), the checkpoint's normalize table, the device-limit check
// that sends an item to the CPU path instead, and the PreparedMedia bookkeeping (GPU content key,
// release). The kernels are ops/image_*.ts; the families cut their own tiles and patches.
import type { GpuContext } from "../gpu/device.ts";
import { Recorder } from "../gpu/recorder.ts";
import type { Tensor } from "../gpu/tensor.ts";
import { gpuContentHash } from "../ops/content_hash.ts";
import { compositeImage } from "../ops/image_composite.ts";
import { uploadNormalizeTable } from "../ops/image_patches.ts";
import type { PreparedMedia } from "../models/family.ts";
import { loadImageToGpu } from "./gpu_image_browser.ts";
import { releaseImage, type GpuImage } from "./gpu_image.ts";
import type { LoadImageOptions } from "./load_image.ts";
import type { NormalizeOptions } from "./normalize.ts";

/** A family processor's handle on the GPU path, bound to the engine's device getter. */
export class GpuPreprocessor {
  private tables = new Map<string, Tensor>();
  private tablesOf: GpuContext | null = null;

  constructor(private readonly device: () => GpuContext) {}

  get ctx(): GpuContext {
    return this.device();
  }

  /** The checkpoint's normalize table on the device, uploaded once per options (and device). */
  normalizeTable(opts: NormalizeOptions): Tensor {
    const ctx = this.ctx;
    if (this.tablesOf !== ctx) {
      // A new device after a loss: the old tables died with it.
      this.tables = new Map();
      this.tablesOf = ctx;
    }
    const key = JSON.stringify([opts.mean, opts.std, opts.rescaleFactor, opts.doRescale, opts.doNormalize]);
    let t = this.tables.get(key);
    if (!t) {
      t = uploadNormalizeTable(ctx, opts);
      this.tables.set(key, t);
    }
    return t;
  }

  /**
   * A request's image as an 8-bit GPU image, oriented and alpha-composited as the CPU path's
   * loadImage would (same options, same typed errors); the caller releases it.
   */
  async loadImage(source: unknown, signal: AbortSignal | undefined, opts: LoadImageOptions): Promise<GpuImage> {
    const ctx = this.ctx;
    const img = await loadImageToGpu(ctx, source, signal, opts);
    if (!img.hasAlpha) return img;
    if (!opts.alphaBackground) {
      // convert("RGB") drops alpha: the kernels read channels 0..2 only.
      return { ...img, hasAlpha: false };
    }
    const rec = new Recorder(ctx);
    const out = compositeImage(rec, img, opts.alphaBackground);
    rec.submit();
    releaseImage(ctx, img);
    return out;
  }

  /**
   * Whether buffers of these sizes (bytes) can be bound on this device; an item that needs more
   * goes through the CPU path (same result, slower).
   */
  fits(...bytes: number[]): boolean {
    const { maxStorageBufferBindingSize, maxBufferSize } = this.ctx.limits;
    return bytes.every((b) => b <= maxStorageBufferBindingSize && b <= maxBufferSize);
  }

  /** PreparedMedia for GPU tensors: keyed by their contents (read back as block hashes only), released once. */
  async media(kind: "image" | "video", tokens: number, tensors: readonly Tensor[], payload: unknown): Promise<PreparedMedia> {
    const ctx = this.ctx;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      for (const t of tensors) ctx.pool.release(t.buffer);
    };
    try {
      const hash = await gpuContentHash(ctx, tensors);
      return { kind, hash, tokens, payload, device: "gpu", release };
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Frees the normalize tables (the processor's lifetime ends with its model's). */
  dispose(): void {
    if (this.tablesOf && !this.tablesOf.lostError) for (const t of this.tables.values()) this.tablesOf.pool.release(t.buffer);
    this.tables.clear();
  }
}

/** Releases whatever GPU buffers already prepared items hold (a later item failed). */
export function releaseMedia(items: readonly PreparedMedia[]): void {
  for (const m of items) m.release?.();
}
