// `webvlm quantize` round trip on the GPU (Dawn): a tiny Qwen2-VL checkpoint quantized to webvlm's
// own format (loader/webvlm_quant.ts) loads with no quantizing, and its greedy answer and every
// logprob (top 5 per token) are IDENTICAL to an in-situ quantized load of the source at the same
// format: q4 through the CLI; q8 in-process with small shards (sharded layout + index), its packed
// bytes checked against the runtime's quantize() of the source.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, open, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import type { ChatCompletion } from "../../src/api/types.ts";
import { Engine } from "../../src/engine/engine.ts";
import { openCheckpoint, resolveCheckpointLocation } from "../../src/loader/checkpoint.ts";
import { nodeFileSource } from "../../src/loader/file_node.ts";
import type { ProgressEvent } from "../../src/loader/progress.ts";
import { readSafetensorsHeader } from "../../src/loader/safetensors.ts";
import { memorySpool, quantizeCheckpoint } from "../../src/loader/webvlm_quant.ts";
import { resolveFamily } from "../../src/models/registry.ts";
import { quantize } from "../../src/quant/pack.ts";

const run = promisify(execFile);
const repo = new URL("../../", import.meta.url).pathname;
const cli = join(repo, "scripts/cli.mjs");
const LAYERS = 2; // tiny-a
const LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

let dir = "";
let source = "";
let engine: Engine;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-quantize-"));
  source = join(dir, "tiny-a");
  await makeTinyQwen2VL(source, "tiny-a");
  engine = await Engine.create();
});
after(async () => {
  await engine?.unload();
  engine?.gpu.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Greedy answer with logprobs, and the progress phases of the load. */
async function answer(model: string, quantization: "q4" | "q8"): Promise<{ completion: ChatCompletion; phases: ProgressEvent[] }> {
  const phases: ProgressEvent[] = [];
  await engine.load(model, { quantization, onProgress: (e) => phases.push(e) });
  const completion = await engine.chat.completions.create({
    messages: [{ role: "user", content: "Describe a cat in one sentence." }],
    max_tokens: 4,
    temperature: 0,
    logprobs: true,
    top_logprobs: 5,
    stream: false,
  });
  return { completion, phases };
}

/** Every tensor name -> [dtype, shape] over the directory's safetensors files, and their bytes. */
async function tensors(d: string): Promise<{ table: Map<string, [string, number[]]>; bytes: number }> {
  const table = new Map<string, [string, number[]]>();
  let bytes = 0;
  for (const f of (await readdir(d)).filter((x) => x.endsWith(".safetensors"))) {
    const src = await nodeFileSource(join(d, f));
    for (const t of (await readSafetensorsHeader(src)).tensors.values()) table.set(t.name, [t.dtype, t.shape]);
    await src.close?.();
    bytes += (await stat(join(d, f))).size;
  }
  return { table, bytes };
}

function checkLayout(src: Map<string, [string, number[]]>, out: Map<string, [string, number[]]>, bits: number): void {
  let quantized = 0;
  for (const [name, [dtype, shape]] of src) {
    const linear = LINEARS.some((l) => name.startsWith("model.layers.") && name.endsWith(`${l}.weight`));
    if (!linear) {
      assert.deepEqual(out.get(name), [dtype, shape], `${name} is stored as it was`);
      continue;
    }
    quantized++;
    assert.equal(out.has(name), false, `${name} has no plain copy`);
    const [rows, cols] = shape;
    const pc = Math.ceil(cols / 32) * 32;
    assert.deepEqual(out.get(`${name}.qdata`), ["U32", [rows, (pc * bits) / 32]]);
    assert.deepEqual(out.get(`${name}.scales`), ["F16", [rows, pc / 32]]);
    assert.equal(out.has(`${name}.zeros`), false);
  }
  assert.equal(quantized, LAYERS * LINEARS.length);
  assert.equal(out.size, src.size + quantized, "nothing else added");
}

function checkIdentical(insitu: ChatCompletion, pre: ChatCompletion): void {
  assert.ok(pre.choices[0].logprobs?.content?.length, "logprobs came back");
  assert.equal(pre.choices[0].message.content, insitu.choices[0].message.content);
  assert.deepEqual(pre.choices[0].logprobs, insitu.choices[0].logprobs);
  assert.equal(pre.usage.completion_tokens, insitu.usage.completion_tokens);
}

test("webvlm quantize --dtype q4: the output loads with no quantizing and answers identically to an in-situ q4 load", { timeout: 300_000 }, async () => {
  const out = join(dir, "tiny-a-q4");
  const { stdout } = await run(process.execPath, [cli, "quantize", "--model", source, "--dtype", "q4", "--out", out], { maxBuffer: 1 << 24 });
  assert.equal(JSON.parse(stdout).quantized, LAYERS * LINEARS.length);
  const config = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
  assert.deepEqual(config.quantization_config, { quant_method: "webvlm", format: "q4", group_size: 32, version: 1 });
  const { quantization_config: _, ...rest } = config;
  assert.deepEqual(rest, JSON.parse(await readFile(join(source, "config.json"), "utf8")));
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json", "chat_template.json"]) {
    assert.deepEqual(await readFile(join(out, f)), await readFile(join(source, f)), f);
  }
  assert.deepEqual((await readdir(out)).filter((f) => f.includes("spool")), [], "the spool is removed");
  const s = await tensors(source);
  const o = await tensors(out);
  checkLayout(s.table, o.table, 4);
  assert.ok(o.bytes < s.bytes, `output ${o.bytes} bytes < source ${s.bytes}`);

  const insitu = await answer(source, "q4");
  assert.equal(insitu.phases.filter((e) => e.phase === "quantize").length, LAYERS * 4, "the source is quantized in-situ (fused qkv, gate|up)");
  // Asking for another format changes nothing for matrices the checkpoint holds quantized.
  const pre = await answer(out, "q8");
  assert.deepEqual(pre.phases.filter((e) => e.phase === "quantize"), [], "nothing is quantized");
  assert.equal(pre.phases.filter((e) => e.phase === "cache").length, LAYERS * 4, "every decoder matrix loads packed");
  checkIdentical(insitu.completion, pre.completion);

  // An output directory that is not empty is refused before anything is written.
  await assert.rejects(
    run(process.execPath, [cli, "quantize", "--model", source, "--dtype", "q4", "--out", out]),
    (e: { code?: number; stderr?: string }) => e.code === 1 && /not empty/.test(e.stderr ?? ""),
  );
});

test("q8 in shards: sharded layout with an index, every packed matrix byte-identical to the in-situ q8 quantization", { timeout: 300_000 }, async () => {
  const out = join(dir, "tiny-a-q8");
  const ck = await openCheckpoint(source);
  const { store } = await resolveCheckpointLocation(source);
  const files = new Map<string, Uint8Array[]>();
  try {
    const r = await quantizeCheckpoint({
      gpu: engine.gpu,
      weights: ck.weights,
      config: ck.config,
      family: resolveFamily(ck.config).open(ck.config, ck.generationConfig),
      format: "q8",
      readFile: (f) => store.readFile(f),
      spool: memorySpool(),
      shardBytes: 4_000_000,
      sink: {
        async writeFile(f, b) { files.set(f, [b]); },
        async create(f) {
          const parts: Uint8Array[] = [];
          files.set(f, parts);
          return { write: async (b) => { parts.push(b.slice()); }, close: async () => {} };
        },
      },
    });
    assert.equal(r.quantized.length, LAYERS * LINEARS.length);
  } finally {
    await ck.close();
  }
  await rm(out, { recursive: true, force: true });
  await mkdir(out);
  for (const [f, parts] of files) {
    const fh = await open(join(out, f), "w");
    for (const p of parts) await fh.write(p);
    await fh.close();
  }
  const shards = [...files.keys()].filter((f) => f.endsWith(".safetensors")).sort();
  assert.ok(shards.length >= 2, `${shards.length} shards`);
  assert.deepEqual(shards, shards.map((_, i) => `model-${String(i + 1).padStart(5, "0")}-of-${String(shards.length).padStart(5, "0")}.safetensors`));
  const index = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
  const o = await tensors(out);
  assert.deepEqual(Object.keys(index.weight_map).sort(), [...o.table.keys()].sort());
  checkLayout((await tensors(source)).table, o.table, 8);

  // Every stored matrix is, byte for byte, what the runtime's in-situ q8 quantization makes of the
  // source (quantize() is row-wise, so the parts of a fused matrix are its rows); the q4 test above
  // shows on the GPU that such bytes load to identical logits.
  const src = await openCheckpoint(source);
  const q = await openCheckpoint(out);
  try {
    for (const name of q.weights.names()) {
      const packed = await q.weights.readQuantized!(name);
      if (!packed) continue;
      const [rows, cols] = src.weights.shape(name);
      const want = quantize(await src.weights.read(name), rows, cols, "q8");
      assert.deepEqual([packed.rows, packed.cols, packed.format], [rows, cols, "q8"], name);
      assert.ok(Buffer.from(packed.data.buffer, packed.data.byteOffset, packed.data.byteLength).equals(Buffer.from(want.data.buffer)), name);
      assert.ok(Buffer.from(packed.scales.buffer, packed.scales.byteOffset, packed.scales.byteLength).equals(Buffer.from(want.scales.buffer)), name);
    }
  } finally {
    await src.close();
    await q.close();
  }
});
