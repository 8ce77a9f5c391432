// Prefill and decode attention vs the f64 reference: the text decoder's causal shapes, the
// vision towers' segments, and every head dim the model families use (SigLIP 72, CLIP 64,
// Phi-3.5 96, mllama 80/128, Gemma-style 256) plus odd ones (3, 20, 36, 50) that exercise the
// partial last vec4 column and uneven column ownership; some under WebGPU's 16 KiB minimum
// workgroup storage so the smaller tiles run too. Masks beyond causal/segments:
// attention_masks.cases.ts.
import type { KernelCase } from "../util/cases.ts";
import { decodeCase, prefillCase } from "./attention_harness.ts";

// kv_cache.cases.ts reads these from here.
export { attentionReference, type HostView } from "./attention_harness.ts";

const KIB16 = 16384;

export const cases: KernelCase[] = [
  prefillCase({ name: "prefill causal D=128 GQA 1 (2/2) Sq=17", D: 128, hq: 2, hkv: 2, sq: 17, skv: 17, mask: { kind: "causal", past: 0 }, fused: false, amp: 1 }),
  prefillCase({ name: "prefill causal D=128 GQA 6 (12/2) Sq=17 past=23", D: 128, hq: 12, hkv: 2, sq: 17, skv: 40, mask: { kind: "causal", past: 23 }, fused: false, amp: 2 }),
  prefillCase({ name: "prefill causal D=80 GQA 2 (4/2) Sq=1 past=40", D: 80, hq: 4, hkv: 2, sq: 1, skv: 41, mask: { kind: "causal", past: 40 }, fused: false, amp: 2 }),
  prefillCase({ name: "prefill causal D=128 GQA 2 (2/1) Sq=300 past=9", D: 128, hq: 2, hkv: 1, sq: 300, skv: 309, mask: { kind: "causal", past: 9 }, fused: false, amp: 3 }),
  prefillCase({ name: "prefill causal D=80 GQA 1 (2/2) Sq=300 fused qkv", D: 80, hq: 2, hkv: 2, sq: 300, skv: 300, mask: { kind: "causal", past: 0 }, fused: true, amp: 2 }),
  prefillCase({ name: "segments [0,37,201,300] D=80 2 heads fused qkv (vision)", D: 80, hq: 2, hkv: 2, sq: 300, skv: 300, mask: { kind: "segments", cu: [0, 37, 201, 300] }, fused: true, amp: 3 }),
  prefillCase({ name: "segments [0,5,6,17] D=128 3 heads fused qkv", D: 128, hq: 3, hkv: 3, sq: 17, skv: 17, mask: { kind: "segments", cu: [0, 5, 6, 17] }, fused: true, amp: 2 }),

  // Head dims: tile 16x32 with 4 threads per row up to 128, 8 threads per row above.
  prefillCase({ name: "head dim 3: causal 2 heads Sq=6", D: 3, hq: 2, hkv: 2, sq: 6, skv: 6, mask: { kind: "causal", past: 0 }, fused: false, amp: 2 }),
  prefillCase({ name: "head dim 20: causal GQA 2 (4/2) Sq=19 past=5", D: 20, hq: 4, hkv: 2, sq: 19, skv: 24, mask: { kind: "causal", past: 5 }, fused: false, amp: 2 }),
  prefillCase({ name: "head dim 24: full 1 head Sq=7 fused", D: 24, hq: 1, hkv: 1, sq: 7, skv: 7, mask: { kind: "full" }, fused: true, amp: 2 }),
  prefillCase({ name: "head dim 36: causal GQA 3 (3/1) Sq=33", D: 36, hq: 3, hkv: 1, sq: 33, skv: 33, mask: { kind: "causal", past: 0 }, fused: false, amp: 2 }),
  prefillCase({ name: "head dim 40: segments [0,3,20] 2 heads fused", D: 40, hq: 2, hkv: 2, sq: 20, skv: 20, mask: { kind: "segments", cu: [0, 3, 20] }, fused: true, amp: 2 }),
  prefillCase({ name: "head dim 50: full Sq=5 over Skv=41 (cross) 2 heads", D: 50, hq: 2, hkv: 2, sq: 5, skv: 41, mask: { kind: "full" }, fused: false, amp: 2 }),
  prefillCase({ name: "head dim 64: full Sq=50 2 heads fused (CLIP)", D: 64, hq: 2, hkv: 2, sq: 50, skv: 50, mask: { kind: "full" }, fused: true, amp: 2 }),
  prefillCase({ name: "head dim 72: full Sq=37 2 heads fused (SigLIP)", D: 72, hq: 2, hkv: 2, sq: 37, skv: 37, mask: { kind: "full" }, fused: true, amp: 3 }),
  prefillCase({ name: "head dim 72: Sq=1 Skv=1", D: 72, hq: 1, hkv: 1, sq: 1, skv: 1, mask: { kind: "full" }, fused: false, amp: 1 }),
  prefillCase({ name: "head dim 96: causal GQA 4 (8/2) Sq=21 past=3 (Phi-3.5)", D: 96, hq: 8, hkv: 2, sq: 21, skv: 24, mask: { kind: "causal", past: 3 }, fused: false, amp: 2 }),
  prefillCase({ name: "head dim 256: causal GQA 2 (4/2) Sq=18 past=3", D: 256, hq: 4, hkv: 2, sq: 18, skv: 21, mask: { kind: "causal", past: 3 }, fused: false, amp: 2 }),
  prefillCase({ name: "head dim 200: full Sq=9 over 35 keys 1 head", D: 200, hq: 1, hkv: 1, sq: 9, skv: 35, mask: { kind: "full" }, fused: false, amp: 2 }),
  // 16 KiB of workgroup storage (the WebGPU minimum; SwiftShader offers 32 KiB).
  prefillCase({ name: "16 KiB: head dim 256 tile 4x8, causal GQA 2 (2/1) Sq=11 past=6", D: 256, hq: 2, hkv: 1, sq: 11, skv: 17, mask: { kind: "causal", past: 6 }, fused: false, amp: 2, limit: KIB16, tiles: { br: 4, bc: 8, tpr: 8 } }),
  prefillCase({ name: "16 KiB: head dim 128 tile 16x8, causal 2 heads Sq=20 past=13", D: 128, hq: 2, hkv: 2, sq: 20, skv: 33, mask: { kind: "causal", past: 13 }, fused: false, amp: 2, limit: KIB16, tiles: { br: 16, bc: 8, tpr: 4 } }),
  prefillCase({ name: "16 KiB: head dim 72 tile 16x16, full Sq=19 fused", D: 72, hq: 2, hkv: 2, sq: 19, skv: 19, mask: { kind: "full" }, fused: true, amp: 2, limit: KIB16, tiles: { br: 16, bc: 16, tpr: 4 } }),

  decodeCase({ name: "decode L=1 D=128 GQA 6 (12/2)", D: 128, hq: 12, hkv: 2, length: 1, amp: 2 }),
  decodeCase({ name: "decode L=17 D=80 GQA 2 (4/2)", D: 80, hq: 4, hkv: 2, length: 17, amp: 2 }),
  decodeCase({ name: "decode L=300 D=128 GQA 6 (12/2)", D: 128, hq: 12, hkv: 2, length: 300, amp: 3 }),
  decodeCase({ name: "decode L=2000 D=128 GQA 2 (4/2), 32 chunks", D: 128, hq: 4, hkv: 2, length: 2000, amp: 3 }),
  decodeCase({ name: "decode L=17000 D=80 GQA 1 (1/1), 133 chunks of 128", D: 80, hq: 1, hkv: 1, length: 17000, amp: 3 }),
  decodeCase({ name: "decode head dim 3 L=5 2 heads", D: 3, hq: 2, hkv: 2, length: 5, amp: 2 }),
  decodeCase({ name: "decode head dim 20 L=70 GQA 2 (4/2)", D: 20, hq: 4, hkv: 2, length: 70, amp: 2 }),
  decodeCase({ name: "decode head dim 36 L=130 GQA 3 (3/1)", D: 36, hq: 3, hkv: 1, length: 130, amp: 2 }),
  decodeCase({ name: "decode head dim 72 L=65 2 heads", D: 72, hq: 2, hkv: 2, length: 65, amp: 3 }),
  decodeCase({ name: "decode head dim 96 L=40 GQA 4 (8/2)", D: 96, hq: 8, hkv: 2, length: 40, amp: 2 }),
  decodeCase({ name: "decode head dim 256 L=100 GQA 8 (8/1)", D: 256, hq: 8, hkv: 1, length: 100, amp: 2, headsPerWorkgroup: 8 }),
  decodeCase({ name: "decode 16 KiB: head dim 256 GQA 8 (8/1) in 2 slices of 4 heads", D: 256, hq: 8, hkv: 1, length: 100, amp: 2, limit: KIB16, headsPerWorkgroup: 4 }),
  decodeCase({ name: "decode GQA 24 (24/1) head dim 16 in 2 slices of 12 heads", D: 16, hq: 24, hkv: 1, length: 33, amp: 2, headsPerWorkgroup: 12 }),

  // K/V stored as f16 pairs (an f16 KV cache or mllama's cross K/V): the reference sees the same
  // f16-rounded values, so the f32 tolerance holds. Odd head dims and fused column offsets take
  // the per-element path (element i in half i & 1 of word i >> 1).
  prefillCase({ name: "f16 K/V: prefill causal D=128 GQA 6 (12/2) Sq=17 past=23", D: 128, hq: 12, hkv: 2, sq: 17, skv: 40, mask: { kind: "causal", past: 23 }, fused: false, amp: 2, kvF16: true }),
  prefillCase({ name: "f16 K/V: prefill causal D=64 GQA 2 (2/1) Sq=3 past=8190 (long past)", D: 64, hq: 2, hkv: 1, sq: 3, skv: 8193, mask: { kind: "causal", past: 8190 }, fused: false, amp: 2, kvF16: true }),
  prefillCase({ name: "f16 K/V: prefill causal D=80 GQA 2 (4/2) Sq=300 past=9", D: 80, hq: 4, hkv: 2, sq: 300, skv: 309, mask: { kind: "causal", past: 9 }, fused: false, amp: 2, kvF16: true }),
  prefillCase({ name: "f16 K/V: head dim 3 causal 1 head Sq=9 fused (odd offsets)", D: 3, hq: 1, hkv: 1, sq: 9, skv: 9, mask: { kind: "causal", past: 0 }, fused: true, amp: 2, kvF16: true }),
  prefillCase({ name: "f16 K/V: head dim 36 causal GQA 3 (3/1) Sq=33 fused", D: 36, hq: 3, hkv: 1, sq: 33, skv: 33, mask: { kind: "causal", past: 0 }, fused: true, amp: 2, kvF16: true }),
  prefillCase({ name: "f16 K/V: cross ranges D=128 GQA 4 (8/2) Sq=6 over 40 keys, key mask", D: 128, hq: 8, hkv: 2, sq: 6, skv: 40, mask: { kind: "ranges", ranges: [[0, 0], [0, 20], [0, 40], [20, 40], [5, 5], [0, 40]] }, keep: Array.from({ length: 40 }, (_, j) => (j % 20 < 14 ? 1 : 0)), emptyRows: "attendAll", fused: false, amp: 2, kvF16: true }),
  prefillCase({ name: "f16 K/V 16 KiB: head dim 256 tile 4x8, causal GQA 2 (2/1) Sq=11 past=6", D: 256, hq: 2, hkv: 1, sq: 11, skv: 17, mask: { kind: "causal", past: 6 }, fused: false, amp: 2, limit: KIB16, tiles: { br: 4, bc: 8, tpr: 8 }, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode L=300 D=128 GQA 6 (12/2)", D: 128, hq: 12, hkv: 2, length: 300, amp: 3, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode L=8192 D=64 GQA 2 (2/1), 128 chunks of 64", D: 64, hq: 2, hkv: 1, length: 8192, amp: 3, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode L=8000 D=128 1 head, 125 chunks", D: 128, hq: 1, hkv: 1, length: 8000, amp: 3, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode L=17000 D=80 1 head, 133 chunks of 128", D: 80, hq: 1, hkv: 1, length: 17000, amp: 3, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode head dim 3 L=5 2 heads (odd offsets)", D: 3, hq: 2, hkv: 2, length: 5, amp: 2, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode head dim 36 L=130 GQA 3 (3/1)", D: 36, hq: 3, hkv: 1, length: 130, amp: 2, kvF16: true }),
  decodeCase({ name: "f16 K/V: decode D=128 GQA 4 (8/2) L=200 window [72, 200)", D: 128, hq: 8, hkv: 2, length: 200, amp: 2, keyRange: [72, 200], kvF16: true }),
  decodeCase({ name: "f16 K/V: decode 16 KiB head dim 256 GQA 8 (8/1) in 2 slices", D: 256, hq: 8, hkv: 1, length: 100, amp: 2, limit: KIB16, headsPerWorkgroup: 4, kvF16: true }),
];
