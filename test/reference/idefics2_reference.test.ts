// Self-tests of the Idefics2 CPU reference (test/reference/idefics2_reference.ts): hand-checkable
// facts of IDEFICS2.md and self-consistency, on the tiny checkpoints of
// scripts/make_tiny_idefics2.ts written into a temp dir. Run:
//   node --import ./scripts/register-loaders.mjs --test test/reference/idefics2_reference.test.ts
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { makeTinyIdefics2 } from "../../scripts/make_tiny_idefics2.ts";
import { buildRefDecoder, RefDecoderCache, refDecoderConfig, refDecoderForward } from "./ref_decoder.ts";
import { readSafetensorsDir, type RefTensor } from "./safetensors_min.ts";
import {
  bucketBoundaries, bucketCoords, expandIdefics2Prompt, geluTanh, greedyPick, loadIdefics2Reference, logSoftmax,
  parseIdefics2Config, patchAttentionMask, visionPositionIds, type Idefics2Reference,
} from "./idefics2_reference.ts";

const TMP = mkdtempSync(join(tmpdir(), "idefics2-ref-"));
after(() => rmSync(TMP, { recursive: true, force: true }));
const DIR_A = join(TMP, "tiny-a");
const DIR_B = join(TMP, "tiny-b");
const DIR_A_BF16 = join(TMP, "tiny-a-bf16");
let refA: Idefics2Reference;
let refB: Idefics2Reference;
before(async () => {
  await makeTinyIdefics2("tiny-a", DIR_A);
  await makeTinyIdefics2("tiny-b", DIR_B);
  await makeTinyIdefics2("tiny-a", DIR_A_BF16, { dtype: "bf16" });
  refA = loadIdefics2Reference(DIR_A);
  refB = loadIdefics2Reference(DIR_B);
});

const F = 32000, I = 32001, EOU = 32002;
const CHAT = "User:<image>What is in this picture?<end_of_utterance>\nAssistant:";

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

interface Batch { pv: Float32Array; pm: Uint8Array; n: number; hMax: number; wMax: number }

/**
 * Images of the given h x w (each from its seed), zero-padded bottom/right to hMax x wMax with
 * their masks (§5.7); `fill` writes that value into the padding instead of 0 (masked garbage).
 */
function batch(images: { h: number; w: number; seed: number }[], hMax: number, wMax: number, fill = 0): Batch {
  const n = images.length;
  const pv = new Float32Array(n * 3 * hMax * wMax).fill(fill);
  const pm = new Uint8Array(n * hMax * wMax);
  images.forEach(({ h, w, seed }, i) => {
    const px = noise(3 * h * w, seed);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) pv[((i * 3 + c) * hMax + y) * wMax + x] = px[(c * h + y) * w + x];
      }
    }
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) pm[(i * hMax + y) * wMax + x] = 1;
  });
  return { pv, pm, n, hMax, wMax };
}
const feats = (ref: Idefics2Reference, b: Batch): Float32Array => ref.imageFeatures(b.pv, b.pm, b.n, b.hMax, b.wMax);

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// ---------------------------------------------------------------- §6.4 positions
test("§6.4 bucketize: n == nps repeats bucket 0 and never reaches nps-1; n = nps-1 is the identity; n = 3 of 70", () => {
  for (const nps of [6, 8, 14, 70]) {
    assert.deepEqual(bucketCoords(nps, nps), [0, 0, ...Array.from({ length: nps - 2 }, (_, i) => i + 1)], `n = nps = ${nps}`);
    assert.deepEqual(bucketCoords(nps - 1, nps), Array.from({ length: nps - 1 }, (_, i) => i), `n = nps-1 = ${nps - 1}`);
    assert.deepEqual(bucketCoords(1, nps), [0]);
  }
  assert.deepEqual(bucketCoords(3, 70), [0, 23, 46]);
  // Buckets never decrease; grids up to nps stay in 0..nps-2; larger grids (tiny-a: 9 patches, nps 8) reach nps-1.
  for (const nps of [3, 6, 8, 70]) {
    for (let n = 1; n <= nps + 3; n++) {
      const b = bucketCoords(n, nps);
      const top = n <= nps ? nps - 2 : nps - 1;
      assert.ok(b.every((v, i) => v >= 0 && v <= top && (i === 0 || v >= b[i - 1])), `nps ${nps} n ${n}: ${b}`);
    }
  }
  assert.deepEqual(bucketCoords(9, 8), [0, 0, 1, 2, 3, 4, 5, 6, 7]);
  // torch.arange(1/nps, 1.0, 1/nps) in f32: nps-1 boundaries (or one extra ~1.0), the first exactly f32(1/nps).
  for (const nps of [6, 8, 70]) {
    const bd = bucketBoundaries(nps);
    assert.ok(bd.length === nps - 1 || (bd.length === nps && bd[nps - 1] >= Math.fround(1 - 1e-6)), `nps ${nps}: ${bd.length}`);
    assert.equal(bd[0], Math.fround(1 / nps));
  }
});

test("§6.4 buckets and boundaries equal numpy's float32 port (test/fixtures/vision/idefics2/buckets.json)", () => {
  const fixture = JSON.parse(readFileSync(join(import.meta.dirname, "../fixtures/vision/idefics2/buckets.json"), "utf8")) as {
    boundaries: Record<string, number[]>;
    buckets: { nps: number; n: number; buckets: number[] }[];
  };
  for (const [nps, bd] of Object.entries(fixture.boundaries)) assert.deepEqual([...bucketBoundaries(Number(nps))], bd, `boundaries nps ${nps}`);
  assert.ok(fixture.buckets.length > 100);
  for (const { nps, n, buckets } of fixture.buckets) assert.deepEqual(bucketCoords(n, nps), buckets, `nps ${nps} n ${n}`);
});

test("§6.2/6.4 patch mask counts only complete patches; position ids fill the valid top-left block row-major, 0 elsewhere", () => {
  // One 20x15 image padded to 24x24, patch 7: a 3x3 grid with 20//7 = 2 complete rows and 15//7 = 2 columns.
  const hMax = 24, wMax = 24, p = 7;
  const mask = new Uint8Array(hMax * wMax);
  for (let y = 0; y < 20; y++) for (let x = 0; x < 15; x++) mask[y * wMax + x] = 1;
  const pmask = patchAttentionMask(mask, 1, hMax, wMax, p);
  assert.deepEqual([...pmask], [1, 1, 0, 1, 1, 0, 0, 0, 0]);
  // nps 8, n = 2: fh = [0, 0.5 * (1 - 1e-6)]; boundaries 1/8, 2/8, 3/8 lie below 0.4999995, 4/8 does not -> [0, 3].
  assert.deepEqual(bucketCoords(2, 8), [0, 3]);
  assert.deepEqual([...visionPositionIds(pmask, 3, 3, 8)], [0, 3, 0, 24, 27, 0, 0, 0, 0]);
});

// ---------------------------------------------------------------- §2 config
test("§2 perceiver override: a perceiver hidden_size != text hidden_size takes the text's hidden size and rms_norm_eps", () => {
  const official = parseIdefics2Config({ text_config: { rms_norm_eps: 1e-5 }, perceiver_config: { model_type: "idefics2" }, vision_config: { hidden_size: 1152, num_attention_heads: 16, image_size: 980, patch_size: 14 } });
  assert.equal(official.perceiver.hiddenSize, 4096);
  assert.equal(official.perceiver.rmsNormEps, 1e-6, "4096 == 4096: nothing overridden, perceiver eps stays 1e-6");
  assert.equal(official.text.rmsNormEps, 1e-5);
  assert.equal(official.text.slidingWindow, 4096, "MistralConfig default");
  assert.equal(official.text.numKvHeads, 8);
  assert.equal(official.text.headDim, 128);
  assert.equal(official.vision.patchesPerSide, 70);
  assert.equal(official.imageSeqLen, 64);
  assert.equal(official.doImageSplitting, false);
  assert.equal(parseIdefics2Config({}).text.rmsNormEps, 1e-5, "a missing text_config is built with rms_norm_eps 1e-5");
  assert.equal(parseIdefics2Config({ text_config: {} }).text.rmsNormEps, 1e-6, "MistralConfig's own default");
  const small = parseIdefics2Config({ text_config: { hidden_size: 64, num_attention_heads: 4, rms_norm_eps: 1e-5, sliding_window: null } });
  assert.equal(small.perceiver.hiddenSize, 64);
  assert.equal(small.perceiver.rmsNormEps, 1e-5);
  assert.equal(small.text.slidingWindow, null);
  // The tiny checkpoints: tiny-a keeps its own perceiver eps (hidden sizes agree); tiny-b's file says 96 / 1e-2.
  assert.equal(refA.config.perceiver.hiddenSize, 64);
  assert.equal(refA.config.perceiver.rmsNormEps, 1e-3);
  assert.equal(refB.config.perceiver.hiddenSize, 48);
  assert.equal(refB.config.perceiver.rmsNormEps, 1e-6);
  assert.equal(refA.config.text.slidingWindow, 4096);
  assert.equal(refB.config.text.slidingWindow, 48);
  assert.deepEqual(refA.config.eosTokenIds, [2, EOU]);
  assert.deepEqual(refA.config.badWordsIds, [F, I]);
});

test("tied head: tiny-b has no lm_head.weight and uses embed_tokens; tiny-a reads its own lm_head; no tensor unread", () => {
  assert.equal(refB.config.tieWordEmbeddings, true);
  assert.equal(refB.weights.lmHead, refB.weights.embedTokens);
  assert.equal(refA.config.tieWordEmbeddings, false);
  assert.notEqual(refA.weights.lmHead, refA.weights.embedTokens);
  assert.deepEqual(refA.unusedTensors, []);
  assert.deepEqual(refB.unusedTensors, []);
});

// ---------------------------------------------------------------- §4 prompt
test("§4.3 expansion and collapse: one image, a split image, two adjacent images", () => {
  const f = "<fake_token_around_image>", im = "<image>";
  assert.equal(expandIdefics2Prompt(`a${im}b`, 2, false), `a${f}${im}${im}${f}b`);
  assert.equal(expandIdefics2Prompt(im, 1, true), `${f}${im}`.repeat(5) + f);
  assert.equal(expandIdefics2Prompt(`${im}${im}`, 2, false), `${f}${im}${im}${f}${im}${im}${f}`);
  assert.equal(expandIdefics2Prompt("no images", 64, true), "no images");
});

test("§4.4 prompt ids: BOS, F I×n F (5n+6 with splitting), the Mistral-vocabulary example", () => {
  // tiny-a: image_seq_len 8, splitting on -> 46 image tokens: F (I×8 F)×5.
  const a = refA.promptIds(CHAT);
  const split = [F, ...Array.from({ length: 5 }, () => [...new Array(8).fill(I), F]).flat()];
  assert.equal(a[0], 1);
  assert.deepEqual(a.slice(3, 3 + 46), split);
  assert.deepEqual(a.slice(0, 3), [1, 1247, 28747], "<s> ▁User :");
  // tiny-b: 12 latents, no splitting; two adjacent images share the middle F.
  const b = refB.promptIds("User:<image><image>Hi<end_of_utterance>\nUser:");
  const img = new Array(12).fill(I);
  assert.deepEqual(b.slice(3, 3 + 27), [F, ...img, F, ...img, F]);
  // IDEFICS2.md §4.4: <end_of_utterance>\nUser: -> 32002, 28705 "▁", 13 "<0x0A>", 730 "User", 28747 ":".
  assert.deepEqual(b.slice(-5), [EOU, 28705, 13, 730, 28747]);
  // Decoding drops the special tokens but keeps the "▁" the normalizer prepended to each segment after one.
  assert.equal(refB.decode(b), "User: Hi \nUser:");
});

// ---------------------------------------------------------------- §6-7 images
test("padding invariance: extra masked rows/cols (zero or garbage) and all-zero padding images change no feature", () => {
  for (const [ref, p] of [[refA, 7], [refB, 8]] as const) {
    const img = { h: 44, w: 37, seed: 11 }; // partial patches at the bottom/right edge
    const tight = feats(ref, batch([img], 44, 37));
    assert.equal(tight.length, ref.config.perceiver.nLatents * ref.config.text.hiddenSize);
    assert.equal(maxAbsDiff(feats(ref, batch([img], 64, 64)), tight), 0, `patch ${p}: zero padding`);
    assert.equal(maxAbsDiff(feats(ref, batch([img], 64, 60, 0.75)), tight), 0, `patch ${p}: masked garbage`);
    // A second, smaller image in the same request, and an all-zero padding image that is dropped.
    const other = { h: 30, w: 50, seed: 12 };
    const two = feats(ref, batch([img, other], 64, 64));
    const withPad = batch([img, other, { h: 0, w: 0, seed: 0 }], 64, 64);
    assert.equal(maxAbsDiff(feats(ref, withPad), two), 0, "all-zero image dropped");
    assert.equal(maxAbsDiff(two.subarray(0, tight.length), tight), 0, "images are independent");
    assert.equal(maxAbsDiff(two.subarray(tight.length), feats(ref, batch([other], 30, 50))), 0);
  }
});

test("positions matter: zeroing the position table changes the vision output; visionHidden covers all patches", () => {
  const b = batch([{ h: 56, w: 56, seed: 3 }], 56, 56);
  const hidden = refA.visionHidden(b.pv, b.pm, 1, 56, 56);
  assert.equal(hidden.length, 8 * 8 * refA.config.vision.hiddenSize);
  // Zeroing the position table changes the vision output.
  const noPos = loadIdefics2Reference(DIR_A, { transform: (name, data) => (name.endsWith("position_embedding.weight") ? new Float32Array(data.length) : data) });
  assert.ok(maxAbsDiff(noPos.visionHidden(b.pv, b.pm, 1, 56, 56), hidden) > 1e-2);
});

test("gelu_pytorch_tanh known values", () => {
  assert.equal(geluTanh(0), 0);
  assert.ok(Math.abs(geluTanh(1) - 0.8411919906082768) < 1e-12);
  assert.ok(Math.abs(geluTanh(-1) - -0.15880800939172324) < 1e-12);
});

test("transform sees every tensor; bf16-rounded f32 weights reproduce the bf16 checkpoint exactly", () => {
  const seen: string[] = [];
  loadIdefics2Reference(DIR_A, { transform: (name, data) => (seen.push(name), data) });
  const file = readFileSync(join(DIR_A, "model.safetensors"));
  const header = JSON.parse(file.toString("utf8", 8, 8 + Number(file.readBigUInt64LE(0)))) as Record<string, unknown>;
  const names = Object.keys(header).filter((n) => n !== "__metadata__");
  assert.deepEqual(seen.sort(), names.sort());
  const word = new Uint32Array(1);
  const fl = new Float32Array(word.buffer);
  const toBf16 = (x: number): number => {
    fl[0] = x;
    word[0] = (word[0] + 0x7fff + ((word[0] >>> 16) & 1)) & 0xffff0000; // round to nearest even
    return fl[0];
  };
  const rounded = loadIdefics2Reference(DIR_A, { transform: (_n, data) => data.map(toBf16) });
  const bf16 = loadIdefics2Reference(DIR_A_BF16);
  const b = batch([{ h: 40, w: 64, seed: 5 }, { h: 40, w: 30, seed: 6 }, { h: 33, w: 64, seed: 7 }, { h: 20, w: 20, seed: 8 }, { h: 40, w: 64, seed: 9 }], 40, 64);
  const fr = feats(rounded, b);
  assert.equal(maxAbsDiff(feats(bf16, b), fr), 0);
  assert.ok(maxAbsDiff(feats(refA, b), fr) > 0, "bf16 rounding changes something");
});

// ---------------------------------------------------------------- §8-9 decoder and generation
test("§9 greedy: KV-cached generation equals full forwards step by step (tiny-a, split image)", () => {
  const b = batch([{ h: 32, w: 32, seed: 1 }, { h: 32, w: 32, seed: 2 }, { h: 32, w: 32, seed: 3 }, { h: 32, w: 32, seed: 4 }, { h: 64, w: 64, seed: 5 }], 64, 64);
  const f = feats(refA, b);
  const ids = refA.promptIds(CHAT);
  const g = refA.generate(ids, f, 6);
  assert.equal(g.tokens.length, 6);
  const prefix = [...ids];
  for (let i = 0; i < g.tokens.length; i++) {
    const logits = refA.logits(prefix, f);
    assert.equal(greedyPick(logits, refA.config.badWordsIds), g.tokens[i], `step ${i}`);
    assert.equal(logSoftmax(logits)[g.tokens[i]], g.logprobs[i], `step ${i} logprob (cache == full forward, bit for bit)`);
    prefix.push(g.tokens[i]);
  }
  assert.ok(new Set(g.tokens).size >= 4, `greedy output should not just repeat: ${g.tokens}`);
});

test("§9 sliding window (tiny-b, 48): identical to plain causal below the window, different beyond; cache agrees across it", () => {
  const plainDir = join(TMP, "tiny-b-no-window");
  cpSync(DIR_B, plainDir, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(plainDir, "config.json"), "utf8"));
  cfg.text_config.sliding_window = null;
  writeFileSync(join(plainDir, "config.json"), JSON.stringify(cfg));
  const plain = loadIdefics2Reference(plainDir);
  assert.equal(plain.config.text.slidingWindow, null);

  const b = batch([{ h: 64, w: 48, seed: 21 }, { h: 40, w: 64, seed: 22 }], 64, 64);
  const f = feats(refB, b);
  const short = refB.promptIds(CHAT);
  assert.ok(short.length <= 48, `${short.length}`);
  assert.equal(maxAbsDiff(refB.logits(short, f.subarray(0, f.length / 2)), plain.logits(short, f.subarray(0, f.length / 2))), 0);

  const long = refB.promptIds("User:<image>Describe this.<end_of_utterance>\nAssistant: Something.<end_of_utterance>\nUser:<image>And this one, in a few words?<end_of_utterance>\nAssistant:");
  assert.ok(long.length > 48, `${long.length}`);
  assert.ok(maxAbsDiff(refB.logits(long, f), plain.logits(long, f)) > 1e-3, "the window hides early tokens");

  // Generation that starts below the window and ends beyond it: cache == full forwards.
  const g = refB.generate(short, f.subarray(0, f.length / 2), 48 - short.length + 4);
  const prefix = [...short];
  for (let i = 0; i < g.tokens.length; i++) {
    if (i === g.tokens.length - 1 || i === 0 || prefix.length >= 47) {
      const logits = refB.logits(prefix, f.subarray(0, f.length / 2));
      assert.equal(logSoftmax(logits)[g.tokens[i]], g.logprobs[i], `step ${i} at position ${prefix.length}`);
    }
    prefix.push(g.tokens[i]);
  }
});

test("§9 bad words affect the choice only; logprobs are log_softmax of the raw logits; eos is emitted and stops", () => {
  const logits = Float32Array.from([1, 5, 3, 4]);
  assert.equal(greedyPick(logits, [1]), 3);
  assert.equal(greedyPick(Float32Array.from([2, 2, 1]), []), 0, "first index on ties");
  const lp = logSoftmax(logits);
  assert.ok(Math.abs(lp.reduce((s, v) => s + Math.exp(v), 0) - 1) < 1e-12);

  // Make <fake_token_around_image> the raw argmax of tiny-a's first step by copying the winner's lm_head row over it, scaled.
  const ids = refA.promptIds("User: Hello there, how are you?<end_of_utterance>\nAssistant:");
  const first = refA.generate(ids, null, 1).tokens[0];
  const H = refA.config.text.hiddenSize;
  const boosted = loadIdefics2Reference(DIR_A, {
    transform: (name, data) => {
      if (name !== "lm_head.weight") return data;
      const out = Float32Array.from(data);
      for (let d = 0; d < H; d++) out[F * H + d] = 2 * data[first * H + d];
      return out;
    },
  });
  const raw = boosted.logits(ids, null);
  assert.equal(greedyPick(raw, []), F, "the bad word has the top raw logit");
  const g = boosted.generate(ids, null, 1);
  assert.equal(g.tokens[0], first, "... but is never chosen");
  assert.equal(g.logprobs[0], logSoftmax(raw)[first], "logprob from the raw logits, bad word included");

  // eos: generation stops right after emitting an eos id (made eos here by naming the first pick one).
  const eosRef = loadIdefics2Reference(DIR_A);
  eosRef.config.eosTokenIds = [first];
  assert.deepEqual(eosRef.generate(ids, null, 10).tokens, [first]);
  assert.equal(refA.generate(ids, null, 3).tokens.length, 3, "max tokens");
});

test("§8 merge: image-token count must equal the feature rows; feature rows replace <image> embeddings in order", () => {
  const ids = refB.promptIds(CHAT);
  const L = refB.config.perceiver.nLatents;
  const H = refB.config.text.hiddenSize;
  assert.throws(() => refB.logits(ids, new Float32Array((L - 1) * H)), /image tokens/);
  assert.throws(() => refB.logits(ids, null), /image tokens/);
  const f = feats(refB, batch([{ h: 40, w: 40, seed: 31 }], 40, 40));
  // Swapping two feature rows changes the logits (order matters), swapping them back restores them.
  const swapped = Float32Array.from(f);
  swapped.set(f.subarray(0, H), H);
  swapped.set(f.subarray(H, 2 * H), 0);
  assert.ok(maxAbsDiff(refB.logits(ids, swapped), refB.logits(ids, f)) > 0);
});

test("text-only prompts: the Mistral decoder equals the text-decoder reference (ref_decoder.ts) on the renamed text tensors", () => {
  for (const [dir, ref] of [[DIR_A, refA], [DIR_B, refB]] as const) {
    const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    const renamed = new Map<string, RefTensor>();
    for (const [name, t] of readSafetensorsDir(dir)) {
      if (name.startsWith("model.text_model.")) renamed.set("model." + name.slice("model.text_model.".length), t);
      else if (name === "lm_head.weight") renamed.set(name, t);
    }
    const decoder = buildRefDecoder(refDecoderConfig(cfg.text_config), renamed);
    // Longer than tiny-b's window of 48.
    const ids = ref.promptIds("System: You answer in one short sentence, without any preamble or apology.<end_of_utterance>\nUser: What colour is the sky on a clear summer day, and why does it look that way?<end_of_utterance>\nAssistant:");
    assert.ok(ids.length > 48, `${ids.length}`);
    const want = refDecoderForward(decoder, ids, new RefDecoderCache(decoder.config.layers));
    // Same f32 semantics, written separately: equal bit for bit.
    assert.equal(maxAbsDiff(ref.logits(ids, null), want), 0, dir);
  }
});
