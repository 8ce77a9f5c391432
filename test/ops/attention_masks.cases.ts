// Attention masks the next model families need, vs the f64 reference (attention_harness.ts):
// Sq != Skv (perceiver latents over [image | latents], text over vision keys), per-key padding
// masks (SigLIP / idefics2 padded patches, mllama padded tiles), per-row key ranges (mllama:
// each text row sees the image(s) it follows), mllama's vision mask that spares real query rows,
// and both rules for rows that see no key (zero, or transformers' attend-to-everything).
// Rows that see no key are also checked to be exactly zero.
import type { KernelCase } from "../util/cases.ts";
import { decodeCase, prefillCase } from "./attention_harness.ts";

/** 0/1 per key: `n` keys, zero at the listed [start, end) spans. */
function keepExcept(n: number, spans: [number, number][]): number[] {
  const keep = new Array<number>(n).fill(1);
  for (const [a, b] of spans) for (let j = a; j < b; j++) keep[j] = 0;
  return keep;
}

// mllama-like cross attention: 2 images x 2 tiles x 8 keys = 32 keys; image 1 has one real tile,
// so keys 24..31 are a padded tile. Text rows: 0-2 before any image (empty), 3-7 see image 0,
// 8-10 image 1, 11-12 both (consecutive image tokens), 13 only the padded tile (non-empty range,
// everything key-masked: zeros under either rule).
const crossRanges: [number, number][] = [
  [0, 0], [0, 0], [0, 0],
  [0, 16], [0, 16], [0, 16], [0, 16], [0, 16],
  [16, 32], [16, 32], [16, 32],
  [0, 32], [0, 32],
  [24, 32],
];
const crossKeep = keepExcept(32, [[24, 32]]);

// mllama vision: 3 tiles x (5 real + 3 padding patches), tile 2 entirely padding.
const tileKeep = keepExcept(24, [[5, 8], [13, 16], [16, 24]]);

export const cases: KernelCase[] = [
  // idefics2 perceiver: 9 latents over 30 image positions (7 padded) + 9 latents, GQA 4 (4/1), D=96.
  prefillCase({
    name: "perceiver: full Sq=9 over Skv=39, key mask (7 padded), GQA 4 (4/1) D=96",
    D: 96, hq: 4, hkv: 1, sq: 9, skv: 39, mask: { kind: "full" }, keep: keepExcept(39, [[23, 30]]), fused: false, amp: 3,
  }),
  // SigLIP with a patch mask: every query row (padded ones too) sees only real keys.
  prefillCase({
    name: "SigLIP: full Sq=Skv=37 fused, key mask on 2 spans, D=72",
    D: 72, hq: 2, hkv: 2, sq: 37, skv: 37, mask: { kind: "full" }, keep: keepExcept(37, [[0, 2], [30, 37]]), fused: true, amp: 3,
  }),
  prefillCase({
    name: "mllama cross: ranges Sq=14 over 32 keys, padded tile masked, empty rows zero, GQA 2 (4/2) D=128",
    D: 128, hq: 4, hkv: 2, sq: 14, skv: 32, mask: { kind: "ranges", ranges: crossRanges }, keep: crossKeep, fused: false, amp: 3,
  }),
  prefillCase({
    name: "mllama cross: same, empty rows attend to all keys (transformers)",
    D: 128, hq: 4, hkv: 2, sq: 14, skv: 32, mask: { kind: "ranges", ranges: crossRanges }, keep: crossKeep, emptyRows: "attendAll", fused: false, amp: 3,
  }),
  prefillCase({
    name: "ranges: non-monotone rows, lo > hi, ranges past Skv (clamped), D=40 Sq=20",
    D: 40, hq: 2, hkv: 1, sq: 20, skv: 45,
    mask: { kind: "ranges", ranges: Array.from({ length: 20 }, (_, i): [number, number] => (i % 5 === 4 ? [9, 3] : [(i * 7) % 30, (i * 7) % 30 + 5 + i])) },
    fused: false, amp: 2,
  }),
  prefillCase({
    name: "ranges: one text row over one key, D=20",
    D: 20, hq: 2, hkv: 2, sq: 1, skv: 1, mask: { kind: "ranges", ranges: [[0, 1]] }, fused: false, amp: 2,
  }),
  prefillCase({
    name: "mllama vision: maskedRows key mask, Sq=Skv=24 fused, D=80",
    D: 80, hq: 2, hkv: 2, sq: 24, skv: 24, mask: { kind: "full" }, keep: tileKeep, keepRows: "maskedRows", fused: true, amp: 3,
  }),
  prefillCase({
    name: "segments [0,11,30] + key mask, D=64 fused",
    D: 64, hq: 2, hkv: 2, sq: 30, skv: 30, mask: { kind: "segments", cu: [0, 11, 30] }, keep: keepExcept(30, [[3, 6], [25, 30]]), fused: true, amp: 2,
  }),
  prefillCase({
    name: "causal past=4 + key mask (left padding), D=128 GQA 2 (4/2) Sq=20",
    D: 128, hq: 4, hkv: 2, sq: 20, skv: 24, mask: { kind: "causal", past: 4 }, keep: keepExcept(24, [[0, 6]]), fused: false, amp: 2,
  }),
  prefillCase({
    name: "segments: rows past cu[n] get zeros, D=36",
    D: 36, hq: 1, hkv: 1, sq: 12, skv: 12, mask: { kind: "segments", cu: [0, 4, 9] }, fused: true, amp: 2,
  }),
  prefillCase({
    name: "segments: rows past cu[n] attendAll, D=36",
    D: 36, hq: 1, hkv: 1, sq: 12, skv: 12, mask: { kind: "segments", cu: [0, 4, 9] }, emptyRows: "attendAll", fused: true, amp: 2,
  }),

  // Decode: one text row over cross-attention keys (mllama keeps the last prompt row's mask).
  decodeCase({ name: "decode range [16, 32) + padded-tile key mask, GQA 4 (8/2) D=128", D: 128, hq: 8, hkv: 2, length: 32, keyRange: [16, 32], keep: crossKeep, amp: 3 }),
  decodeCase({ name: "decode range [5, 150) of 200, key mask, D=72", D: 72, hq: 2, hkv: 2, length: 200, keyRange: [5, 150], keep: keepExcept(200, [[0, 10], [60, 130]]), amp: 3 }),
  decodeCase({ name: "decode empty range: zero, GQA 2 (4/2) D=80", D: 80, hq: 4, hkv: 2, length: 40, keyRange: [0, 0], keep: keepExcept(40, [[30, 40]]), amp: 2 }),
  decodeCase({ name: "decode empty range: attendAll (transformers), GQA 2 (4/2) D=80", D: 80, hq: 4, hkv: 2, length: 40, keyRange: [0, 0], keep: keepExcept(40, [[30, 40]]), emptyRows: "attendAll", amp: 2 }),
  decodeCase({ name: "decode every key masked: zero, D=50", D: 50, hq: 1, hkv: 1, length: 70, keep: keepExcept(70, [[0, 70]]), amp: 2 }),
  decodeCase({ name: "decode key mask over 3000 keys (47 chunks), D=64", D: 64, hq: 2, hkv: 1, length: 3000, keep: keepExcept(3000, [[100, 2900]]), amp: 3 }),
];
