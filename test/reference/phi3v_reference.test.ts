// Self-tests of the Phi-3.5-vision CPU reference (test/reference/phi3v_reference.ts): hand-checkable
// facts of PHI3V.md and self-consistency of §6's rules, on the tiny checkpoints of
// scripts/make_tiny_phi3v.ts written into a temp dir. Run:
//   node --import ./scripts/register-loaders.mjs --test test/reference/phi3v_reference.test.ts
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { makeTinyPhi3V } from "../../scripts/make_tiny_phi3v.ts";
import {
  argmax, assembleHd, decoderForward, embedIds, loadPhi3VReference, logSoftmaxAt, mergeImageFeatures, phi3vAttentionScaling,
  hdScale, hdTargetSize, hdTransform, torchBicubicTo336, phi3vChatMessages, phi3vNumImageTokens, phi3vPreprocess, RefPhi3VCache, type RefRgbImage, type Phi3VGenerateResult, type Phi3VRefImage, type Phi3VRefImageInput, type Phi3VReference,
} from "./phi3v_reference.ts";

const TMP = mkdtempSync(join(tmpdir(), "phi3v-ref-"));
after(() => rmSync(TMP, { recursive: true, force: true }));
let refA: Phi3VReference;
let refB: Phi3VReference;
before(async () => {
  await makeTinyPhi3V("tiny-a", join(TMP, "tiny-a"));
  await makeTinyPhi3V("tiny-b", join(TMP, "tiny-b"));
  refA = loadPhi3VReference(join(TMP, "tiny-a"));
  refB = loadPhi3VReference(join(TMP, "tiny-b"));
});

/** Deterministic values in [-2, 2] (normalized pixels' range). */
function noise(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = (((t ^ (t >>> 14)) >>> 0) / 4294967296) * 4 - 2;
  }
  return out;
}

const TILE = 3 * 336 * 336;
function image(h: number, w: number, seed: number): Phi3VRefImage {
  return { pixelValues: noise((1 + (h / 336) * (w / 336)) * TILE, seed), imageSize: [h, w] };
}

const QUESTION = "What is in the picture? Describe it.";

test("num_img_tokens = (hc·wc + 1)·144 + 1 + (hc + 1)·12", () => {
  assert.equal(phi3vNumImageTokens([336, 336]), 313); // 2·144 + 1 + 24
  assert.equal(phi3vNumImageTokens([336, 672]), 457); // 3·144 + 1 + 24
  assert.equal(phi3vNumImageTokens([672, 336]), 469); // 3·144 + 1 + 36
  assert.equal(phi3vNumImageTokens([672, 672]), 757); // 5·144 + 1 + 36
  assert.equal(phi3vNumImageTokens([1344, 1344]), 17 * 144 + 1 + 5 * 12); // num_crops 16: 2509
  assert.throws(() => phi3vNumImageTokens([300, 336]));
});

test("attention scaling s = sqrt(1 + ln(M/O)/ln O): real 131072/4096 ≈ 1.19024, 1 when M <= O", () => {
  assert.ok(Math.abs(phi3vAttentionScaling(131072, 4096) - 1.19024) < 5e-6);
  assert.equal(phi3vAttentionScaling(4096, 4096), 1);
  assert.equal(phi3vAttentionScaling(2048, 4096), 1);
  assert.ok(Math.abs(refA.config.rope.attentionScaling - Math.sqrt(1 + Math.log(4096 / 96) / Math.log(96))) < 1e-12);
  assert.ok(refA.config.rope.attentionScaling > 1.3 && refB.config.rope.attentionScaling > 1.3);
});

test("config: CLIP sized by tensors, hidden_states[-2] = first L−1 layers, su and longrope both parsed", () => {
  assert.deepEqual(refA.config.vision, { width: 64, layers: 3, intermediate: 128, heads: 1, layerIdx: -2, layersRun: 2 });
  assert.deepEqual(refB.config.vision, { width: 128, layers: 2, intermediate: 256, heads: 2, layerIdx: -2, layersRun: 1 });
  assert.equal(refA.config.rope.type, "su");
  assert.equal(refB.config.rope.type, "longrope");
  assert.equal(refA.config.kvHeads, 2);
  assert.equal(refB.config.kvHeads, 4);
  assert.deepEqual(refA.config.eosTokenIds, [2]);
  assert.equal(refA.config.numCrops, 4);
  assert.equal(refB.config.numCrops, 1);
  // Unused: post_layernorm and the last CLIP layer (16 tensors).
  for (const ref of [refA, refB]) {
    const last = ref.config.vision.layers - 1;
    assert.equal(ref.unusedTensors.length, 18);
    assert.ok(ref.unusedTensors.every((n) => n.includes("post_layernorm") || n.includes(`encoder.layers.${last}.`)));
  }
});

test("HD assembly order on a hand-made feature tensor (C = 1, 1×2 tiles)", () => {
  // Feature of tile t at grid (y, x) = t·1000 + 24y + x; sub_GN = -1, glb_GN = -2.
  const tiles = [0, 1, 2].map((t) => Float32Array.from({ length: 576 }, (_, i) => t * 1000 + i));
  const out = assembleHd(tiles, 1, [336, 672], Float32Array.of(-1, -1, -1, -1), Float32Array.of(-2, -2, -2, -2));
  const at = (i: number): number[] => [...out.subarray(4 * i, 4 * i + 4)];
  assert.equal(out.length, 4 * 457);
  assert.deepEqual(at(0), [1000, 1001, 1024, 1025]); // tile 1, merged (0, 0)
  assert.deepEqual(at(1), [1002, 1003, 1026, 1027]); // tile 1, merged (0, 1)
  assert.deepEqual(at(11), [1022, 1023, 1046, 1047]);
  assert.deepEqual(at(12), [2000, 2001, 2024, 2025]); // tile 2 continues the first row
  assert.deepEqual(at(24), [-1, -1, -1, -1]); // sub_GN ends the row
  assert.deepEqual(at(25), [1048, 1049, 1072, 1073]); // tile 1, merged (1, 0)
  assert.deepEqual(at(12 * 25 - 2), [2550, 2551, 2574, 2575]); // tile 2, merged (11, 11)
  assert.deepEqual(at(12 * 25), [-2, -2, -2, -2]); // glb_GN
  assert.deepEqual(at(301), [0, 1, 24, 25]); // global, merged (0, 0)
  assert.deepEqual(at(313), [-1, -1, -1, -1]); // sub_GN after the global's first row
  assert.deepEqual(at(314), [48, 49, 72, 73]);
  assert.deepEqual(at(456), [-1, -1, -1, -1]);
  // 2×1 tiles: the sub grid's rows run through tile 1 and then tile 2 below it.
  const tall = assembleHd(tiles, 1, [672, 336], Float32Array.of(-1, -1, -1, -1), Float32Array.of(-2, -2, -2, -2));
  assert.equal(tall.length, 4 * 469);
  assert.deepEqual([...tall.subarray(4 * 12, 4 * 13)], [-1, -1, -1, -1]);
  assert.deepEqual([...tall.subarray(4 * 13 * 12, 4 * 13 * 12 + 4)], [2000, 2001, 2024, 2025]);
});

test("merge: images' features fill the image positions in sequence order; -k and 32044 are both image positions", () => {
  const c = refA.config;
  const H = c.hidden;
  const f1 = Float32Array.from({ length: 2 * H }, (_, i) => 100 + Math.floor(i / H));
  const f2 = Float32Array.from({ length: 3 * H }, (_, i) => 200 + Math.floor(i / H));
  const ids = [5, -1, -1, 7, 32044, -2, -2];
  const e = mergeImageFeatures(c, ids, embedIds(c, refA.weights, ids), [f1, f2]);
  assert.deepEqual([1, 2, 4, 5, 6].map((t) => e[t * H]), [100, 101, 200, 201, 202]);
  assert.deepEqual([...e.subarray(0, H)], [...refA.weights.embed.subarray(5 * H, 6 * H)]);
  assert.throws(() => mergeImageFeatures(c, ids, embedIds(c, refA.weights, ids), [f1]));
});

test("prompt: tags per message, chat template, every chunk with <s>, placeholders -k or 32044", () => {
  const messages = [
    { role: "system", content: "Be brief." },
    { role: "user", content: [{ type: "image_url" as const }, { type: "image_url" as const }, { type: "text" as const, text: "first" }, { type: "text" as const, text: "second" }] },
  ];
  assert.deepEqual(phi3vChatMessages(messages)[1].content, "<|image_1|>\n<|image_2|>\nfirst\nsecond");
  assert.deepEqual(phi3vChatMessages([{ role: "user", content: [{ type: "image_url" }] }, { role: "user", content: [{ type: "text", text: "x" }, { type: "image_url" }] }]).map((m) => m.content), ["<|image_1|>\n", "<|image_2|>\nx"]);
  const text = refB.renderChat(messages);
  assert.equal(text, "<|system|>\nBe brief.<|end|>\n<|user|>\n<|image_1|>\n<|image_2|>\nfirst\nsecond<|end|>\n<|assistant|>\n");
  const ids = refB.promptIds(messages, [3, 2]);
  const sys = [1, 32006, ...refB.promptIds("Be brief.", []).slice(1), 32007, 32010];
  // Chunk 0 ends at <|user|> (rstrip eats "\n"); the "\n" between the tags is its own chunk: <s> ▁ <0x0A>.
  assert.deepEqual(ids.slice(0, sys.length), sys);
  assert.deepEqual(ids.slice(sys.length, sys.length + 3), [-1, -1, -1]);
  assert.deepEqual(ids.slice(sys.length + 3, sys.length + 6), [1, 28705, 13]);
  assert.deepEqual(ids.slice(sys.length + 6, sys.length + 8), [-2, -2]);
  assert.equal(ids[sys.length + 8], 1);
  assert.deepEqual(ids.slice(-2), [32007, 32001]);
  assert.equal(ids.filter((t) => t === 1).length, 3);
  assert.deepEqual(refB.promptIds(messages, [3, 2], 32044), ids.map((t) => (t < 0 ? 32044 : t)));
  // Without images: one tokenization, one <s>; the text prompt decodes back.
  const plain = refB.promptIds([{ role: "user", content: QUESTION }], []);
  assert.deepEqual(plain.slice(0, 2), [1, 32010]);
  assert.deepEqual(plain.slice(-2), [32007, 32001]);
  assert.equal(plain.filter((t) => t === 1).length, 1);
  assert.equal(refB.decode(plain.slice(2, -2)), QUESTION);
  assert.throws(() => refB.promptIds("<|image_2|>hi", [313]));
  assert.throws(() => refB.promptIds("<|image_1|>hi", [313, 313]));
});

test("sliding window w: a query sees itself and the w keys before it (2 layers, w = 1: receptive field 2 back)", () => {
  const c = { ...refA.config, slidingWindow: 1 };
  const run = (ids: number[]): Float32Array =>
    decoderForward(c, refA.weights, embedIds(c, refA.weights, ids), new RefPhi3VCache(c.layers, c.kvHeads));
  const base = run([100, 200, 300, 400]);
  assert.deepEqual(run([101, 200, 300, 400]), base); // 3 back: out of reach
  assert.ok(run([100, 201, 300, 400]).some((v, i) => Math.abs(v - base[i]) > 1e-4)); // 2 back: through layer 1
  // The tiny-a config's window (200) is crossed by every image prompt.
  assert.equal(refA.config.slidingWindow, 200);
  assert.equal(refB.config.slidingWindow, 262144);
});

/** Each generated step's logprob and pick equal those of a fresh full forward over the sequence so far. */
function assertStepsAreFreshForwards(ref: Phi3VReference, ids: number[], images: Phi3VRefImageInput[], g: Phi3VGenerateResult, imagesGoneFrom: number | null): void {
  for (let i = 0; i < g.tokens.length; i++) {
    const seq = [...ids, ...g.tokens.slice(0, i)];
    const quirk = imagesGoneFrom !== null && seq.length >= imagesGoneFrom;
    const logits = ref.logits(seq, images, { imagesAsToken0: quirk });
    assert.equal(argmax(logits), g.tokens[i], `step ${i} (L = ${seq.length})`);
    assert.ok(Math.abs(logSoftmaxAt(logits, g.tokens[i]) - g.logprobs[i]) < 1e-6, `step ${i} logprob`);
  }
}

test("text prompt crossing O + 1 = 97 on tiny-a: recompute there, every step = fresh forward with factors by length", () => {
  const O = refA.config.rope.originalMax;
  const words = "the quick brown fox jumps over the lazy dog and then it rests in the sun for a while".repeat(5);
  const ids = refA.promptIds([{ role: "user", content: words }], []).slice(0, O - 3);
  assert.equal(ids.length, 93);
  const g = refA.generate(ids, [], 10);
  assert.equal(g.tokens.length, 10);
  assert.equal(g.recomputedAt, O + 1);
  assertStepsAreFreshForwards(refA, ids, [], g, null);
  assert.ok(new Set(g.tokens).size >= 5, `degenerate: ${g.tokens.join(",")}`);
  // The factors matter: at L = O the long factors would give other logits; and without the
  // recompute (short cached keys + one long step) the step at L = O + 1 would differ too.
  const seq = [...ids, ...g.tokens.slice(0, O + 1 - ids.length)];
  assert.equal(seq.length, O + 1);
  const fresh = refA.logits(seq);
  const cache = new RefPhi3VCache(refA.config.layers, refA.config.kvHeads);
  decoderForward(refA.config, refA.weights, embedIds(refA.config, refA.weights, seq.slice(0, O)), cache);
  const stale = decoderForward(refA.config, refA.weights, embedIds(refA.config, refA.weights, seq.slice(O)), cache);
  assert.ok(Math.abs(stale[g.tokens[O + 1 - ids.length]] - fresh[g.tokens[O + 1 - ids.length]]) > 1e-3);
  const shortAtO = refA.logits(seq.slice(0, O));
  const longAtO = refA.logits(seq.slice(0, O), [], { factors: "long" });
  assert.ok(shortAtO.some((v, i) => Math.abs(v - longAtO[i]) > 1e-3));
});

test("KV-cached generation below O equals full forwards (tiny-b, short text prompt, GQA-free MHA)", () => {
  const ids = refB.promptIds([{ role: "user", content: QUESTION }], []);
  const g = refB.generate(ids, [], 8);
  assert.equal(g.recomputedAt, null);
  assertStepsAreFreshForwards(refB, ids, [], g, null);
});

test("the recompute quirk: image positions become token 0 at L = O + 1 and only they change (tiny-b, one image)", () => {
  const O = refB.config.rope.originalMax;
  const img = image(336, 336, 7);
  const features = refB.imageFeatures(img.pixelValues, img.imageSize);
  assert.equal(features.length, 313 * refB.config.hidden);
  const long = "Look closely at every corner and tell me about the colours, the shapes and the light. ".repeat(4);
  const base = refB.promptIds([{ role: "user", content: [{ type: "image_url" as const }, { type: "text" as const, text: long }] }], [313]);
  assert.ok(base.length > O - 10 && base.length < O, `prompt length ${base.length}`);
  const g = refB.generate(base, [features], O + 4 - base.length);
  assert.equal(g.recomputedAt, O + 1);
  assertStepsAreFreshForwards(refB, base, [features], g, O + 1);
  // Token 0 at image positions = the quirk; -k and 32044 placeholders are the same positions.
  const seq = [...base, ...g.tokens];
  const zeroed = seq.map((t) => (t < 0 ? 0 : t));
  assert.deepEqual(refB.logits(seq, [features], { imagesAsToken0: true }), refB.logits(zeroed));
  assert.deepEqual(refB.logits(seq.slice(0, O), [features]), refB.logits(seq.slice(0, O).map((t) => (t < 0 ? 32044 : t)), [features]));
  // Only image positions change: without images the option is a no-op.
  const text = refB.promptIds([{ role: "user", content: QUESTION }], []);
  assert.deepEqual(refB.logits(text, [], { imagesAsToken0: true }), refB.logits(text));
  // ... and with images it does change the logits.
  const withImage = refB.logits(seq.slice(0, O), [features]);
  const quirk = refB.logits(seq.slice(0, O), [features], { imagesAsToken0: true });
  assert.ok(withImage.some((v, i) => Math.abs(v - quirk[i]) > 1e-3));
});

test("tiny-a: two images of different sizes in one prompt start above O (long factors from prefill), not degenerate", () => {
  const a = image(336, 672, 11);
  const b = image(336, 336, 12);
  const fa = refA.imageFeatures(a.pixelValues, a.imageSize);
  const fb = refA.imageFeatures(b.pixelValues, b.imageSize);
  const messages = [{ role: "user", content: [{ type: "image_url" as const }, { type: "image_url" as const }, { type: "text" as const, text: QUESTION }] }];
  const ids = refA.promptIds(messages, [457, 313]);
  assert.equal(ids.filter((t) => t < 0).length, 770);
  const g = refA.generate(ids, [fa, fb], 16);
  assert.equal(g.recomputedAt, null);
  assert.ok(new Set(g.tokens).size >= 10, `degenerate: ${g.tokens.join(",")}`);
  // Image order matters (image 1's features fill the first block); a count mismatch throws.
  assert.notDeepEqual(refA.logits(ids, [fb, fa]), refA.logits(ids, [fa, fb]));
  assert.throws(() => refA.logits(ids, [fa]));
});

/** Deterministic 8-bit RGB test pattern (busy enough that every resample tap matters). */
function pattern(width: number, height: number): RefRgbImage {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = (x * x * 3 + y * y * 5 + x * y * 7 + c * 50) % 256;
    }
  }
  return { width, height, data };
}

function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

const MEAN = [0.48145466, 0.4578275, 0.40821073];
const STD = [0.26862954, 0.26130258, 0.27577711];

test("HD transform: scale loop, target sizes, white padding centred (left/right for portrait)", () => {
  assert.equal(hdScale(1, 1), 1);
  assert.equal(hdScale(1, 4), 2);
  assert.equal(hdScale(1, 16), 4);
  assert.equal(hdScale(3.5, 4), 3); // 3·ceil(3/3.5) = 3 <= 4 < 4·ceil(4/3.5) = 8
  assert.deepEqual(hdTargetSize(500, 300, 4), { resized: [403, 672], padded: [672, 672] });
  assert.deepEqual(hdTargetSize(300, 500, 4), { resized: [672, 403], padded: [672, 672] });
  assert.deepEqual(hdTargetSize(200, 700, 4), { resized: [1008, 288], padded: [1008, 336] });
  // 672×100 with num_crops 2: scale 2, no resampling (same size), 118 white rows above, 118 below.
  const wide = pattern(672, 100);
  const hd = hdTransform(wide, 2);
  assert.deepEqual([hd.width, hd.height], [672, 336]);
  assert.ok(hd.data.subarray(0, 118 * 672 * 3).every((v) => v === 255));
  assert.deepEqual(hd.data.subarray(118 * 672 * 3, 218 * 672 * 3), wide.data);
  assert.ok(hd.data.subarray(218 * 672 * 3).every((v) => v === 255));
  // Its portrait twin is padded left and right.
  const tall = pattern(100, 672);
  const hdTall = hdTransform(tall, 2);
  assert.deepEqual([hdTall.width, hdTall.height], [336, 672]);
  for (const y of [0, 300, 671]) {
    assert.ok(hdTall.data.subarray(y * 336 * 3, (y * 336 + 118) * 3).every((v) => v === 255));
    assert.deepEqual(hdTall.data.subarray((y * 336 + 118) * 3, (y * 336 + 218) * 3), tall.data.subarray(y * 100 * 3, (y + 1) * 100 * 3));
  }
});

test("HD transform equals Pillow's BILINEAR resize + pad byte for byte (hashes from PIL 8-bit output)", () => {
  // From /usr/bin/python3 with PIL: Image.resize((new_w, new_h), BILINEAR), white canvas paste, transposes.
  const cases: [number, number, number, number[], number, number[]][] = [
    [500, 300, 4, [672, 672], 0x902718de, [88, 138, 125]],
    [200, 700, 4, [1008, 336], 0x7a524adb, [236, 70, 80]],
    [1000, 333, 16, [672, 2016], 0x0758073c, [123, 173, 107]],
    [31, 7, 9, [336, 1344], 0x7776396f, [72, 83, 133]],
  ];
  for (const [w, h, n, size, hash, mid] of cases) {
    const hd = hdTransform(pattern(w, h), n);
    assert.deepEqual([hd.height, hd.width], size);
    const at = (Math.floor(hd.height / 2) * hd.width + Math.floor(hd.width / 3)) * 3;
    assert.deepEqual([...hd.data.subarray(at, at + 3)], mid, `${w}x${h}`);
    assert.equal(fnv1a(hd.data), hash, `${w}x${h} num_crops ${n}`);
  }
});

test("processor output: tiles row-major after the global view; 336×336 global view of a 336×336 image is the image", () => {
  const square = phi3vPreprocess(pattern(336, 336), 1, MEAN, STD);
  assert.deepEqual(square.imageSize, [336, 336]);
  assert.equal(square.numImgTokens, 313);
  assert.deepEqual(square.pixelValues.subarray(0, TILE), square.pixelValues.subarray(TILE, 2 * TILE));
  // (uint8/255 − mean)/std in f32 for the first pixel's red value.
  const v = Math.fround(Math.fround(Math.fround(square.hd.data[0] / 255) - Math.fround(MEAN[0])) / Math.fround(STD[0]));
  assert.equal(square.pixelValues[TILE], v);
  // 672×100, num_crops 2: tiles (0,0) and (0,1); white padding normalizes to (1 − mean)/std.
  const wide = phi3vPreprocess(pattern(672, 100), 2, MEAN, STD);
  assert.deepEqual(wide.imageSize, [336, 672]);
  assert.equal(wide.pixelValues.length, 3 * TILE);
  const white = Math.fround(Math.fround(1 - Math.fround(MEAN[2])) / Math.fround(STD[2]));
  assert.equal(wide.pixelValues[TILE + 2 * 336 * 336], white); // tile 0, blue, (0, 0)
  const y = 150;
  const x = 400;
  const red = Math.fround(Math.fround(Math.fround(wide.hd.data[(y * 672 + x) * 3] / 255) - Math.fround(MEAN[0])) / Math.fround(STD[0]));
  assert.equal(wide.pixelValues[2 * TILE + y * 336 + (x - 336)], red); // tile 1 holds columns 336…671
  // End to end on tiny-b (num_crops 1 from its preprocessor_config.json).
  const processed = refB.preprocess(pattern(500, 300));
  assert.deepEqual(processed.imageSize, [336, 336]);
  assert.equal(refB.imageFeatures(processed.pixelValues, processed.imageSize).length, 313 * refB.config.hidden);
});

test("torch bicubic (A = -0.75, align_corners False): 672 -> 336 samples a ramp at 2o + 0.5, taps clamped at the border", () => {
  // Columns hold x, rows hold 1000·y: Keys cubic reproduces linear functions away from the borders.
  const h = 1008;
  const w = 672;
  const planes = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) planes[c * h * w + y * w + x] = x + 1000 * y;
  const out = torchBicubicTo336(planes, h, w);
  for (const [oy, ox] of [[1, 1], [100, 200], [334, 334]]) {
    const want = 2 * ox + 0.5 + 1000 * (3 * oy + 1); // rows: src = 3·oy + 1 (t = 0, an exact sample)
    assert.ok(Math.abs(out[2 * 336 * 336 + oy * 336 + ox] - want) < 1e-3, `(${oy}, ${ox})`);
  }
  // Column 0: src 0.5, weights [c2(1.5), c1(0.5), c1(0.5), c2(1.5)] = [-0.09375, 0.59375, 0.59375, -0.09375]
  // on taps -1, 0, 1, 2 with -1 clamped to 0: 0.59375 − 2·0.09375 = 0.40625 (0.5 unclamped).
  assert.ok(Math.abs(out[100 * 336] - (0.40625 + 1000 * 301)) < 1e-3);
});
