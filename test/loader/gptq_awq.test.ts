// GPTQ / AWQ checkpoints through openCheckpoint (src/loader/gptq_awq.ts): every fixture variant of
// test/fixtures/quant (AutoGPTQ / AutoAWQ packings of tiny-a's decoder linears, written by
// scripts/make_quantized_fixtures.py) repacks into PackedQuant whose values equal the independent
// reference dequantizer (test/reference/gptq_awq_dequant.ts) exactly; act-order g_idx, bad bits /
// group sizes / versions / formats and unknown fields are typed errors. No GPU needed.
import assert from "node:assert/strict";
import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { openCheckpoint, type Checkpoint } from "../../src/loader/checkpoint.ts";
import { parseGptqAwqConfig } from "../../src/loader/gptq_awq.ts";
import { dequantize } from "../../src/quant/pack.ts";
import { dequantizeFixture, quantFixtures, readRawSafetensors, type QuantFixture } from "../reference/gptq_awq_dequant.ts";

let root = "";
const fixtures = quantFixtures();
const byName = (n: string): QuantFixture => {
  const f = fixtures.find((x) => x.name === n);
  if (!f) throw new Error(`no fixture ${n}`);
  return f;
};

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-gptq-"));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

let dirs = 0;
/** A checkpoint directory: the fixture's safetensors as model.safetensors, a config with its quantization_config. */
async function open(f: QuantFixture, qc: Record<string, unknown> = f.quantizationConfig): Promise<Checkpoint> {
  const dir = join(root, `d${dirs++}`);
  await (await import("node:fs/promises")).mkdir(dir);
  await copyFile(f.file, join(dir, "model.safetensors"));
  await writeFile(join(dir, "config.json"), JSON.stringify({ model_type: "qwen2_vl", quantization_config: qc }));
  await writeFile(join(dir, "tokenizer.json"), "{}");
  return openCheckpoint(dir);
}

async function rejectsWith(p: Promise<unknown> | (() => unknown), code: WebvlmErrorCode, text?: string, field?: string): Promise<void> {
  await assert.rejects(typeof p === "function" ? async () => p() : p, (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (text) assert.ok(e.message.includes(text), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(text)}`);
    if (field) assert.equal(e.details?.field, field, e.message);
    return true;
  });
}

const LOADABLE = fixtures.filter((f) => f.name !== "gptq_4bit_descact_g32");

describe("every fixture variant repacks to the reference values", () => {
  assert.ok(LOADABLE.length >= 10, "fixtures missing: run /usr/bin/python3 scripts/make_quantized_fixtures.py");
  for (const f of LOADABLE) {
    test(`${f.name}: ${f.description}`, async () => {
      const ref = dequantizeFixture(f);
      const raw = readRawSafetensors(f.file);
      const ck = await open(f);
      try {
        const w = ck.weights;
        const bits = f.quantizationConfig.bits as number;
        const sym = f.quantizationConfig.quant_method === "gptq" && f.quantizationConfig.sym === true;
        assert.equal(ref.size, 14);
        const names = w.names();
        for (const n of names) assert.ok(!/\.(qweight|qzeros|scales|g_idx)$/.test(n), `${n} should be hidden`);
        for (const [module, r] of ref) {
          const name = `${module}.weight`;
          assert.ok(names.includes(name) && w.has(name), `${name} listed`);
          assert.ok(!w.has(`${module}.qweight`));
          assert.deepEqual(w.shape(name), [r.rows, r.cols]);
          let parts = 0;
          for (const s of ["qweight", "qzeros", "scales", "g_idx"]) parts += raw.get(`${module}.${s}`)?.bytes.byteLength ?? 0;
          assert.equal(w.byteSize(name), parts, `${name} byteSize`);
          const p = await w.readQuantized!(name);
          assert.ok(p, `${name} readQuantized`);
          assert.equal(p.format, bits === 4 ? "q4" : "q8");
          assert.equal(p.rows, r.rows);
          assert.equal(p.cols, r.cols);
          assert.equal(p.paddedCols, r.cols);
          assert.equal(p.data.length, (r.rows * r.cols * bits) / 32);
          assert.equal(p.scales.length, (r.rows * r.cols) / 32);
          // Symmetric GPTQ (every zero 8 / 128) loads in the plain symmetric layout; the rest carry zeros.
          assert.equal(p.zeros === undefined, sym, `${name}: zeros ${p.zeros ? "present" : "absent"}`);
          if (p.zeros) assert.equal(p.zeros.length, (r.rows * r.cols) / 32);
          const got = dequantize(p);
          let diffs = 0;
          for (let i = 0; i < got.length; i++) if (!Object.is(got[i], r.values[i]) && got[i] !== r.values[i]) diffs++;
          assert.equal(diffs, 0, `${name}: ${diffs} of ${got.length} values differ from the reference`);
          // The f32 fallback read gives the same values; raw bytes of a quantized matrix are refused.
          const viaRead = await w.read(name);
          assert.deepEqual(Array.from(viaRead.subarray(0, 64)), Array.from(r.values.subarray(0, 64)));
          const rows = await w.readRows(name, 1, 2);
          assert.deepEqual(Array.from(rows), Array.from(r.values.subarray(r.cols, 3 * r.cols)));
          await rejectsWith(w.readBytes(name), "unsupported_feature");
          // Codes really differ between inputs (a test that cannot fail is a defect): not all one value.
          assert.ok(new Set(got).size > 8, `${name}: values too uniform`);
        }
        // Unquantized tensors (the biases) pass through.
        const bias = "model.layers.1.self_attn.k_proj.bias";
        assert.ok(w.has(bias));
        assert.equal(w.dtype(bias), "F16");
        assert.equal(await w.readQuantized!(bias), undefined);
        assert.equal((await w.read(bias)).length, 32);
        assert.equal(w.totalBytes, [...raw.values()].reduce((a, t) => a + t.bytes.byteLength, 0));
      } finally {
        await ck.close();
      }
    });
  }
});

test("GPTQ v1 and v2 of the same codes: v1 adds one to the stored zeros", async () => {
  // Same seeds -> same codes and scales; v1 stores zero - 1, v2 the zero.
  const v1 = readRawSafetensors(byName("gptq_4bit_asym_g32").file);
  const v2 = readRawSafetensors(byName("gptq_4bit_asym_g32_v2").file);
  const m = "model.layers.0.mlp.up_proj";
  assert.deepEqual(v1.get(`${m}.qweight`)!.bytes, v2.get(`${m}.qweight`)!.bytes);
  assert.notDeepEqual(v1.get(`${m}.qzeros`)!.bytes, v2.get(`${m}.qzeros`)!.bytes);
  const a = dequantizeFixture(byName("gptq_4bit_asym_g32")).get(m)!;
  const b = dequantizeFixture(byName("gptq_4bit_asym_g32_v2")).get(m)!;
  assert.deepEqual(a.values, b.values);
});

test("act-order GPTQ (desc_act, permuted g_idx) is refused with unsupported_feature when read", async () => {
  const f = byName("gptq_4bit_descact_g32");
  const ck = await open(f);
  try {
    const name = "model.layers.0.self_attn.q_proj.weight";
    assert.deepEqual(ck.weights.shape(name), [64, 64]);
    await rejectsWith(ck.weights.readQuantized!(name), "unsupported_feature", "act-order GPTQ checkpoints", "desc_act");
    await rejectsWith(ck.weights.read(name), "unsupported_feature", "g_idx");
  } finally {
    await ck.close();
  }
  // The reference still dequantizes it (scales / zeros gathered through g_idx): the refusal is ours.
  const ref = dequantizeFixture(f).get("model.layers.0.self_attn.q_proj")!;
  assert.ok(ref.values.some((v) => v !== 0));
});

describe("quantization_config errors", () => {
  const gptq = (): Record<string, unknown> => ({ ...byName("gptq_4bit_asym_g32").quantizationConfig });
  const awq = (): Record<string, unknown> => ({ ...byName("awq_4bit_g32").quantizationConfig });
  const cases: [string, Record<string, unknown>, WebvlmErrorCode, string, string][] = [
    ["gptq bits 3", { ...gptq(), bits: 3 }, "unsupported_feature", "bits 3", "bits"],
    ["gptq bits 2", { ...gptq(), bits: 2 }, "unsupported_feature", "4 and 8", "bits"],
    ["gptq bits as a string", { ...gptq(), bits: "4" }, "bad_request", "integer", "bits"],
    ["gptq bits missing", (() => { const q = gptq(); delete q.bits; return q; })(), "bad_request", "missing", "bits"],
    ["awq bits 8", { ...awq(), bits: 8 }, "unsupported_feature", "bits 8", "bits"],
    ["group 100", { ...gptq(), group_size: 100 }, "unsupported_feature", "multiple of 32", "group_size"],
    ["group 16", { ...gptq(), group_size: 16 }, "unsupported_feature", "group_size 16", "group_size"],
    ["group 0", { ...gptq(), group_size: 0 }, "unsupported_feature", "group_size 0", "group_size"],
    ["group 1.5", { ...gptq(), group_size: 1.5 }, "bad_request", "integer", "group_size"],
    ["awq GEMV", { ...awq(), version: "gemv" }, "unsupported_feature", "GEMM", "version"],
    ["awq exllama", { ...awq(), version: "exllama" }, "unsupported_feature", "exllama", "version"],
    ["awq without zero points", { ...awq(), zero_point: false }, "unsupported_feature", "zero_point", "zero_point"],
    ["awq llm-awq backend", { ...awq(), backend: "llm-awq" }, "unsupported_feature", "backend", "backend"],
    ["gptq marlin format", { ...gptq(), checkpoint_format: "marlin" }, "unsupported_feature", "marlin", "checkpoint_format"],
    ["gptq is_marlin_format", { ...gptq(), is_marlin_format: true }, "unsupported_feature", "Marlin", "is_marlin_format"],
    ["gptq sym not boolean", { ...gptq(), sym: "yes" }, "bad_request", "sym", "sym"],
    ["gptq dynamic overrides", { ...gptq(), dynamic: { "-:.*": {} } }, "unsupported_feature", "dynamic", "dynamic"],
    ["unknown gptq field", { ...gptq(), zero_offset: 3 }, "unsupported_feature", "zero_offset", "zero_offset"],
    ["unknown awq field", { ...awq(), sym: true }, "unsupported_feature", "quantization_config.sym", "sym"],
  ];
  for (const [what, qc, code, text, field] of cases) {
    test(what, async () => {
      await rejectsWith(() => parseGptqAwqConfig(qc), code, text, field);
      // And through openCheckpoint (the config.json path).
      await rejectsWith(open(byName(qc.quant_method === "awq" ? "awq_4bit_g32" : "gptq_4bit_asym_g32"), qc), code, text, field);
    });
  }

  test("a group size that does not divide a layer's in_features (128 vs 64) is refused when opened", async () => {
    await rejectsWith(open(byName("gptq_4bit_asym_g32"), { ...gptq(), group_size: 128 }), "unsupported_feature", "does not divide in_features 64", "group_size");
  });

  test("a group size that disagrees with the stored scales is a shape mismatch", async () => {
    await rejectsWith(open(byName("gptq_4bit_asym_g32"), { ...gptq(), group_size: 64 }), "shape_mismatch", "scales");
  });

  test("bits that disagree with the stored qweight are a shape mismatch", async () => {
    await rejectsWith(open(byName("gptq_4bit_asym_g32"), { ...gptq(), bits: 8 }), "shape_mismatch");
  });

  test("informational fields of real configs are accepted", () => {
    // Qwen/Qwen2-VL-2B-Instruct-GPTQ-Int4 and -AWQ style configs.
    assert.deepEqual(parseGptqAwqConfig({
      bits: 4, damp_percent: 0.01, desc_act: false, group_size: 128, modules_in_block_to_quantize: null, quant_method: "gptq",
      sym: true, true_sequential: true, use_exllama: true, exllama_config: { version: 1 }, model_seqlen: 2048, batch_size: 1,
    }), { method: "gptq", bits: 4, groupSize: 128, zerosMinusOne: true });
    assert.deepEqual(parseGptqAwqConfig({ bits: 4, group_size: 128, modules_to_not_convert: null, quant_method: "awq", version: "GEMM", zero_point: true }),
      { method: "awq", bits: 4, groupSize: 128, zerosMinusOne: false });
    assert.deepEqual(parseGptqAwqConfig({ bits: 8, group_size: -1, quant_method: "gptq", checkpoint_format: "gptq_v2" }),
      { method: "gptq", bits: 8, groupSize: -1, zerosMinusOne: false });
  });
});

test("GPTQ 8-bit v1 stored zero 255 (a zero of 0 written as -1) cannot be represented: typed error", async () => {
  const f = byName("gptq_8bit_asym_g32");
  const dir = join(root, "z255");
  await (await import("node:fs/promises")).mkdir(dir);
  const { readFile } = await import("node:fs/promises");
  const bytes = new Uint8Array(await readFile(f.file));
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, { data_offsets: [number, number] }>;
  const at = 8 + n + header["model.layers.0.mlp.gate_proj.qzeros"].data_offsets[0];
  bytes[at] = 0xff; // first zero of output 0, group 0
  await writeFile(join(dir, "model.safetensors"), bytes);
  await writeFile(join(dir, "config.json"), JSON.stringify({ quantization_config: f.quantizationConfig }));
  await writeFile(join(dir, "tokenizer.json"), "{}");
  const ck = await openCheckpoint(dir);
  try {
    await rejectsWith(ck.weights.readQuantized!("model.layers.0.mlp.gate_proj.weight"), "unsupported_feature", "zero point 256");
    assert.ok(await ck.weights.readQuantized!("model.layers.0.mlp.up_proj.weight"));
  } finally {
    await ck.close();
  }
});
