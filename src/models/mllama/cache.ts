// Llama 3.2 Vision's per-conversation state: the self-attention layers' KV caches (cross layers keep
// none), and the cross-attention keys/values of the request's image set, computed once per image set
// (MLLAMA.md §8) and kept across decode steps and turns while the images stay the same, with the key
// mask of its padded tiles and the mask row decode steps reuse (§6.5: the last prompt row).
import type { GpuContext } from "../../gpu/device.ts";
import { byteSize, type Tensor } from "../../gpu/tensor.ts";
import { LayerCaches } from "../common/step.ts";
import type { CrossKv } from "../decoder/cross_attention.ts";
import type { KvCache } from "../../ops/kv_cache.ts";

/** The vision side of a cache: one image set's cross K/V. */
export interface MllamaCrossState {
  /** Content hashes of the images, in order, joined: equal keys mean equal cross K/V. */
  key: string;
  /** Per cross-attention layer, in order. */
  kv: CrossKv[];
  /** u32 [images * T * P]: 0 on keys of tiles past an image's numTiles. */
  keyMask: Tensor;
  numImages: number;
}

/** What decode steps attend with: the images the last prompt row sees ([0, 0): none, r = 0). */
export interface MllamaDecodeRow {
  imageStart: number;
  imageEnd: number;
}

export class MllamaCache extends LayerCaches {
  /** null: no image set (text only; the cross layers are identity). */
  cross: MllamaCrossState | null = null;
  decodeRow: MllamaDecodeRow = { imageStart: 0, imageEnd: 0 };

  constructor(gpu: GpuContext, layers: KvCache[], maxSeq: number) {
    super(gpu, layers, maxSeq);
  }

  /** Replaces the image set (the old one's buffers go back to the pool). */
  setCross(cross: MllamaCrossState | null): void {
    this.releaseCross();
    this.cross = cross;
  }

  override dispose(): void {
    this.releaseCross();
    super.dispose();
  }

  /** The self-attention layers plus the image set's cross-attention K/V (all allocated, all used). */
  override memory(): { allocatedBytes: number; usedBytes: number } {
    const m = super.memory();
    for (const kv of this.cross?.kv ?? []) {
      const bytes = byteSize(kv.k) + byteSize(kv.v);
      m.allocatedBytes += bytes;
      m.usedBytes += bytes;
    }
    return m;
  }

  private releaseCross(): void {
    const c = this.cross;
    if (!c) return;
    for (const kv of c.kv) {
      this.gpu.pool.release(kv.k.buffer);
      this.gpu.pool.release(kv.v.buffer);
    }
    this.gpu.pool.release(c.keyMask.buffer);
    this.cross = null;
  }
}
