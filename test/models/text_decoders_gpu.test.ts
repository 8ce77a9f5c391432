// Text-only families on the configurable decoder (src/models/decoder) against the independent CPU
// reference (test/reference/ref_decoder.ts), on tiny random checkpoints written at test time
// (scripts/make_tiny_text.ts) with the families' real tokenizers: Qwen2 (q/k/v biases, tied),
// Mistral (head_dim 24 != hidden/heads, sliding window 8), Llama 3 (llama3 rope, tied, biases) and
// Phi-3 (fused qkv / gate_up, longrope switching to the long factors during decode, window 20).
// For each: loaded through the registry and the family contract, last-position f32 logits of the
// prefill and of the 15th decode step NMSE < 1e-9, and 16 identical greedy tokens; rope tables against the reference; the tensor
// table against the checkpoint; q8 / q4 / f16 loads against a reference on the rounded weights;
// missing / misshapen tensors; media rejected.
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { openCheckpointDir } from "../../src/loader/file_node.ts";
import type { SafetensorsCheckpoint } from "../../src/loader/safetensors.ts";
import { ropeTables } from "../../src/models/common/rope.ts";
import { setPrefillChunkTokens } from "../../src/models/common/step.ts";
import { checkpointTensorSource, type TensorSource } from "../../src/models/common/source.ts";
import type { TextOnlyConfig } from "../../src/models/decoder/family.ts";
import { decoderTensorTable } from "../../src/models/decoder/names.ts";
import { TextOnlyModel } from "../../src/models/decoder/family.ts";
import type { ModelCache, VlmModel } from "../../src/models/family.ts";
import { llamaFamily } from "../../src/models/llama/family.ts";
import { mistralFamily } from "../../src/models/mistral/family.ts";
import { phi3Family } from "../../src/models/phi3/family.ts";
import { qwen2Family } from "../../src/models/qwen2/family.ts";
import { resolveFamily } from "../../src/models/registry.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { makeTinyText, TINY_TEXT_FAMILIES, type TinyTextFamily } from "../../scripts/make_tiny_text.ts";
import { loadRefDecoder, refArgmax, RefDecoderCache, refDecoderForward, refDecoderGreedy, refRopeParameters, type RefDecoder } from "../reference/ref_decoder.ts";
import { openCheckpoint } from "../../src/loader/checkpoint.ts";
import { roundTripValues } from "../../src/quant/pack.ts";
import { buildRefDecoder, refDecoderConfig } from "../reference/ref_decoder.ts";
import { readSafetensorsDir } from "../reference/safetensors_min.ts";
import { nmse } from "../util/compare.ts";

const TOKENS = Number(process.env.WEBVLM_GREEDY_TOKENS ?? 16);
const F32 = { textLinear: "f32", embedding: "f32", vision: "f32" } as const;
const PROMPT = "The quick brown fox jumps over the lazy dog, then tiny models on WebGPU check every kernel.";
/** Prompt tokens kept: Phi-3's prefill stays within its 32 original positions, decode crosses them. */
const MAX_PROMPT = 26;

const FAMILY_NAME: Record<TinyTextFamily, string> = { qwen2: "qwen2", mistral: "mistral", llama3: "llama", phi3: "phi3" };
const FAMILIES = { qwen2: qwen2Family, mistral: mistralFamily, llama3: llamaFamily, phi3: phi3Family };

let root = "";
let gpu: GpuContext;
const checkpoints: SafetensorsCheckpoint[] = [];

const readJson = async (dir: string, f: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(join(dir, f), "utf8"));

async function dirSource(dir: string, reads?: string[]): Promise<TensorSource> {
  const ckpt = await openCheckpointDir(dir);
  checkpoints.push(ckpt);
  const base = checkpointTensorSource(ckpt);
  return { ...base, read: (name) => (reads?.push(name), base.read(name)) };
}

function assertWebvlmError(code: string, includes: string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected a WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.ok(e.message.includes(includes), `message "${e.message}" should name "${includes}"`);
    return true;
  };
}

/** Greedy tokens; the prefill's logits and those of the last decode step (windows and Phi-3's long factors act there). */
async function gpuGreedy(model: VlmModel, ids: number[], count: number, eos: number[]): Promise<{ tokens: number[]; logits: Float32Array; lastLogits: Float32Array; cache: ModelCache }> {
  const cache = model.createCache(ids.length + count + 1);
  const pre = await model.prefill(ids, [], cache, { read: "both" });
  const tokens = [pre.tokenId!];
  let lastLogits = pre.logits!;
  while (tokens.length < count && !eos.includes(tokens[tokens.length - 1])) {
    const step = await model.decode(tokens[tokens.length - 1], cache, { read: "both" });
    tokens.push(step.tokenId!);
    lastLogits = step.logits!;
  }
  return { tokens, logits: pre.logits!, lastLogits, cache };
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-text-decoders-"));
  gpu = await acquireNodeGpu();
});

after(async () => {
  for (const c of checkpoints) await c.close();
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

for (const fam of TINY_TEXT_FAMILIES) {
  describe(`tiny ${fam}`, () => {
    let dir = "";
    let ids: number[] = [];
    let ref: RefDecoder;
    let refGen: ReturnType<typeof refDecoderGreedy>;
    let config: TextOnlyConfig;
    let model: VlmModel | undefined;

    after(() => model?.dispose());

    before(async () => {
      dir = join(root, fam);
      await makeTinyText(dir, fam);
      const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
      ids = tok.encode(PROMPT, { addSpecialTokens: true }).slice(0, MAX_PROMPT);
      ref = loadRefDecoder(dir);
      assert.deepEqual(ref.unused, [], "the reference reads every checkpoint tensor");
      refGen = refDecoderGreedy(ref, ids, TOKENS);
      config = FAMILIES[fam].parseConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json"));
    });

    test("registry resolves the family; f32 logits (NMSE < 1e-9) and greedy tokens equal the reference", async (t) => {
      const cfgJson = await readJson(dir, "config.json");
      const registered = resolveFamily(cfgJson);
      assert.equal(registered.name, FAMILY_NAME[fam]);
      const opened = registered.open(cfgJson, await readJson(dir, "generation_config.json"));
      assert.equal(opened.maxPositions, cfgJson.max_position_embeddings);
      model = await opened.load(gpu, await dirSource(dir), F32);
      assert.ok(model instanceof TextOnlyModel);
      const t0 = performance.now();
      const run = await gpuGreedy(model, ids, TOKENS, config.eosTokenIds);
      const ms = performance.now() - t0;
      run.cache.dispose();
      const e = nmse(run.logits, refGen.firstLogits);
      assert.ok(e < 1e-9, `last-position logits NMSE ${e}`);
      const eLast = nmse(run.lastLogits, refGen.lastLogits);
      assert.ok(eLast < 1e-9, `last decode step's logits NMSE ${eLast}`);
      assert.equal(run.tokens[0], refArgmax(refGen.firstLogits));
      assert.deepEqual(run.tokens, refGen.tokens.slice(0, TOKENS));
      const eosAt = run.tokens.findIndex((x) => config.eosTokenIds.includes(x));
      t.diagnostic(
        `prompt ${ids.length} tokens; logits NMSE=${e.toExponential(2)} (last decode step ${eLast.toExponential(2)}); ${run.tokens.length} tokens identical` +
          `${eosAt >= 0 ? ` (eos at ${eosAt})` : ""}, ${new Set(run.tokens).size} distinct; GPU ${ms.toFixed(0)} ms`,
      );
      assert.deepEqual(gpu.uncapturedErrors, []);
    });

    test("prefill after a cached prefix (9 tokens, then truncated to 5) equals the full prefill; warm-up runs", async (t) => {
      assert.ok(model, "loaded by the previous test");
      const cache = model.createCache(ids.length + 1);
      try {
        const first = await model.prefill(ids.slice(0, 9), [], cache, { read: "argmax" });
        assert.equal(first.reused, 0);
        const pre = await model.prefill(ids, [], cache, { read: "logits" });
        assert.equal(pre.reused, 9);
        const e9 = nmse(pre.logits!, refGen.firstLogits);
        assert.ok(e9 < 1e-9, `after 9 cached tokens: NMSE ${e9}`);
        cache.truncate(5);
        assert.equal(cache.length, 5);
        const again = await model.prefill(ids, [], cache, { read: "both" });
        assert.equal(again.reused, 5);
        const e5 = nmse(again.logits!, refGen.firstLogits);
        assert.ok(e5 < 1e-9, `after truncate(5): NMSE ${e5}`);
        assert.equal(again.tokenId, refGen.tokens[0]);
        await assert.rejects(model.prefill(ids, [], cache), assertWebvlmError("bad_request", "truncate"));
        t.diagnostic(`NMSE after 9 cached: ${e9.toExponential(2)}, after truncate(5): ${e5.toExponential(2)}`);
      } finally {
        cache.dispose();
      }
      let steps = 0;
      await model.warmUp(() => steps++);
      assert.equal(steps, 3);
      assert.deepEqual(gpu.uncapturedErrors, []);
    });

    test("chunked prefill (chunks of 5: sliding windows cut inside chunks) equals the reference; an abort between chunks leaves the cache", async (t) => {
      assert.ok(model, "loaded by the first test");
      setPrefillChunkTokens(5);
      const cache = model.createCache(ids.length + 1);
      try {
        const pre = await model.prefill(ids, [], cache, { read: "both" });
        const e = nmse(pre.logits!, refGen.firstLogits);
        assert.ok(e < 1e-9, `chunked prefill NMSE ${e}`);
        assert.equal(pre.tokenId, refGen.tokens[0]);
        // Abort fired by the first chunk's submit: no second chunk, cache back to its length (3).
        cache.truncate(3);
        const ac = new AbortController();
        const queue = gpu.device.queue as GPUQueue & { submit: GPUQueue["submit"] };
        const original = queue.submit;
        let submits = 0;
        queue.submit = function (this: GPUQueue, buffers: Iterable<GPUCommandBuffer>) {
          if (++submits === 1) ac.abort();
          return original.call(this, buffers);
        };
        try {
          await assert.rejects(model.prefill(ids, [], cache, { read: "logits", signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
        } finally {
          queue.submit = original;
        }
        assert.equal(submits, 1);
        assert.equal(cache.length, 3);
        await assert.rejects(model.decode(ids[3], cache, { signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
        assert.equal(cache.length, 3);
        const again = await model.prefill(ids, [], cache, { read: "logits" });
        assert.equal(again.reused, 3);
        assert.ok(nmse(again.logits!, refGen.firstLogits) < 1e-9);
        t.diagnostic(`${ids.length} tokens in chunks of 5: NMSE ${e.toExponential(2)}`);
      } finally {
        cache.dispose();
        setPrefillChunkTokens();
      }
    });

    test("rope tables equal the reference's (prompt length and past the original length)", (t) => {
      const spec = config.decoder.rope;
      let differs = 0;
      for (const seqLen of [ids.length, ids.length + TOKENS, 200]) {
        const got = ropeTables(spec, seqLen);
        const want = refRopeParameters(ref.config.rope, seqLen);
        assert.deepEqual(Array.from(got.invFreq), Array.from(want.invFreq), `inv_freq at seq_len ${seqLen}`);
        assert.equal(got.scaling, want.attentionScaling);
        if (Array.from(got.invFreq).some((x, j) => x !== ropeTables({ ...spec, kind: "default" } as never, seqLen).invFreq[j])) differs++;
      }
      if (fam === "llama3" || fam === "phi3") assert.ok(differs > 0, "the scaled table must differ from the default one");
      t.diagnostic(`${spec.kind}: scaling ${ropeTables(spec, 200).scaling.toFixed(6)}`);
    });

    test("the tensor table is exactly the checkpoint's tensors, with their shapes", async () => {
      const ckpt = await openCheckpointDir(dir);
      checkpoints.push(ckpt);
      const table = decoderTensorTable(config.decoder);
      assert.deepEqual(table.map((s) => s.name).sort(), ckpt.names().sort());
      for (const s of table) assert.deepEqual(ckpt.info(s.name).shape, s.shape, s.name);
    });

    test("media is unsupported_feature; no placeholders", async () => {
      const opened = resolveFamily(await readJson(dir, "config.json")).open(await readJson(dir, "config.json"));
      const proc = opened.createProcessor({ preprocessorConfig: {}, processorConfig: {}, addedTokenId: () => undefined });
      assert.deepEqual(await proc.prepare([]), []);
      assert.deepEqual(proc.placeholders([]), []);
      await assert.rejects(proc.prepare([{ kind: "image", source: "x.png", options: {} }]), assertWebvlmError("unsupported_feature", "text-only"));
    });
  });
}

/** The reference on the values a `fmt` load represents: every matrix rounded row-wise along K. */
async function roundedRef(dir: string, fmt: "q8" | "q4" | "f16"): Promise<RefDecoder> {
  const raw = readSafetensorsDir(dir);
  for (const t of raw.values()) if (t.shape.length === 2) t.data = roundTripValues(t.data, t.shape[0], t.shape[1], fmt);
  return buildRefDecoder(refDecoderConfig(await readJson(dir, "config.json"), await readJson(dir, "generation_config.json")), raw);
}

for (const [fam, fmt] of [["phi3", "q8"], ["mistral", "q4"], ["qwen2", "f16"]] as const) {
  test(`${fam} ${fmt} load (fused rows quantized per row): logits and tokens equal a ${fmt}-rounded reference`, async (t) => {
    const dir = join(root, fam);
    const cfgJson = await readJson(dir, "config.json");
    const gen = await readJson(dir, "generation_config.json");
    const opened = resolveFamily(cfgJson).open(cfgJson, gen);
    const model = await opened.load(gpu, await dirSource(dir), { textLinear: fmt, embedding: fmt });
    try {
      const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
      const ids = tok.encode(PROMPT, { addSpecialTokens: true }).slice(0, MAX_PROMPT);
      const ref = refDecoderGreedy(await roundedRef(dir, fmt), ids, TOKENS);
      const run = await gpuGreedy(model, ids, TOKENS, FAMILIES[fam].parseConfig(cfgJson, gen).eosTokenIds);
      run.cache.dispose();
      const e = nmse(run.logits, ref.firstLogits);
      assert.ok(e < 1e-9, `${fmt} logits vs the ${fmt}-rounded reference: NMSE ${e}`);
      assert.deepEqual(run.tokens, ref.tokens);
      t.diagnostic(`${fmt}: NMSE=${e.toExponential(2)} vs the rounded reference, ${run.tokens.length} tokens identical`);
    } finally {
      model.dispose();
    }
  });
}

test("qwen2: embedding / lm_head split into row shards (whole tensor, and streamed by readRows) give the same logits", async (t) => {
  const dir = join(root, "qwen2");
  const cfgJson = await readJson(dir, "config.json");
  const opened = resolveFamily(cfgJson).open(cfgJson, await readJson(dir, "generation_config.json"));
  const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
  const ids = tok.encode(PROMPT, { addSpecialTokens: true }).slice(0, MAX_PROMPT);
  const want = refDecoderForward(loadRefDecoder(dir), ids, new RefDecoderCache(2));
  const ckpt = await openCheckpoint({ path: dir });
  try {
    const reads: string[] = [];
    const streamed: TensorSource = { has: (n) => ckpt.weights.has(n), shape: (n) => ckpt.weights.shape(n), read: (n) => (reads.push(n), ckpt.weights.read(n)), readRows: ckpt.weights.readRows!.bind(ckpt.weights) };
    for (const [label, source] of [["whole", await dirSource(dir)], ["readRows", streamed]] as const) {
      const model = await opened.load(gpu, source, { ...F32, maxBindingBytes: 8 << 20 });
      try {
        const cache = model.createCache(ids.length);
        const pre = await model.prefill(ids, [], cache, { read: "both" });
        cache.dispose();
        const e = nmse(pre.logits!, want);
        assert.ok(e < 1e-9, `${label}: NMSE ${e}`);
        assert.equal(pre.tokenId, refArgmax(want));
        const embed = (model as TextOnlyModel).model.weights.embed;
        assert.ok("shards" in embed && embed.shards.length >= 5, "the 38.9 MB table is split");
        t.diagnostic(`${label}: ${"shards" in embed ? embed.shards.length : 1} shards, NMSE=${e.toExponential(2)}`);
      } finally {
        model.dispose();
      }
    }
    assert.ok(!reads.includes("model.embed_tokens.weight"), "a streamed table is never read whole");
  } finally {
    await ckpt.close();
  }
});

test("qwen2 with use_sliding_window: a window of 6 on layers >= max_window_layers (1) only, logits and tokens equal the reference", async (t) => {
  const src = join(root, "qwen2");
  const dir = join(root, "qwen2-window");
  await mkdir(dir, { recursive: true });
  for (const f of ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) await copyFile(join(src, f), join(dir, f));
  const cfgJson = { ...(await readJson(src, "config.json")), use_sliding_window: true, sliding_window: 6, max_window_layers: 1 };
  await writeFile(join(dir, "config.json"), JSON.stringify(cfgJson));
  const gen = await readJson(dir, "generation_config.json");
  const opened = resolveFamily(cfgJson).open(cfgJson, gen);
  const config = qwen2Family.parseConfig(cfgJson, gen);
  assert.deepEqual(config.decoder.slidingWindow, [null, 6]);
  const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
  const ids = tok.encode(PROMPT, { addSpecialTokens: true }).slice(0, MAX_PROMPT);
  const ref = loadRefDecoder(dir);
  assert.deepEqual(ref.config.windows, [null, 6]);
  const want = refDecoderGreedy(ref, ids, 8);
  const model = await opened.load(gpu, await dirSource(dir), F32);
  try {
    const run = await gpuGreedy(model, ids, 8, config.eosTokenIds);
    run.cache.dispose();
    const e = nmse(run.logits, want.firstLogits);
    const eLast = nmse(run.lastLogits, want.lastLogits);
    assert.ok(e < 1e-9 && eLast < 1e-9, `NMSE ${e} / last step ${eLast}`);
    assert.deepEqual(run.tokens, want.tokens);
    t.diagnostic(`NMSE=${e.toExponential(2)} (last step ${eLast.toExponential(2)}), ${run.tokens.length} tokens identical`);
  } finally {
    model.dispose();
  }
});

test("phi3: a missing tensor and a wrong shape are named before anything is read", async () => {
  const dir = join(root, "phi3");
  const cfgJson = await readJson(dir, "config.json");
  const opened = resolveFamily(cfgJson).open(cfgJson);
  const base = await dirSource(dir);
  const reads: string[] = [];
  const gone = "model.layers.1.mlp.gate_up_proj.weight";
  const missing: TensorSource = { ...base, has: (n) => n !== gone && base.has(n), read: (n) => (reads.push(n), base.read(n)) };
  await assert.rejects(opened.load(gpu, missing, F32), assertWebvlmError("missing_tensor", gone));
  const wrong = "model.layers.0.self_attn.qkv_proj.weight";
  const misshapen: TensorSource = { ...base, shape: (n) => (n === wrong ? [7, 64] : base.shape(n)), read: (n) => (reads.push(n), base.read(n)) };
  await assert.rejects(opened.load(gpu, misshapen, F32), assertWebvlmError("shape_mismatch", wrong));
  assert.deepEqual(reads, []);
});

test("configs: head_dim, windows, biases, layouts and rope kinds as the families define them", async () => {
  const q = qwen2Family.parseConfig(await readJson(join(root, "qwen2"), "config.json"));
  assert.equal(q.decoder.qkvBias, true);
  assert.equal(q.decoder.oBias, false);
  assert.deepEqual(q.decoder.slidingWindow, [null, null]);
  assert.equal(q.decoder.tieWordEmbeddings, true);
  const m = mistralFamily.parseConfig(await readJson(join(root, "mistral"), "config.json"));
  assert.equal(m.decoder.headDim, 24);
  assert.deepEqual(m.decoder.slidingWindow, [8, 8]);
  const mJson = await readJson(join(root, "mistral"), "config.json");
  delete mJson.sliding_window;
  const mNoKey = mistralFamily.parseConfig(mJson);
  assert.deepEqual(mNoKey.decoder.slidingWindow, [4096, 4096]);
  const lJson = await readJson(join(root, "llama3"), "config.json");
  const l = llamaFamily.parseConfig(lJson);
  assert.equal(l.decoder.rope.kind, "llama3");
  assert.deepEqual([l.decoder.qkvBias, l.decoder.oBias, l.decoder.mlpBias], [true, true, true]);
  const p = phi3Family.parseConfig(await readJson(join(root, "phi3"), "config.json"));
  assert.equal(p.decoder.qkvLayout, "fused");
  assert.equal(p.decoder.rope.kind, "longrope");
  assert.deepEqual(p.decoder.slidingWindow, [20, 20]);
  if (p.decoder.rope.kind === "longrope") assert.equal(p.decoder.rope.attentionFactor, Math.sqrt(1 + Math.log(4) / Math.log(32)));
  assert.throws(() => llamaFamily.parseConfig({ ...lJson, rope_scaling: { rope_type: "yarn", factor: 4 } }), assertWebvlmError("unsupported_feature", "yarn"));
});

test("phi3 longrope switch (original_max_position_embeddings 12): decode at O + 1 recomputes the sequence as generate does; prefill reuses only keys of its own factors", async (t) => {
  const src = join(root, "phi3");
  const dir = join(root, "phi3-switch");
  const O = 12;
  await mkdir(dir, { recursive: true });
  for (const f of ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]) await copyFile(join(src, f), join(dir, f));
  const cfgJson = { ...(await readJson(src, "config.json")), original_max_position_embeddings: O };
  await writeFile(join(dir, "config.json"), JSON.stringify(cfgJson));
  const gen = await readJson(dir, "generation_config.json");
  const tok = new TextTokenizer(await readJson(dir, "tokenizer.json"), await readJson(dir, "tokenizer_config.json"));
  const ids = tok.encode(PROMPT, { addSpecialTokens: true }).slice(0, MAX_PROMPT);
  const ref = loadRefDecoder(dir);
  assert.equal(ref.config.recomputeAt, O);
  const short = ids.slice(0, 8);
  const count = 10;
  const want = refDecoderGreedy(ref, short, count);
  // The step feeding token k sees 8 + k ids with 8 + k - 1 cached: the switch is at k = O + 1 - 8.
  const k = O + 1 - short.length;
  assert.deepEqual(want.recomputedAt, [k], "the reference generation crosses O + 1 (no early eos)");
  const atSwitch = [...short, ...want.tokens.slice(0, k)];
  const wantSwitch = refDecoderForward(ref, atSwitch, new RefDecoderCache(ref.config.layers));
  // Control: the stale cache (short keys extended with long ones) gives other logits.
  const stale = new RefDecoderCache(ref.config.layers);
  refDecoderForward(ref, atSwitch.slice(0, -1), stale);
  const staleLogits = refDecoderForward(ref, atSwitch.slice(-1), stale);
  assert.ok(nmse(staleLogits, wantSwitch) > 1e-6, "the recompute must matter for this checkpoint");

  const opened = resolveFamily(cfgJson).open(cfgJson, gen);
  const vlm = await opened.load(gpu, await dirSource(dir), F32);
  assert.ok(vlm instanceof TextOnlyModel);
  const model = vlm.model;
  assert.equal(model.switchLength, O);
  setPrefillChunkTokens(5); // the 13-token recompute takes 3 chunks
  const cache = model.createCache(40);
  try {
    // Generation across O + 1: tokens, the switch step's and the last step's logits.
    const pre = await model.prefill(short, cache, { read: "both" });
    const tokens = [pre.tokenId!];
    const recomputed: number[] = [];
    let switchLogits: Float32Array | null = null;
    let lastLogits = pre.logits!;
    while (tokens.length < want.tokens.length) {
      const step = await model.decode(tokens[tokens.length - 1], cache, { read: "both" });
      if (step.recomputed) {
        recomputed.push(tokens.length);
        switchLogits = step.logits;
        assert.equal(cache.length, O + 1);
        assert.ok(cache.longKeys.every((x) => x), "every key recomputed with the long factors");
      }
      tokens.push(step.tokenId!);
      lastLogits = step.logits!;
    }
    assert.deepEqual(recomputed, [k]);
    assert.deepEqual(tokens, want.tokens);
    assert.deepEqual(cache.ids, [...short, ...tokens.slice(0, -1)]);
    const eSwitch = nmse(switchLogits!, wantSwitch);
    const eLast = nmse(lastLogits, want.lastLogits);
    assert.ok(eSwitch < 1e-9 && eLast < 1e-9, `switch step NMSE ${eSwitch}, last step ${eLast}`);

    // An abort between the recompute's chunks leaves the cache empty; the sequence prefilled again (13 > O: long) matches.
    cache.truncate(0);
    await model.prefill(short, cache, { read: "argmax" });
    for (let i = 0; i < k - 1; i++) await model.decode(want.tokens[i], cache, { read: "argmax" });
    assert.equal(cache.length, O);
    const ac = new AbortController();
    const queue = gpu.device.queue as GPUQueue & { submit: GPUQueue["submit"] };
    const original = queue.submit;
    let submits = 0;
    queue.submit = function (this: GPUQueue, buffers: Iterable<GPUCommandBuffer>) {
      if (++submits === 1) ac.abort();
      return original.call(this, buffers);
    };
    try {
      await assert.rejects(model.decode(want.tokens[k - 1], cache, { signal: ac.signal }), assertWebvlmError("aborted", "aborted"));
    } finally {
      queue.submit = original;
    }
    assert.equal(submits, 1);
    assert.equal(cache.length, 0);
    const again = await model.prefill(atSwitch, cache, { read: "both" });
    assert.equal(again.reused, 0);
    assert.ok(nmse(again.logits!, wantSwitch) < 1e-9);

    // Second turn: a short first turn (short keys), then a prompt past O that extends it: recomputed, as a fresh pass.
    cache.truncate(0);
    await model.prefill(short, cache, { read: "argmax" });
    const long = await model.prefill(ids, cache, { read: "both" });
    assert.equal(long.reused, 0, "short-factor keys are not reused under a long pass");
    const fresh = refDecoderForward(ref, ids, new RefDecoderCache(ref.config.layers));
    const eLong = nmse(long.logits!, fresh);
    assert.ok(eLong < 1e-9, `second turn NMSE ${eLong}`);
    assert.equal(long.tokenId, refArgmax(fresh));
    // Long keys are reused by a long prompt, not by a short one.
    cache.truncate(20);
    const longAgain = await model.prefill(ids, cache, { read: "logits" });
    assert.equal(longAgain.reused, 20);
    assert.ok(nmse(longAgain.logits!, fresh) < 1e-9);
    cache.truncate(6);
    const back = await model.prefill(ids.slice(0, 10), cache, { read: "logits" });
    assert.equal(back.reused, 0, "long-factor keys are not reused under a short pass");
    assert.ok(nmse(back.logits!, refDecoderForward(ref, ids.slice(0, 10), new RefDecoderCache(ref.config.layers))) < 1e-9);
    t.diagnostic(`recompute at token ${k}: NMSE ${eSwitch.toExponential(2)} (stale cache ${nmse(staleLogits, wantSwitch).toExponential(2)}); second turn ${eLong.toExponential(2)}`);
    assert.deepEqual(gpu.uncapturedErrors, []);
  } finally {
    cache.dispose();
    setPrefillChunkTokens();
    vlm.dispose();
  }
});
