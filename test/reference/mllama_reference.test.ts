// Self-tests of the Llama 3.2 Vision CPU reference (test/reference/mllama_reference.ts):
// hand-checkable facts of MLLAMA.md and self-consistency, on the tiny checkpoints of
// scripts/make_tiny_mllama.ts written into a temp dir. Run:
//   node --import ./scripts/register-loaders.mjs --test test/reference/mllama_reference.test.ts
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { makeTinyMllama, mllamaSupportedAspectRatios, tinyMllamaTensors } from "../../scripts/make_tiny_mllama.ts";
import { buildRefDecoder, RefDecoderCache, refDecoderConfig, refDecoderForward } from "./ref_decoder.ts";
import { readSafetensorsDir, type RefTensor } from "./safetensors_min.ts";
import {
  crossAttentionDenseMask, crossAttentionRows, crossAttentionSpans, embedTokens, lmHeadRow, loadMllamaReference, mllamaArgmax,
  mllamaFileName, mllamaInvFreq, mllamaLogSoftmax, parseMllamaConfig, RefMllamaCache, textForward, visionAttentionMask,
  visionImageForward, visionPaddingFlags, type CrossAttentionRow, type MllamaReference,
} from "./mllama_reference.ts";

const TMP = mkdtempSync(join(tmpdir(), "mllama-ref-"));
after(() => rmSync(TMP, { recursive: true, force: true }));
const DIR_A = join(TMP, "tiny-a");
const DIR_B = join(TMP, "tiny-b");
const DIR_A_NEW = join(TMP, "tiny-a-new");
let refA: MllamaReference;
let refB: MllamaReference;
/** Each checkpoint's tensors, read once: variants (transforms, the plain-Llama view) reuse them. */
const tensorsOf = new Map<string, Map<string, RefTensor>>();
before(async () => {
  await makeTinyMllama("tiny-a", DIR_A);
  await makeTinyMllama("tiny-b", DIR_B);
  await makeTinyMllama("tiny-a", DIR_A_NEW, { layout: "new" });
  for (const dir of [DIR_A, DIR_B]) tensorsOf.set(dir, readSafetensorsDir(dir));
  refA = loadMllamaReference(DIR_A, { tensors: tensorsOf.get(DIR_A) });
  refB = loadMllamaReference(DIR_B, { tensors: tensorsOf.get(DIR_B) });
});
/** A variant of tiny-a with some tensors replaced (same files, no re-read). */
const variantA = (transform: (name: string, data: Float32Array) => Float32Array): MllamaReference =>
  loadMllamaReference(DIR_A, { tensors: tensorsOf.get(DIR_A), transform });

const IMG = 128256;
const F32_MIN = -3.4028234663852886e38;

/** Deterministic values in [-1, 1] (as normalized pixels are). */
function noise(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1;
  }
  return out;
}

interface Images { pv: Float32Array; ids: number[]; mask: number[]; tiles: number[]; n: number }

/** Processor-shaped inputs: image k has tiles[k] noise tiles (seeded), the rest exact zeros; ids from (rows, cols). */
function images(ref: MllamaReference, specs: { rows: number; cols: number; seed: number }[]): Images {
  const v = ref.config.vision;
  const T = v.maxNumTiles;
  const per = 3 * v.tileSize * v.tileSize;
  const pv = new Float32Array(specs.length * T * per);
  const ids: number[] = [];
  const mask: number[] = [];
  const tiles: number[] = [];
  specs.forEach(({ rows, cols, seed }, i) => {
    const nt = rows * cols;
    pv.set(noise(nt * per, seed), i * T * per);
    const id = v.supportedAspectRatios.findIndex(([a, b]) => a === rows && b === cols) + 1;
    assert.ok(id > 0, `(${rows}, ${cols}) not supported`);
    ids.push(id);
    for (let t = 0; t < T; t++) mask.push(t < nt ? 1 : 0);
    tiles.push(nt);
  });
  return { pv, ids, mask, tiles, n: specs.length };
}
const cross = (ref: MllamaReference, im: Images): Float32Array => ref.crossStates(im.pv, im.ids, im.mask, im.n);

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// Both checkpoints carry the same tokenizer and template: prompts go through tiny-a's (one tokenizer load).
const userImagePrompt = (text: string): number[] =>
  refA.promptIds(refA.renderPrompt([{ role: "user", content: [{ type: "image" }, { type: "text", text }] }]));

// ---------------------------------------------------------------- §1 config, §2 names
test("§1 config: derived vision sizes, aspect ratios, eos ids, image token, embed rows = vocab + 8", () => {
  const a = refA.config;
  assert.equal(a.vision.numPatches, 17);
  assert.equal(a.vision.paddedPatches, 24);
  assert.equal(a.vision.outputDim, 32 * 3);
  assert.equal(refB.config.vision.numPatches, 26);
  assert.equal(refB.config.vision.paddedPatches, 32);
  assert.deepEqual(refB.config.vision.supportedAspectRatios, [[1, 1], [1, 2], [2, 1]]);
  assert.deepEqual(a.eosTokenIds, [128001, 128008, 128009]);
  assert.equal(a.imageTokenId, IMG);
  assert.equal(refA.weights.embedRows, 128264);
  assert.equal(refA.config.text.numKvHeads, 2);
  assert.equal(refB.config.text.numKvHeads, 4);
  assert.deepEqual(refA.unusedTensors, []);
  assert.deepEqual(refB.unusedTensors, []);
  // 11B defaults and the attention_heads alias.
  const d = parseMllamaConfig({ vision_config: { image_size: 560, num_attention_heads: 16 } });
  assert.equal(d.vision.numPatches, 1601);
  assert.equal(d.vision.paddedPatches, 1608);
  assert.equal(d.vision.outputDim, 7680);
  assert.equal(d.vision.headDim, 80);
  assert.deepEqual(d.text.crossAttentionLayers, [3, 8, 13, 18, 23, 28, 33, 38]);
  assert.deepEqual(mllamaSupportedAspectRatios(4), [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]);
});

test("§2 both layouts: new names are the old ones re-prefixed, and the two checkpoints give identical outputs", () => {
  assert.equal(mllamaFileName("language_model.model.layers.1.cross_attn.q_norm.weight", "new"), "model.language_model.layers.1.cross_attn.q_norm.weight");
  assert.equal(mllamaFileName("language_model.lm_head.weight", "new"), "lm_head.weight");
  assert.equal(mllamaFileName("vision_model.class_embedding", "new"), "model.vision_model.class_embedding");
  assert.equal(mllamaFileName("multi_modal_projector.bias", "new"), "model.multi_modal_projector.bias");
  const oldNames = tinyMllamaTensors("tiny-a", "old").map((t) => t.name);
  const newNames = tinyMllamaTensors("tiny-a", "new").map((t) => t.name);
  assert.deepEqual(newNames, oldNames.map((n) => mllamaFileName(n, "new")));
  assert.ok(oldNames.includes("language_model.model.layers.1.cross_attn_attn_gate"));
  assert.ok(!oldNames.some((n) => n.startsWith("language_model.model.layers.1.self_attn")), "a cross layer has no self_attn tensors");

  const refNew = loadMllamaReference(DIR_A_NEW);
  assert.equal(refNew.layout, "new");
  assert.equal(refA.layout, "old");
  assert.deepEqual(refNew.unusedTensors, []);
  const im = images(refA, [{ rows: 1, cols: 2, seed: 5 }]);
  const csOld = cross(refA, im);
  const csNew = cross(refNew, im);
  assert.deepEqual(csNew, csOld);
  const ids = [128000, 128006, 882, 128007, 271, IMG, 3923, 374, 420, 30, 128009, 128006, 78191, 128007, 271];
  assert.deepEqual(refNew.logits(ids, csNew, im.tiles), refA.logits(ids, csOld, im.tiles));
});

// ---------------------------------------------------------------- §4 vision
test("§4.7 padding mask: pad positions and masked tiles are padding; only padding-padding pairs are masked", () => {
  // T = 2 tiles, P = 3 real tokens padded to L = 8; tile 1 is a padded tile (aspect_ratio_mask 0).
  const pad = visionPaddingFlags([1, 0], 3, 8);
  assert.deepEqual([...pad], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  const m = visionAttentionMask([1, 0], 3, 8);
  const at = (i: number, j: number): number => m[i * 16 + j];
  assert.equal(at(0, 0), 0);
  assert.equal(at(0, 5), 0, "real tokens attend pad positions");
  assert.equal(at(1, 9), 0, "real tokens attend tokens of padded tiles");
  assert.equal(at(5, 0), 0, "padding attends real tokens");
  assert.equal(at(9, 2), 0);
  assert.equal(at(5, 6), F32_MIN);
  assert.equal(at(9, 4), F32_MIN);
  assert.equal(at(12, 12), F32_MIN);
  let masked = 0;
  for (const x of m) if (x !== 0) masked++;
  assert.equal(masked, 13 * 13);
  // Both tiles real: only the 5 pad positions per tile are padding.
  assert.equal(visionPaddingFlags([1, 1], 3, 8).reduce((s, x) => s + x, 0), 10);
});

test("§4 vision: taps are local-layer inputs, interleaved d*K + k, pads dropped; hidden[0] is zero at pad positions", () => {
  const c = refA.config;
  const v = c.vision;
  const im = images(refA, [{ rows: 2, cols: 1, seed: 11 }]);
  const out = visionImageForward(c, refA.weights, im.pv, im.ids[0], im.mask);
  const D = v.hiddenSize, P = v.numPatches, L = v.paddedPatches, K = v.intermediateLayersIndices.length;
  assert.equal(out.hidden.length, v.numLayers + 1);
  assert.equal(out.features.length, v.maxNumTiles * P * D * (K + 1));
  for (let t = 0; t < v.maxNumTiles; t++) for (let l = P; l < L; l++) for (let d = 0; d < D; d++) assert.equal(out.hidden[0][(t * L + l) * D + d], 0);
  for (const [t, q] of [[0, 0], [1, 16], [3, 5]]) {
    for (let d = 0; d < D; d++) {
      for (let k = 0; k < K; k++) {
        assert.equal(out.features[(t * P + q) * D * (K + 1) + D + d * K + k], out.hidden[v.intermediateLayersIndices[k]][(t * L + q) * D + d]);
      }
    }
  }
  // Exported features = visionFeatures; cross states = projector of them.
  assert.deepEqual(refA.visionFeatures(im.pv, im.ids, im.mask, 1), out.features);
});

test("§4 vision: the aspect-ratio id matters; real tokens see padded tiles; images are independent", () => {
  const v = refA.config.vision;
  const per = 3 * v.tileSize * v.tileSize;
  const im = images(refA, [{ rows: 1, cols: 2, seed: 21 }]);
  const base = refA.visionFeatures(im.pv, im.ids, im.mask, 1);
  assert.ok(maxAbsDiff(base, refA.visionFeatures(im.pv, [5], im.mask, 1)) > 1e-3, "id 2 (1x2) vs id 5 (2x1)");
  // Change a padded tile (mask 0): tile 0's real tokens attend it, so their features change.
  const pv2 = im.pv.slice();
  pv2.set(noise(per, 99), 3 * per);
  const changed = refA.visionFeatures(pv2, im.ids, im.mask, 1);
  const tile0 = v.numPatches * v.outputDim;
  assert.ok(maxAbsDiff(base.subarray(0, tile0), changed.subarray(0, tile0)) > 1e-4);
  // Two images = each image alone, concatenated.
  const two = images(refA, [{ rows: 1, cols: 2, seed: 21 }, { rows: 2, cols: 2, seed: 22 }]);
  const second = images(refA, [{ rows: 2, cols: 2, seed: 22 }]);
  const both = cross(refA, two);
  const n1 = both.length / 2;
  assert.deepEqual(both.subarray(0, n1), cross(refA, im));
  assert.deepEqual(both.subarray(n1), cross(refA, second));
  assert.equal(both.length, 2 * v.maxNumTiles * v.numPatches * refA.config.text.hiddenSize);
});

// ---------------------------------------------------------------- §6 cross-attention mask
test("§6.1 spans: one image to the end; separated images end at the next; consecutive images share the group's end", () => {
  assert.deepEqual(crossAttentionSpans([1, IMG, 2, 3], IMG), [[1, 4]]);
  assert.deepEqual(crossAttentionSpans([1, IMG, 2, IMG, 3], IMG), [[1, 3], [3, 5]]);
  assert.deepEqual(crossAttentionSpans([1, IMG, IMG, 2, 3], IMG), [[1, 5], [2, 5]]);
  assert.deepEqual(crossAttentionSpans([IMG, IMG, 1, IMG, 2], IMG), [[0, 3], [1, 3], [3, 5]]);
  assert.deepEqual(crossAttentionSpans([IMG, IMG, IMG], IMG), [[0, 3], [1, 3], [2, 3]]);
  assert.deepEqual(crossAttentionSpans([1, 2, IMG], IMG), [[2, 3]]);
  assert.deepEqual(crossAttentionSpans([1, 2, 3], IMG), []);
});

test("§6.2-4 dense mask and rows: tiles beyond num_tiles masked; rows before the first image attend every key", () => {
  // T = 4, P = 2; image 0 has 2 tiles, image 1 has 1.
  const ids = [7, 8, IMG, 9, IMG, 10];
  const dense = crossAttentionDenseMask(ids, IMG, [2, 1], 4);
  const row = (s: number): number[] => [...dense.subarray(s * 8, (s + 1) * 8)];
  assert.deepEqual(row(0), [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(row(2), [1, 1, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(row(3), [1, 1, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(row(4), [0, 0, 0, 0, 1, 0, 0, 0]);
  assert.deepEqual(row(5), [0, 0, 0, 0, 1, 0, 0, 0]);
  const rows: CrossAttentionRow[] = crossAttentionRows(dense, ids.length, 2, 4, 2);
  assert.deepEqual(rows.map((r) => r.r), [0, 0, 1, 1, 1, 1]);
  assert.deepEqual([...rows[0].allowed], new Array(16).fill(1), "pre-image rows: every key, padded tiles included");
  assert.deepEqual([...rows[3].allowed], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...rows[5].allowed], [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
  assert.throws(() => crossAttentionDenseMask(ids, IMG, [2], 4), /2 image tokens for 1 images/);
});

// ---------------------------------------------------------------- §7 rope
test("§7 llama3 rope: high band kept, low band divided by factor, the medium band blended (spec formula, f64)", () => {
  for (const ref of [refA, refB]) {
    const rope = ref.config.text.rope;
    assert.equal(rope.type, "llama3");
    if (rope.type !== "llama3") return;
    const d = ref.config.text.headDim;
    const inv = mllamaInvFreq(ref.config);
    const lo = rope.oldContext / rope.low;
    const hi = rope.oldContext / rope.high;
    const bands = new Set<string>();
    for (let j = 0; j < d / 2; j++) {
      const plain: number = 1 / rope.base ** ((2 * j) / d);
      const wl = (2 * Math.PI) / plain;
      let want: number;
      if (wl > lo) { want = plain / rope.factor; bands.add("low"); }
      else if (wl < hi) { want = plain; bands.add("high"); }
      else {
        const s = (rope.oldContext / wl - rope.low) / (rope.high - rope.low);
        want = ((1 - s) * plain) / rope.factor + s * plain;
        assert.ok(want > plain / rope.factor && want < plain, `medium band j=${j} strictly between`);
        bands.add("medium");
      }
      assert.ok(Math.abs(inv[j] - want) <= 2e-6 * want, `j=${j}: ${inv[j]} vs ${want}`);
    }
    assert.deepEqual([...bands].sort(), ["high", "low", "medium"], "the tiny configs reach all three bands");
  }
});

// ---------------------------------------------------------------- §7 decoder
/** The mllama checkpoint's self-attention layers as a plain Llama for ref_decoder.ts (cross layers dropped). */
function asPlainLlama(dir: string, ref: MllamaReference): ReturnType<typeof buildRefDecoder> {
  const t = ref.config.text;
  const src = tensorsOf.get(dir)!;
  const map = new Map<string, RefTensor>();
  const selfLayers = Array.from({ length: t.numLayers }, (_, i) => i).filter((i) => !t.crossAttentionLayers.includes(i));
  selfLayers.forEach((from, to) => {
    for (const [name, tensor] of src) {
      const prefix = `language_model.model.layers.${from}.`;
      if (name.startsWith(prefix)) map.set(`model.layers.${to}.${name.slice(prefix.length)}`, tensor);
    }
  });
  map.set("model.embed_tokens.weight", src.get("language_model.model.embed_tokens.weight")!);
  map.set("model.norm.weight", src.get("language_model.model.norm.weight")!);
  map.set("lm_head.weight", src.get("language_model.lm_head.weight")!);
  const rs = t.rope.type === "llama3" ? { rope_type: "llama3", factor: t.rope.factor, low_freq_factor: t.rope.low, high_freq_factor: t.rope.high, original_max_position_embeddings: t.rope.oldContext } : null;
  const cfg = refDecoderConfig({
    model_type: "llama", hidden_size: t.hiddenSize, intermediate_size: t.intermediateSize, num_hidden_layers: selfLayers.length,
    num_attention_heads: t.numHeads, num_key_value_heads: t.numKvHeads, vocab_size: t.vocabSize, rms_norm_eps: t.rmsNormEps,
    rope_theta: t.rope.base, rope_scaling: rs, tie_word_embeddings: false,
  });
  return buildRefDecoder(cfg, map);
}

test("§6.6 text-only request = plain Llama 3.1 over the self-attention layers (ref_decoder.ts); zero gates make cross layers identity", () => {
  for (const [dir, ref] of [[DIR_A, refA], [DIR_B, refB]] as const) {
    const llama = asPlainLlama(dir, ref);
    const ids = refA.promptIds(refA.renderPrompt([{ role: "user", content: "What is in this picture?" }], { dateString: "26 Jul 2024" }));
    const plain = refDecoderForward(llama, ids, new RefDecoderCache(llama.config.layers));
    assert.ok(maxAbsDiff(ref.logits(ids, null, []), plain) <= 1e-5, dir);
  }
  // With both cross gates 0, an image prompt (the <|image|> row embedded like any token) is plain Llama too.
  const zeroGates = variantA((name, data) => (/cross_attn_(attn|mlp)_gate$/.test(name) ? new Float32Array(data.length) : data));
  const im = images(refA, [{ rows: 2, cols: 2, seed: 3 }]);
  const ids = userImagePrompt("Describe it.");
  const llama = asPlainLlama(DIR_A, refA);
  assert.ok(maxAbsDiff(zeroGates.logits(ids, cross(zeroGates, im), im.tiles), refDecoderForward(llama, ids, new RefDecoderCache(llama.config.layers))) <= 1e-5);
});

test("§7 r multiplies only the cross-attention MLP: rows before the first image still get the gated attention", () => {
  const noAttnGate = variantA((name, data) => (/cross_attn_attn_gate$/.test(name) ? new Float32Array(data.length) : data));
  const im = images(refA, [{ rows: 1, cols: 1, seed: 8 }]);
  const prefix = [128000, 128006, 882, 128007, 271, 3923];
  const run = (ref: MllamaReference, states: Float32Array): Float32Array => {
    const P = ref.config.vision.numPatches;
    const keys = states.length / ref.config.text.hiddenSize;
    assert.equal(keys, ref.config.vision.maxNumTiles * P);
    // Every row of a text-before-image prefix has r = 0 and attends all keys (§6.4).
    const rows: CrossAttentionRow[] = prefix.map(() => ({ allowed: new Uint8Array(keys).fill(1), r: 0 }));
    const h = textForward(ref.config, ref.weights, embedTokens(ref.config, ref.weights, prefix), new RefMllamaCache(ref.config.text.numLayers), { states, rows });
    return lmHeadRow(ref.config, ref.weights, h);
  };
  const textOnly = refA.logits(prefix, null, []);
  assert.ok(maxAbsDiff(run(refA, cross(refA, im)), textOnly) > 1e-3, "attention output reaches pre-image rows");
  assert.ok(maxAbsDiff(run(noAttnGate, cross(noAttnGate, im)), textOnly) <= 1e-5, "with the attention gate 0 only the (zeroed) MLP is left");
});

test("§8 KV-cached greedy generation equals full forwards; cross K/V computed once per cross layer; logprobs = log_softmax", () => {
  for (const ref of [refA, refB]) {
    const maxTiles = ref.config.vision.maxNumTiles;
    const im = images(ref, maxTiles >= 4
      ? [{ rows: 1, cols: 2, seed: 31 }, { rows: 2, cols: 2, seed: 32 }]
      : [{ rows: 1, cols: 2, seed: 31 }, { rows: 1, cols: 1, seed: 32 }]);
    const cs = cross(ref, im);
    // Text before the first image, two images separated by text.
    const ids = refA.promptIds(refA.renderPrompt([{ role: "user", content: [
      { type: "text", text: "Compare" }, { type: "image" }, { type: "text", text: "with" }, { type: "image" }, { type: "text", text: "please." },
    ] }]));
    const g = ref.generate(ids, cs, im.tiles, 6);
    assert.equal(g.tokens.length, 6);
    for (let k = 0; k < g.tokens.length; k++) {
      const full = ref.logits([...ids, ...g.tokens.slice(0, k)], cs, im.tiles);
      assert.equal(mllamaArgmax(full), g.tokens[k], `step ${k}`);
      assert.ok(Math.abs(mllamaLogSoftmax(full)[g.tokens[k]] - g.logprobs[k]) <= 1e-5, `logprob ${k}`);
    }
    // The cache computes cross K/V at prefill only.
    const cache = new RefMllamaCache(ref.config.text.numLayers);
    const c = ref.config;
    const rows = crossAttentionRows(crossAttentionDenseMask(ids, IMG, im.tiles, maxTiles), ids.length, im.n, maxTiles, c.vision.numPatches);
    textForward(c, ref.weights, embedTokens(c, ref.weights, ids), cache, { states: cs, rows });
    textForward(c, ref.weights, embedTokens(c, ref.weights, [g.tokens[0]]), cache, { states: null, rows: [rows[rows.length - 1]] });
    assert.equal(cache.crossComputations, c.text.crossAttentionLayers.length);
    assert.equal(cache.length, ids.length + 1);
  }
});

test("§8 greedy output is not degenerate and depends on the image; eos stops generation", () => {
  for (const ref of [refA, refB]) {
    const ids = userImagePrompt("What is in this picture?");
    const a = images(ref, [{ rows: 1, cols: 2, seed: 7 }]);
    const b = images(ref, [{ rows: 1, cols: 2, seed: 99 }]);
    const ga = ref.generate(ids, cross(ref, a), a.tiles, 12);
    const gb = ref.generate(ids, cross(ref, b), b.tiles, 12);
    assert.ok(new Set(ga.tokens).size >= 8, `distinct tokens: ${ga.tokens}`);
    assert.notDeepEqual(ga.tokens, gb.tokens, "different images, different answers");
  }
  // Make <|eom_id|> (128008) the first pick: its lm_head row = 10x the row of the normal first pick.
  const ids = userImagePrompt("Hi");
  const im = images(refA, [{ rows: 1, cols: 1, seed: 1 }]);
  const first = refA.generate(ids, cross(refA, im), im.tiles, 1).tokens[0];
  const H = refA.config.text.hiddenSize;
  const eos = variantA((name, data) => {
    if (!name.endsWith("lm_head.weight")) return data;
    const out = data.slice();
    for (let d = 0; d < H; d++) out[128008 * H + d] = 10 * data[first * H + d];
    return out;
  });
  const g = eos.generate(ids, cross(eos, im), im.tiles, 8);
  assert.deepEqual(g.tokens, [128008]);
});

// ---------------------------------------------------------------- §5 prompt
test("§5 prompt: one BOS, one <|image|> per image, image_url -> image, system + image raises (September 2024 template)", () => {
  const ids = userImagePrompt("Describe it.");
  assert.deepEqual(ids.slice(0, 6), [128000, 128006, 882, 128007, 271, IMG]);
  assert.deepEqual(ids.slice(-5), [128009, 128006, 78191, 128007, 271]);
  assert.equal(ids.filter((i) => i === 128000).length, 1);
  const viaUrl = refA.promptIds(refA.renderPrompt([{ role: "user", content: [{ type: "image_url", image_url: { url: "data:," } }, { type: "text", text: "Describe it." }] }]));
  assert.deepEqual(viaUrl, ids);
  const text = refA.renderPrompt([{ role: "system", content: " Be brief. " }, { role: "user", content: "Hi" }], { dateString: "05 Dec 2024" });
  assert.equal(text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 05 Dec 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  const textIds = refA.promptIds(text);
  assert.deepEqual(textIds.slice(0, 4), [128000, 128006, 9125, 128007]);
  assert.throws(() => refA.renderPrompt([{ role: "system", content: "x" }, { role: "user", content: [{ type: "image" }] }]), /incompatible with system messages/);
  assert.equal(refA.decode([...ids.slice(5, 9), 128009]), "Describe it.");
});
