// webvlm's own pre-quantized format, read side (CPU only): a directory holding X.weight.qdata /
// .scales (/.zeros) opens through openCheckpoint -> withPrequantized -> webvlmQuantWeights with
// each quantized matrix under its plain name, its logical shape, its stored bytes, and
// readQuantized returning exactly the stored PackedQuant; quantization_config is validated with
// typed errors. The write side (webvlm quantize) and the GPU round trip: test/cli/quantize.test.ts.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isWebvlmError } from "../../src/api/errors.ts";
import { openCheckpoint } from "../../src/loader/checkpoint.ts";
import { writeJson, writeSafetensorsFile } from "../../src/loader/file_node.ts";
import type { TensorToWrite } from "../../src/loader/safetensors.ts";
import { memorySpool, quantizeCheckpoint, webvlmQuantizationConfig, type QuantizeOptions } from "../../src/loader/webvlm_quant.ts";
import { dequantize, quantize, type PackedQuant } from "../../src/quant/pack.ts";

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function random(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

const bytes = (a: Uint32Array | Uint16Array | Uint8Array | Float32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function parts(name: string, p: PackedQuant): TensorToWrite[] {
  const groups = p.paddedCols / 32;
  const out: TensorToWrite[] = [
    { name: `${name}.qdata`, dtype: "U32", shape: [p.rows, p.data.length / p.rows], data: bytes(p.data) },
    { name: `${name}.scales`, dtype: "F16", shape: [p.rows, groups], data: bytes(p.scales) },
  ];
  if (p.zeros) out.push({ name: `${name}.zeros`, dtype: "U8", shape: [p.rows, groups], data: p.zeros });
  return out;
}

async function checkpointDir(tensors: TensorToWrite[], qc: unknown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "webvlm-quant-"));
  dirs.push(dir);
  await writeJson(join(dir, "config.json"), { model_type: "test", quantization_config: qc });
  await writeJson(join(dir, "tokenizer.json"), {});
  await writeSafetensorsFile(join(dir, "model.safetensors"), tensors);
  return dir;
}

// A q4 matrix 40 columns wide (padded to 64: cols from quantization_config.cols), and one with zero points.
const m = quantize(random(5 * 40, 1), 5, 40, "q4");
const zq: PackedQuant = (() => {
  const p = quantize(random(3 * 64, 2), 3, 64, "q4");
  return { ...p, zeros: Uint8Array.from({ length: 3 * 2 }, (_, i) => (i * 5) % 16) };
})();
const plain = random(4 * 8, 3);

test("a webvlm q4 checkpoint: quantized matrices under their plain names, packed bytes as stored", async () => {
  const dir = await checkpointDir(
    [
      { name: "a.weight", dtype: "F32", shape: [4, 8], data: plain },
      ...parts("m.weight", m),
      ...parts("z.weight", zq),
    ],
    webvlmQuantizationConfig("q4", { "m.weight": 40 }),
  );
  const ck = await openCheckpoint(dir);
  try {
    const w = ck.weights;
    assert.deepEqual(w.names().sort(), ["a.weight", "m.weight", "z.weight"]);
    assert.equal(w.has("m.weight.qdata"), false);
    assert.equal(w.has("m.weight.scales"), false);
    assert.equal(w.has("z.weight.zeros"), false);
    assert.deepEqual(w.shape("m.weight"), [5, 40]);
    assert.deepEqual(w.shape("z.weight"), [3, 64]);
    assert.equal(w.byteSize("m.weight"), m.data.byteLength + m.scales.byteLength);
    assert.equal(w.byteSize("z.weight"), zq.data.byteLength + zq.scales.byteLength + zq.zeros!.byteLength);
    assert.equal(w.totalBytes, w.byteSize("a.weight") + w.byteSize("m.weight") + w.byteSize("z.weight"));
    assert.equal(w.file("m.weight"), "model.safetensors");
    assert.ok(w.readQuantized);
    assert.equal(await w.readQuantized("a.weight"), undefined);
    const got = await w.readQuantized("m.weight");
    assert.deepEqual({ ...got!, data: [...got!.data], scales: [...got!.scales] }, { ...m, data: [...m.data], scales: [...m.scales] });
    const gz = await w.readQuantized("z.weight");
    assert.deepEqual([...gz!.zeros!], [...zq.zeros!]);
    assert.deepEqual([...gz!.data], [...zq.data]);
    // The plain reads give the values the packed matrix stands for; other tensors pass through.
    assert.deepEqual(await w.read("m.weight"), dequantize(m));
    assert.deepEqual(await w.readRows("z.weight", 1, 2), dequantize(zq).subarray(64, 192));
    assert.deepEqual(await w.read("a.weight"), plain);
    await assert.rejects(w.readBytes("m.weight"), (e) => isWebvlmError(e) && e.code === "unsupported_feature");
  } finally {
    await ck.close();
  }
});

test("a q8 checkpoint reads q8; every wrong quantization_config or layout is a typed error", async () => {
  const m8 = quantize(random(2 * 32, 4), 2, 32, "q8");
  const ok = await openCheckpoint(await checkpointDir(parts("m.weight", m8), webvlmQuantizationConfig("q8")));
  assert.equal((await ok.weights.readQuantized!("m.weight"))!.format, "q8");
  await ok.close();

  const cases: [string, TensorToWrite[], unknown, string, RegExp][] = [
    ["format q3", parts("m.weight", m), { ...webvlmQuantizationConfig("q4"), format: "q3" }, "unsupported_feature", /format "q3"/],
    ["group_size 128", parts("m.weight", m), { ...webvlmQuantizationConfig("q4"), group_size: 128 }, "unsupported_feature", /group_size 128/],
    ["version 2", parts("m.weight", m), { ...webvlmQuantizationConfig("q4"), version: 2 }, "unsupported_feature", /version 2/],
    ["q8 config over q4 blocks", parts("m.weight", m), webvlmQuantizationConfig("q8"), "bad_request", /does not match q8/],
    ["scales without qdata", parts("m.weight", m).slice(1), webvlmQuantizationConfig("q4"), "bad_request", /has no "m.weight.qdata"/],
    ["qdata without scales", parts("m.weight", m).slice(0, 1), webvlmQuantizationConfig("q4"), "bad_request", /has no "m.weight.scales"/],
    ["cols that do not pad to the stored width", parts("m.weight", m), webvlmQuantizationConfig("q4", { "m.weight": 70 }), "bad_request", /70 columns/],
    ["plain and quantized", [...parts("m.weight", m), { name: "m.weight", dtype: "F32", shape: [4, 8], data: plain }], webvlmQuantizationConfig("q4"), "bad_request", /both plain and quantized/],
  ];
  for (const [what, tensors, qc, code, msg] of cases) {
    const dir = await checkpointDir(tensors, qc);
    await assert.rejects(openCheckpoint(dir), (e) => isWebvlmError(e) && e.code === code && msg.test(e.message), what);
  }
});

test("quantize refuses a source that is already quantized, and formats other than q4/q8, before touching the GPU", async () => {
  const ck = await openCheckpoint(await checkpointDir(parts("m.weight", m), webvlmQuantizationConfig("q4")));
  const base = {
    gpu: undefined as unknown as QuantizeOptions["gpu"],
    family: undefined as unknown as QuantizeOptions["family"],
    readFile: async () => undefined,
    spool: memorySpool(),
    sink: { writeFile: async () => assert.fail("nothing is written"), create: async () => assert.fail("nothing is written") },
  };
  try {
    await assert.rejects(
      quantizeCheckpoint({ ...base, weights: ck.weights, config: ck.config, format: "q4" }),
      (e) => isWebvlmError(e) && e.code === "unsupported_feature" && /already quantized/.test(e.message),
    );
    await assert.rejects(
      quantizeCheckpoint({ ...base, weights: ck.weights, config: {}, format: "q2" as "q4" }),
      (e) => isWebvlmError(e) && e.code === "bad_request" && /q4 or q8/.test(e.message),
    );
  } finally {
    await ck.close();
  }
});
