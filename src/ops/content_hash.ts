import code from "../../shaders/content_hash.wgsl?raw";
import type { GpuContext } from "../gpu/device.ts";
import { grid2d, packUniforms, Recorder } from "../gpu/recorder.ts";
import { byteSize, type Tensor } from "../gpu/tensor.ts";
import { allocTensor, readTensor } from "../gpu/transfer.ts";
import { contentHash } from "../models/common/content_hash.ts";

/** Words one workgroup of content_hash.wgsl hashes. */
export const HASH_BLOCK_WORDS = 4096;

/**
 * A content key of the tensors' bytes (in order) computed on the GPU: each 4096-word block is
 * hashed there and only the block hashes (8 bytes per 16 KiB) come back, folded with
 * contentHash. Equal contents give equal keys; submits its own work and waits for it.
 */
export async function gpuContentHash(ctx: GpuContext, tensors: readonly Tensor[]): Promise<string> {
  const rec = new Recorder(ctx);
  const outs: Tensor[] = [];
  for (const t of tensors) {
    const n = byteSize(t) / 4;
    const blocks = Math.max(1, Math.ceil(n / HASH_BLOCK_WORDS));
    const out = allocTensor(ctx, [blocks * 2], "u32", "content_hash");
    rec.dispatch({
      code,
      uniforms: packUniforms("u", n),
      bindings: [{ buffer: t.buffer, offset: t.offset, size: byteSize(t) }, out],
      workgroups: grid2d(blocks, ctx.limits.maxComputeWorkgroupsPerDimension),
      label: "content_hash",
    });
    outs.push(out);
  }
  rec.submit();
  const parts: Uint32Array[] = [];
  for (const [i, out] of outs.entries()) {
    parts.push(Uint32Array.of(byteSize(tensors[i]) / 4), (await readTensor(ctx, out)) as Uint32Array);
    ctx.pool.release(out.buffer);
  }
  return contentHash(parts);
}

/** The same block hashes on the CPU (the reference for the kernel's test). */
export function blockHashesCpu(words: Uint32Array): Uint32Array {
  const blocks = Math.max(1, Math.ceil(words.length / HASH_BLOCK_WORDS));
  const out = new Uint32Array(blocks * 2);
  const mix = (h: [number, number], w: number): [number, number] => [
    Math.imul(h[0] ^ w, 0x01000193) >>> 0,
    (Math.imul(h[1] ^ w, 0x5bd1e995) ^ (h[1] >>> 15)) >>> 0,
  ];
  for (let b = 0; b < blocks; b++) {
    let f: [number, number] = [(0x811c9dc5 ^ b) >>> 0, 0x01000193];
    for (let t = 0; t < 256; t++) {
      let h: [number, number] = [0x811c9dc5, 0x01000193];
      for (let k = 0; k < 16; k++) {
        const i = b * HASH_BLOCK_WORDS + t * 16 + k;
        if (i < words.length) h = mix(h, words[i]);
      }
      f = mix(f, h[0]);
      f = mix(f, h[1]);
    }
    out[2 * b] = f[0];
    out[2 * b + 1] = f[1];
  }
  return out;
}
