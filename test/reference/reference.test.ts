// Self-tests of the CPU reference (test/reference/qwen2vl_reference.ts):
// hand-checkable facts and self-consistency, on tiny random checkpoints that
// this file writes into a temp dir. Run:
//   node --import ./scripts/register-loaders.mjs --test test/reference/reference.test.ts
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  applyRotaryInPlace, argmax, embedTokens, erf, erfc, gelu, getRopeIndex, greedyGenerate, loadReferenceModel,
  mergeImageEmbeds, mropeCosSin, parseConfig, readSafetensorsFile, RefKVCache, rotateHalf, textForward,
  visionCuSeqlens, visionForward, visionPatchPositions, type Grid, type RefModel,
} from "./qwen2vl_reference.ts";
import { encodeSafetensors, rng, TINY, tinyConfigJson, uniform, writeTinyCheckpoint } from "./tiny_checkpoint.ts";

const TMP = mkdtempSync(join(tmpdir(), "qwen2vl-ref-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

const models = new Map<string, RefModel>();
function tinyModel(key: string, options: Parameters<typeof writeTinyCheckpoint>[1] = {}): RefModel {
  let m = models.get(key);
  if (!m) {
    const dir = join(TMP, key);
    writeTinyCheckpoint(dir, options);
    m = loadReferenceModel(dir);
    models.set(key, m);
  }
  return m;
}
const base = (): RefModel => tinyModel("base", { bf16Embed: true });
const untiedModel = (): RefModel => tinyModel("untied", { tied: false, seed: 2 });

// Special ids (QWEN2VL.md).
const VS = 151652, VE = 151653, IMG = 151655, VID = 151656, IM_START = 151644, IM_END = 151645;

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
function pixels(grid: Grid, seed: number): Float32Array {
  return uniform(grid[0] * grid[1] * grid[2] * 1176, 2, rng(seed));
}
function concat(...parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

// ---------------------------------------------------------------------------
test("erf / erfc / gelu against known values", () => {
  const known: [number, number][] = [
    [0, 0], [0.1, 0.1124629160182849], [0.5, 0.5204998778130465], [1, 0.8427007929497149],
    [1.5, 0.9661051464753108], [2, 0.9953222650189527], [2.5, 0.999593047982555],
    [3, 0.9999779095030014], [-3, -0.9999779095030014], [4, 0.9999999845827421], [6, 1], [-0.5, -0.5204998778130465],
    // glibc erf values around the series / continued-fraction switch (0.75) and elsewhere.
    [0.25, 0.2763263901682369], [0.75, 0.7111556336535151], [1.25, 0.9229001282564582], [1.75, 0.9866716712191824],
    [2.25, 0.9985372834133188], [2.75, 0.9998993780778803], [2.9999999999, 0.9999779095029875], [3.5, 0.9999992569016276],
    [5, 0.9999999999984626],
  ];
  for (const [x, want] of known) assert.ok(Math.abs(erf(x) - want) <= 1e-15, `erf(${x}) = ${erf(x)}, want ${want}`);
  assert.ok(Math.abs(erfc(3) - 2.209049699858544e-5) <= 1e-19, `erfc(3) = ${erfc(3)}`);
  assert.ok(Math.abs(erfc(1) - 0.15729920705028513) <= 1e-16, `erfc(1) = ${erfc(1)}`);
  assert.ok(Math.abs(erf(1e-10) - 1.1283791670955126e-10) <= 1e-25, `erf(1e-10) = ${erf(1e-10)}`);
  assert.ok(Math.abs(gelu(1) - 0.8413447460685429) <= 1e-15, `gelu(1) = ${gelu(1)}`);
  assert.ok(Math.abs(gelu(-1) - -0.15865525393145707) <= 1e-15, `gelu(-1) = ${gelu(-1)}`);
});

test("safetensors reader: F32, F16 (incl. subnormal/inf), BF16", () => {
  const f16 = Uint16Array.from([0x3c00, 0xc000, 0x0001, 0x0400, 0x7bff, 0x7c00, 0x3555]);
  const f16Want = [1, -2, 2 ** -24, 2 ** -14, 65504, Infinity, (1 + 341 / 1024) / 4];
  const bf16 = Uint16Array.from([0x3f80, 0xc0a0, 0x4049, 0x0000, 0x8000]);
  const bf16Want = [1, -5, 3.140625, 0, -0];
  const f32 = Float32Array.from([0.1, -7.25, 1e-30]);
  const path = join(TMP, "dtypes.safetensors");
  writeFileSync(path, encodeSafetensors([
    { name: "a", dtype: "F16", shape: [7], bits: f16 },
    { name: "b", dtype: "BF16", shape: [5, 1], bits: bf16 },
    { name: "c", dtype: "F32", shape: [1, 3], data: f32 },
  ]));
  const t = readSafetensorsFile(path);
  assert.deepEqual([...t.get("a")!.data], f16Want);
  assert.deepEqual(t.get("b")!.shape, [5, 1]);
  assert.deepEqual([...t.get("b")!.data], bf16Want);
  assert.deepEqual([...t.get("c")!.data], [...f32]);
  assert.equal(t.size, 3);
});

test("rotate_half: cat(-x2, x1); applied twice is -x; rotary keeps pair norms", () => {
  assert.deepEqual([...rotateHalf([1, 2, 3, 4, 5, 6])], [-4, -5, -6, 1, 2, 3]);
  const x = uniform(8, 1, rng(3));
  assert.deepEqual([...rotateHalf(rotateHalf(x))], [...x].map((v) => -v));
  const angles = [0.3, -1.2, 2.5, 4];
  const cos = Float32Array.from([...angles, ...angles].map(Math.cos));
  const sin = Float32Array.from([...angles, ...angles].map(Math.sin));
  const y = Float32Array.from(x);
  applyRotaryInPlace(y, 0, 8, cos, sin);
  for (let j = 0; j < 4; j++) {
    // (x_j, x_{j+4}) is rotated by angle j: y_j = x_j cos - x_{j+4} sin, y_{j+4} = x_{j+4} cos + x_j sin.
    assert.ok(Math.abs(y[j] - (x[j] * cos[j] - x[j + 4] * sin[j])) < 1e-6);
    assert.ok(Math.abs(y[j + 4] - (x[j + 4] * cos[j] + x[j] * sin[j])) < 1e-6);
  }
});

test("M-RoPE with three equal rows equals 1-D RoPE", () => {
  for (const [section, hd] of [[[1, 1, 2], 8], [[16, 24, 24], 128]] as [number[], number][]) {
    const tc = { ...base().config.text, headDim: hd, mropeSection: section, ropeTheta: 1e6 };
    for (const p of [0, 1, 7, 123, 4096, 30000]) {
      const { cos, sin } = mropeCosSin(tc, [p, p, p]);
      const q = uniform(hd, 1, rng(p + 1));
      const rotated = Float32Array.from(q);
      applyRotaryInPlace(rotated, 0, hd, cos, sin);
      for (let j = 0; j < hd / 2; j++) {
        // Plain RoPE (rotate_half convention): pair (j, j + hd/2) rotated by p * theta^(-2j/hd).
        const angle = p * 1e6 ** (-(2 * j) / hd);
        const tol = 1e-6 + Math.abs(angle) * 2e-7; // the reference rounds angles to f32 like torch
        assert.ok(Math.abs(cos[j] - Math.cos(angle)) < tol && Math.abs(cos[j + hd / 2] - Math.cos(angle)) < tol, `cos p=${p} j=${j}`);
        assert.ok(Math.abs(sin[j] - Math.sin(angle)) < tol && Math.abs(sin[j + hd / 2] - Math.sin(angle)) < tol, `sin p=${p} j=${j}`);
        const want0 = q[j] * Math.cos(angle) - q[j + hd / 2] * Math.sin(angle);
        const want1 = q[j + hd / 2] * Math.cos(angle) + q[j] * Math.sin(angle);
        assert.ok(Math.abs(rotated[j] - want0) < 4 * tol && Math.abs(rotated[j + hd / 2] - want1) < 4 * tol);
      }
    }
  }
});

test("M-RoPE sections: frequency j reads the t, h or w row per mrope_section (also for j + hd/2)", () => {
  const tc = { ...base().config.text, headDim: 128, mropeSection: [16, 24, 24], ropeTheta: 1e6 };
  const pos: [number, number, number] = [5, 11, 17];
  const { cos, sin } = mropeCosSin(tc, pos);
  const row = (j: number): number => (j < 16 ? pos[0] : j < 40 ? pos[1] : pos[2]);
  for (let j = 0; j < 64; j++) {
    const angle = row(j) * 1e6 ** (-(2 * j) / 128);
    for (const d of [j, j + 64]) {
      assert.ok(Math.abs(cos[d] - Math.cos(angle)) < 1e-5, `cos dim ${d}`);
      assert.ok(Math.abs(sin[d] - Math.sin(angle)) < 1e-5, `sin dim ${d}`);
    }
  }
  // Tiny layout [1,1,2], head_dim 8: dims 0,4 <- t; 1,5 <- h; 2,3,6,7 <- w.
  const small = mropeCosSin({ ...tc, headDim: 8, mropeSection: [1, 1, 2] }, pos);
  const rows = [0, 1, 2, 2, 0, 1, 2, 2];
  rows.forEach((r, d) => assert.ok(Math.abs(small.cos[d] - Math.cos(pos[r] * 1e6 ** (-(2 * (d % 4)) / 8))) < 1e-6, `dim ${d}`));
});

test("getRopeIndex: text, image grid (1,4,6), text — hand-computed positions", () => {
  const cfg = base().config;
  // [T T VS  6 x IMG  VE T T]: grid (1,4,6) -> 1 x 2 x 3 = 6 LLM tokens.
  const ids = [100, 101, VS, IMG, IMG, IMG, IMG, IMG, IMG, VE, 102, 103];
  const { positions, ropeDelta } = getRopeIndex(ids, [[1, 4, 6]], cfg);
  // Text 0,1,2 (VS is text). Image starts at s = 3: t = s+0; h = s+{0,0,0,1,1,1}; w = s+{0,1,2,0,1,2}.
  // Max = 5, so VE = 6, then 7, 8. rope_delta = 8 + 1 - 12 = -3.
  assert.deepEqual(positions[0], [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8]);
  assert.deepEqual(positions[1], [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8]);
  assert.deepEqual(positions[2], [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]);
  assert.equal(ropeDelta, -3);
});

test("getRopeIndex: video (2,4,4) then image (1,2,2), and text only", () => {
  const cfg = base().config;
  // [T VS 8 x VID VE VS 1 x IMG VE T]
  const ids = [100, VS, ...Array(8).fill(VID), VE, VS, IMG, VE, 101];
  const { positions, ropeDelta } = getRopeIndex(ids, [[1, 2, 2]], cfg, [[2, 4, 4]]);
  // T=0, VS=1; video at s=2: t = 2,2,2,2,3,3,3,3; h = 2,2,3,3,2,2,3,3; w = 2,3,2,3,2,3,2,3 (max 3);
  // VE=4, VS=5; image at s=6: (6,6,6); VE=7, T=8. L = 14, delta = 9 - 14 = -5.
  assert.deepEqual(positions[0], [0, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(positions[1], [0, 1, 2, 2, 3, 3, 2, 2, 3, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(positions[2], [0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(ids.length, 15);
  assert.equal(ropeDelta, 9 - 15);
  const text = getRopeIndex([5, 6, 7], [], cfg);
  assert.deepEqual(text.positions, [[0, 1, 2], [0, 1, 2], [0, 1, 2]]);
  assert.equal(text.ropeDelta, 0);
  assert.throws(() => getRopeIndex([VS, IMG, IMG, VE], [[1, 4, 6]], cfg)); // 2 pads for a 6-token grid
});

test("vision patch positions (merge-window order) and cu_seqlens", () => {
  const { hpos, wpos } = visionPatchPositions([[1, 4, 4]], 2);
  assert.deepEqual(hpos, [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]);
  assert.deepEqual(wpos, [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3]);
  const two = visionPatchPositions([[2, 2, 2]], 2); // repeated per temporal slice
  assert.deepEqual(two.hpos, [0, 0, 1, 1, 0, 0, 1, 1]);
  assert.deepEqual(two.wpos, [0, 1, 0, 1, 0, 1, 0, 1]);
  assert.deepEqual(visionCuSeqlens([[1, 4, 6], [2, 2, 2], [1, 2, 4]]), [0, 24, 28, 32, 40]);
});

test("vision: attention stays inside each image / temporal slice", () => {
  const m = base();
  const g1: Grid = [1, 4, 6], g2: Grid = [1, 2, 4], gv: Grid = [2, 2, 4];
  const p1 = pixels(g1, 11), p2 = pixels(g2, 12), pv = pixels(gv, 13);
  const both = visionForward(m, concat(p1, p2), [g1, g2]);
  const alone1 = visionForward(m, p1, [g1]);
  const alone2 = visionForward(m, p2, [g2]);
  assert.equal(both.length, (6 + 2) * 32);
  assert.equal(maxAbsDiff(both, concat(alone1, alone2)), 0);
  // Changing image 2 leaves image 1's embeddings untouched and changes image 2's.
  const changed = visionForward(m, concat(p1, pixels(g2, 99)), [g1, g2]);
  assert.equal(maxAbsDiff(changed.subarray(0, 6 * 32), alone1), 0);
  assert.ok(maxAbsDiff(changed.subarray(6 * 32), alone2) > 1e-3);
  // Video (2,2,4): each temporal slice is its own segment.
  const video = visionForward(m, pv, [gv]);
  const pv2 = Float32Array.from(pv);
  for (let i = 8 * 1176; i < pv2.length; i++) pv2[i] = -pv2[i]; // alter slice t = 1 only
  const video2 = visionForward(m, pv2, [gv]);
  assert.equal(maxAbsDiff(video.subarray(0, 2 * 32), video2.subarray(0, 2 * 32)), 0);
  assert.ok(maxAbsDiff(video.subarray(2 * 32), video2.subarray(2 * 32)) > 1e-3);
  // A segment's output does not depend on where it sits: slice t=0 of the video equals a 1-frame grid.
  const slice0 = visionForward(m, pv.subarray(0, 8 * 1176), [[1, 2, 4]]);
  assert.equal(maxAbsDiff(video.subarray(0, 2 * 32), slice0), 0);
});

test("vision tower on one 2x2 grid equals a hand-written pass (QWEN2VL.md recipe)", () => {
  const m = base();
  const { embedDim: e, headDim: hd, numHeads } = m.config.vision;
  const px = pixels([1, 2, 2], 41);
  const mv = (W: Float32Array, b: Float32Array | null, v: number[], out: number): number[] =>
    Array.from({ length: out }, (_, o) => v.reduce((s, a, k) => s + a * W[o * v.length + k], b ? b[o] : 0));
  const ln = (v: number[], w: Float32Array, b: Float32Array): number[] => {
    const mean = v.reduce((s, a) => s + a, 0) / v.length;
    const variance = v.reduce((s, a) => s + (a - mean) ** 2, 0) / v.length;
    return v.map((a, i) => ((a - mean) / Math.sqrt(variance + 1e-6)) * w[i] + b[i]);
  };
  // Patch embed: each 1176-wide row times the flattened Conv3d kernel.
  let x = [0, 1, 2, 3].map((i) => mv(m.vision.patchEmbed.weight, null, Array.from(px.subarray(i * 1176, (i + 1) * 1176)), e));
  // Patches of a 2x2 grid in window order are (row, col) = (0,0), (0,1), (1,0), (1,1).
  const rc = [[0, 0], [0, 1], [1, 0], [1, 1]];
  const invFreq = Array.from({ length: hd / 4 }, (_, j) => 10000 ** (-(2 * j) / (hd / 2)));
  const rotate = (v: number[], [r, c]: number[]): number[] => {
    const half = [...invFreq.map((f) => r * f), ...invFreq.map((f) => c * f)]; // hd/2 angles
    const ang = [...half, ...half];
    return v.map((a, d) => a * Math.cos(ang[d]) + (d < hd / 2 ? -v[d + hd / 2] : v[d - hd / 2]) * Math.sin(ang[d]));
  };
  for (const blk of m.vision.blocks) {
    const qkv = x.map((row) => mv(blk.qkv.weight, blk.qkv.bias, ln(row, blk.norm1.weight, blk.norm1.bias), 3 * e));
    const attn = x.map(() => [] as number[]);
    for (let h = 0; h < numHeads; h++) {
      const q = qkv.map((r, i) => rotate(r.slice(h * hd, (h + 1) * hd), rc[i]));
      const k = qkv.map((r, i) => rotate(r.slice(e + h * hd, e + (h + 1) * hd), rc[i]));
      const v = qkv.map((r) => r.slice(2 * e + h * hd, 2 * e + (h + 1) * hd));
      for (let i = 0; i < 4; i++) {
        const s = k.map((kj) => kj.reduce((acc, a, d) => acc + a * q[i][d], 0) / Math.sqrt(hd));
        const p = s.map((a) => Math.exp(a - Math.max(...s)));
        const z = p.reduce((acc, a) => acc + a, 0);
        attn[i].push(...v[0].map((_, d) => p.reduce((acc, pj, j) => acc + (pj / z) * v[j][d], 0)));
      }
    }
    x = x.map((row, i) => row.map((a, d) => a + mv(blk.proj.weight, blk.proj.bias, attn[i], e)[d]));
    x = x.map((row) => {
      const hidden = mv(blk.fc1.weight, blk.fc1.bias, ln(row, blk.norm2.weight, blk.norm2.bias), blk.fc1.outDim)
        .map((a) => a / (1 + Math.exp(-1.702 * a))); // quick_gelu
      const out = mv(blk.fc2.weight, blk.fc2.bias, hidden, e);
      return row.map((a, d) => a + out[d]);
    });
  }
  const merged = x.flatMap((row) => ln(row, m.vision.mergerLnQ.weight, m.vision.mergerLnQ.bias));
  const mid = mv(m.vision.mergerFc1.weight, m.vision.mergerFc1.bias, merged, 4 * e).map((a) => 0.5 * a * (1 + erf(a / Math.SQRT2)));
  const want = mv(m.vision.mergerFc2.weight, m.vision.mergerFc2.bias, mid, m.config.text.hiddenSize);
  const got = visionForward(m, px, [[1, 2, 2]]);
  const scale = want.reduce((s, a) => Math.max(s, Math.abs(a)), 0);
  assert.ok(maxAbsDiff(got, want) / scale < 1e-5, `max diff ${maxAbsDiff(got, want)} vs scale ${scale}`);
});

test("decoder on one token equals a hand-written pass (GQA head mapping, RMSNorm, SwiGLU)", () => {
  const m = base();
  const { hiddenSize: H, headDim: hd, numHeads, numKvHeads, rmsNormEps: eps } = m.config.text;
  const id = 4242;
  let x = Array.from(m.text.embedTokens.subarray(id * H, (id + 1) * H));
  const rms = (v: number[], w: Float32Array): number[] => {
    const r = 1 / Math.sqrt(v.reduce((s, a) => s + a * a, 0) / v.length + eps);
    return v.map((a, i) => a * r * w[i]);
  };
  const mv = (W: Float32Array, b: Float32Array | null, v: number[], out: number): number[] =>
    Array.from({ length: out }, (_, o) => v.reduce((s, a, k) => s + a * W[o * v.length + k], b ? b[o] : 0));
  for (const layer of m.text.layers) {
    const h = rms(x, layer.inputNorm);
    const v = mv(layer.v.weight, layer.v.bias, h, numKvHeads * hd);
    // One key: softmax weight 1, so head j's output is v of kv head floor(j / (heads / kvHeads)); rotary drops out.
    const attn: number[] = [];
    for (let j = 0; j < numHeads; j++) attn.push(...v.slice(Math.floor(j / (numHeads / numKvHeads)) * hd, (Math.floor(j / (numHeads / numKvHeads)) + 1) * hd));
    const o = mv(layer.o.weight, null, attn, H);
    x = x.map((a, i) => a + o[i]);
    const h2 = rms(x, layer.postAttentionNorm);
    const g = mv(layer.gate.weight, null, h2, layer.gate.outDim), u = mv(layer.up.weight, null, h2, layer.up.outDim);
    const down = mv(layer.down.weight, null, g.map((a, i) => (a / (1 + Math.exp(-a))) * u[i]), H);
    x = x.map((a, i) => a + down[i]);
  }
  const final = rms(x, m.text.norm);
  const want = mv(m.text.lmHead, null, final, m.config.text.vocabSize);
  const got = textForward(m, embedTokens(m, [id]), [[37], [2], [9]]);
  const scale = want.reduce((s, a) => Math.max(s, Math.abs(a)), 0);
  assert.ok(maxAbsDiff(got, want) / scale < 1e-5, `max diff ${maxAbsDiff(got, want)} vs scale ${scale}`);
});

// A ~100-token prompt with two images.
const G1: Grid = [1, 4, 6], G2: Grid = [1, 4, 4];
function prompt(): number[] {
  const text = (n: number, s: number): number[] => Array.from({ length: n }, (_, i) => 1000 + ((s + i * 37) % 5000));
  return [IM_START, ...text(30, 1), VS, ...Array(6).fill(IMG), VE, ...text(25, 2), VS, ...Array(4).fill(IMG), VE,
    ...text(30, 3), IM_END, IM_START, 77, 198];
}

test("KV-cache decoding equals full recomputation; chunked prefill equals one-shot", () => {
  const m = untiedModel(); // an untied lm_head makes greedy decoding pick varied tokens
  const ids = prompt();
  const pv = concat(pixels(G1, 21), pixels(G2, 22));
  const embeds = mergeImageEmbeds(m, ids, embedTokens(m, ids), visionForward(m, pv, [G1, G2]));
  const { positions, ropeDelta } = getRopeIndex(ids, [G1, G2], m.config);
  const V = m.config.text.vocabSize;
  const H = m.config.text.hiddenSize;
  assert.ok(ids.length >= 95 && ids.length <= 105, `prompt length ${ids.length}`);

  // Incremental: prefill, then 5 greedy steps at position cache index + rope_delta.
  const cache = new RefKVCache(m.config.text.numLayers);
  const stepLogits = [textForward(m, embeds, positions, cache, { lastOnly: true })];
  const generated: number[] = [];
  for (let s = 0; s < 5; s++) {
    generated.push(argmax(stepLogits[s]));
    const p = cache.length + ropeDelta;
    stepLogits.push(textForward(m, embedTokens(m, [generated[s]]), [[p], [p], [p]], cache, { lastOnly: true }));
  }
  generated.push(argmax(stepLogits[5]));
  assert.ok(new Set(generated).size > 1, `decoding should not repeat one token: ${generated}`);

  // Full recomputation over prompt + the first 5 generated tokens, positions from get_rope_index
  // of the longer sequence (the decoded tokens continue at max + 1 = cache index + rope_delta).
  const fullIds = [...ids, ...generated.slice(0, 5)];
  const full = getRopeIndex(fullIds, [G1, G2], m.config);
  for (let s = 0; s < 5; s++) for (let r = 0; r < 3; r++) assert.equal(full.positions[r][ids.length + s], ids.length + s + ropeDelta);
  const fullEmbeds = concat(embeds, embedTokens(m, generated.slice(0, 5)));
  const tail = textForward(m, fullEmbeds, full.positions, undefined, { logitsFrom: ids.length - 1 });
  assert.equal(tail.length, 6 * V);
  for (let s = 0; s <= 5; s++) {
    const row = tail.subarray(s * V, (s + 1) * V);
    assert.ok(maxAbsDiff(row, stepLogits[s]) < 1e-5, `step ${s}: ${maxAbsDiff(row, stepLogits[s])}`);
    assert.equal(argmax(row), generated[s]);
  }

  // Prefill in two chunks through the cache.
  const split = 50;
  const c2 = new RefKVCache(m.config.text.numLayers);
  textForward(m, embeds.subarray(0, split * H), positions.map((r) => r.slice(0, split)), c2, { lastOnly: true });
  const chunked = textForward(m, embeds.subarray(split * H), positions.map((r) => r.slice(split)), c2, { lastOnly: true });
  assert.ok(maxAbsDiff(chunked, stepLogits[0]) < 1e-5);

  // greedyGenerate does the same thing end to end.
  const out = greedyGenerate(m, ids, pv, [G1, G2], 6, []);
  assert.deepEqual(out.tokens, generated);
  assert.equal(out.ropeDelta, ropeDelta);
  assert.equal(maxAbsDiff(out.firstLogits, stepLogits[0]), 0);
  // eos stops generation and is included; maxNewTokens caps it.
  assert.deepEqual(greedyGenerate(m, ids, pv, [G1, G2], 6, [generated[0]]).tokens, [generated[0]]);
  assert.deepEqual(greedyGenerate(m, ids, pv, [G1, G2], 3, []).tokens, generated.slice(0, 3));
});

test("mergeImageEmbeds: replaces pads in order, throws on count mismatch", () => {
  const m = base();
  const H = m.config.text.hiddenSize;
  const ids = [5, IMG, 6, IMG, VID];
  const e = embedTokens(m, ids);
  const img = uniform(2 * H, 1, rng(5));
  const merged = mergeImageEmbeds(m, ids, e, img);
  assert.deepEqual([...merged.subarray(H, 2 * H)], [...img.subarray(0, H)]);
  assert.deepEqual([...merged.subarray(3 * H, 4 * H)], [...img.subarray(H)]);
  assert.deepEqual([...merged.subarray(0, H)], [...e.subarray(0, H)]);
  assert.deepEqual([...merged.subarray(4 * H)], [...e.subarray(4 * H)]);
  assert.throws(() => mergeImageEmbeds(m, ids, e, img.subarray(0, H)), /do not match/);
  const vid = mergeImageEmbeds(m, ids, e, img.subarray(0, H), VID);
  assert.deepEqual([...vid.subarray(4 * H)], [...img.subarray(0, H)]);
});

test("checkpoint spellings: released vs nested names, sharded, tied vs untied lm_head", () => {
  const released = base();
  const nested = tinyModel("nested", { naming: "nested", sharded: true });
  assert.deepEqual(released.unusedTensors, []);
  assert.deepEqual(nested.unusedTensors, []);
  assert.equal(released.text.lmHead, released.text.embedTokens);
  const ids = [IM_START, VS, ...Array(4).fill(IMG), VE, 500, 600];
  const pv = pixels(G2, 31);
  const a = greedyGenerate(released, ids, pv, [G2], 3, []);
  const b = greedyGenerate(nested, ids, pv, [G2], 3, []);
  assert.deepEqual(a.tokens, b.tokens);
  assert.equal(maxAbsDiff(a.firstLogits, b.firstLogits), 0);
  const untied = untiedModel();
  assert.notEqual(untied.text.lmHead, untied.text.embedTokens);
  const c = greedyGenerate(untied, ids, pv, [G2], 1, []);
  assert.ok(maxAbsDiff(c.firstLogits, a.firstLogits) > 1e-3);
});

test("config: text_config / rope_parameters spellings parse like the flat form", () => {
  const flat = tinyConfigJson(TINY, true);
  const { hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, rms_norm_eps, rope_scaling } = flat as Record<string, any>;
  const nested = {
    ...flat, rope_scaling: undefined, rope_theta: undefined,
    text_config: { hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, rms_norm_eps,
      rope_parameters: { rope_type: "default", rope_theta: 1000000.0, mrope_section: rope_scaling.mrope_section } },
  };
  assert.deepEqual(parseConfig(nested), parseConfig(flat));
  assert.throws(() => parseConfig({ ...flat, rope_scaling: { type: "mrope", mrope_section: [1, 1, 1] } }), /mrope_section/);
});
