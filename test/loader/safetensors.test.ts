// safetensors reader/writer: round trips, hand-built files, header errors,
// sharded index lookup, and the Node file source.
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { nodeFileSource, openCheckpointDir, writeSafetensorsFile } from "../../src/loader/file_node.ts";
import {
  SafetensorsCheckpoint,
  blobSource,
  bytesSource,
  parseSafetensorsIndex,
  readSafetensorsHeader,
  readTensorF32,
  serializeSafetensors,
  type ByteSource,
} from "../../src/loader/safetensors.ts";

/** Builds a file by hand (not with our writer) so the parser is tested on its own. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(typeof header === "string" ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

async function rejectsWith(p: Promise<unknown>, code: WebvlmErrorCode, text?: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (text) assert.ok(e.message.includes(text), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(text)}`);
    return true;
  });
}

test("hand-built F32 file parses and reads; metadata kept", async () => {
  const vals = new Float32Array([1.5, -2, 0.25, 3, 4, 5]);
  const bytes = rawFile(
    { __metadata__: { format: "pt" }, b: { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] } },
    new Uint8Array(vals.buffer),
  );
  const src = bytesSource(bytes);
  const h = await readSafetensorsHeader(src);
  assert.deepEqual(h.metadata, { format: "pt" });
  const info = h.tensors.get("b")!;
  assert.deepEqual(info.shape, [2, 3]);
  assert.equal(info.begin, 8 + h.headerLength);
  assert.deepEqual(Array.from(await readTensorF32(src, h, "b")), Array.from(vals));
});

test("round trip F32 / F16 / BF16, with hand-computed rounding", async () => {
  const third = 1 / 3;
  const values = new Float32Array([0, 1, -2, 0.5, third, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 65504]);
  const file = serializeSafetensors([
    { name: "f32", dtype: "F32", shape: [8], data: values },
    { name: "f16", dtype: "F16", shape: [2, 4], data: values },
    { name: "bf16", dtype: "BF16", shape: [4, 2], data: values },
    { name: "empty", dtype: "F32", shape: [0, 3], data: new Float32Array(0) },
  ], { format: "pt" });
  const src = bytesSource(file);
  const h = await readSafetensorsHeader(src);
  assert.equal(h.headerLength % 8, 0, "header padded to 8 bytes");
  const headerText = new TextDecoder().decode(file.subarray(8, 8 + h.headerLength));
  assert.match(headerText, /^\{.*\} *$/s, "JSON then space padding only");
  assert.deepEqual(h.tensors.get("bf16")!.shape, [4, 2]);
  assert.deepEqual(Array.from(await readTensorF32(src, h, "f32")), Array.from(values));
  // f16: 1/3 -> 0x3555 = 0.333251953125; 1+2^-8 and 1+3*2^-8 are exact in f16 (10-bit mantissa).
  assert.deepEqual(Array.from(await readTensorF32(src, h, "f16")), [0, 1, -2, 0.5, 0.333251953125, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 65504]);
  // bf16 (7-bit mantissa), round to nearest even: 1/3 -> 0x3EAB = 0.333984375;
  // 1+2^-8 is a tie -> 1; 1+3*2^-8 is a tie -> 1+2^-6 (even); 65504 -> 65536.
  assert.deepEqual(Array.from(await readTensorF32(src, h, "bf16")), [0, 1, -2, 0.5, 0.333984375, 1, 1 + 2 ** -6, 65536]);
  assert.equal((await readTensorF32(src, h, "empty")).length, 0);
});

test("raw dtype bytes are written verbatim; writer rejects size mismatches", async () => {
  const bits = new Uint16Array([0x3c00, 0xc000]); // f16 1, -2
  const file = serializeSafetensors([{ name: "h", dtype: "F16", shape: [2], data: new Uint8Array(bits.buffer) }]);
  const src = bytesSource(file);
  assert.deepEqual(Array.from(await readTensorF32(src, await readSafetensorsHeader(src), "h")), [1, -2]);
  assert.throws(() => serializeSafetensors([{ name: "x", dtype: "F32", shape: [3], data: new Float32Array(2) }]), WebvlmError);
  assert.throws(() => serializeSafetensors([
    { name: "x", dtype: "F32", shape: [1], data: new Float32Array(1) },
    { name: "x", dtype: "F32", shape: [1], data: new Float32Array(1) },
  ]), WebvlmError);
});

test("corrupt headers are bad_request", async () => {
  const ok = { t: { dtype: "F32", shape: [2], data_offsets: [0, 8] } };
  const data = new Uint8Array(8);
  const cases: [string, Uint8Array, string?][] = [
    ["shorter than the prefix", new Uint8Array(5), "shorter"],
    ["length past end of file", rawFile(ok, data, 10_000n), "past the end"],
    ["u64 high bits", rawFile(ok, data, 1n << 40n), "too large"],
    ["not JSON", rawFile("{not json}", data), "JSON"],
    ["JSON array", rawFile("[1,2]", data), "not a JSON object"],
    ["no dtype", rawFile({ t: { shape: [2], data_offsets: [0, 8] } }, data), '"t"'],
    ["negative dim", rawFile({ t: { dtype: "F32", shape: [-2], data_offsets: [0, 8] } }, data), "shape"],
    ["offsets reversed", rawFile({ t: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, data), "data_offsets"],
    ["size mismatch", rawFile({ t: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }, data), "8 bytes"],
    ["past data region", rawFile({ t: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, data), "past the"],
    ["metadata value not string", rawFile({ __metadata__: { n: 3 }, ...ok }, data), "__metadata__"],
  ];
  for (const [label, bytes, text] of cases) {
    await rejectsWith(readSafetensorsHeader(bytesSource(bytes)), "bad_request", text).catch((e) => {
      throw new Error(`${label}: ${(e as Error).message}`);
    });
  }
});

test("unknown or non-float dtypes parse but reading them is unsupported_feature", async () => {
  const bytes = rawFile(
    {
      weird: { dtype: "Q4_K", shape: [4], data_offsets: [0, 2] },
      ints: { dtype: "I64", shape: [1], data_offsets: [2, 10] },
    },
    new Uint8Array(10),
  );
  const src = bytesSource(bytes);
  const h = await readSafetensorsHeader(src);
  assert.equal(h.tensors.get("weird")!.dtype, "Q4_K");
  await rejectsWith(readTensorF32(src, h, "weird"), "unsupported_feature", "Q4_K");
  await rejectsWith(readTensorF32(src, h, "ints"), "unsupported_feature", "I64");
  await rejectsWith(readTensorF32(src, h, "nope"), "missing_tensor", '"nope"');
});

test("headers larger than the first speculative read, and sources without a size", async () => {
  // ~2000 tensors with long names: a header well over 64 KiB.
  const tensors = Array.from({ length: 2000 }, (_, i) => ({
    name: `model.layers.${i}.some.rather.long.parameter.name.weight`,
    dtype: "F32" as const,
    shape: [1],
    data: new Float32Array([i]),
  }));
  const file = serializeSafetensors(tensors);
  let reads = 0;
  const counting: ByteSource = { size: file.length, read: async (o, n) => { reads++; return file.subarray(o, o + n); } };
  const h = await readSafetensorsHeader(counting);
  assert.ok(h.headerLength > 64 * 1024);
  assert.equal(reads, 2);
  assert.deepEqual(Array.from(await readTensorF32(counting, h, tensors[1234].name)), [1234]);
  const unsized: ByteSource = { read: async (o, n) => file.subarray(o, o + n) };
  const h2 = await readSafetensorsHeader(unsized);
  assert.equal(h2.tensors.size, 2000);
  const small = serializeSafetensors([tensors[0]]);
  reads = 0;
  await readSafetensorsHeader({ size: small.length, read: async (o, n) => { reads++; return small.subarray(o, o + n); } });
  assert.equal(reads, 1, "a small header costs one read when the size is known");
});

test("Blob source", async () => {
  const file = serializeSafetensors([{ name: "w", dtype: "BF16", shape: [2], data: new Float32Array([2, -0.5]) }]);
  const src = blobSource(new Blob([file]));
  assert.deepEqual(Array.from(await readTensorF32(src, await readSafetensorsHeader(src), "w")), [2, -0.5]);
});

function shardedFixture(): { files: Map<string, Uint8Array>; index: unknown } {
  const a = serializeSafetensors([
    { name: "model.embed_tokens.weight", dtype: "F32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
    { name: "model.norm.weight", dtype: "F16", shape: [2], data: new Float32Array([0.5, 0.25]) },
  ]);
  const b = serializeSafetensors([
    { name: "lm_head.weight", dtype: "BF16", shape: [2, 2], data: new Float32Array([-1, -2, -3, -4]) },
  ]);
  const files = new Map([["model-00001-of-00002.safetensors", a], ["model-00002-of-00002.safetensors", b]]);
  const index = {
    metadata: { total_size: 30 },
    weight_map: {
      "lm_head.weight": "model-00002-of-00002.safetensors",
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.norm.weight": "model-00001-of-00002.safetensors",
    },
  };
  return { files, index };
}

test("sharded checkpoint: index lookup finds each tensor's file", async () => {
  const { files, index } = shardedFixture();
  const opened: string[] = [];
  const ck = await SafetensorsCheckpoint.open((f) => {
    opened.push(f);
    const bytes = files.get(f);
    if (!bytes) throw new Error(`no file ${f}`);
    return bytesSource(bytes);
  }, index);
  assert.deepEqual(opened.sort(), [...files.keys()].sort());
  assert.equal(ck.info("lm_head.weight").file, "model-00002-of-00002.safetensors");
  assert.equal(ck.info("model.norm.weight").file, "model-00001-of-00002.safetensors");
  assert.equal(ck.info("model.norm.weight").dtype, "F16");
  assert.deepEqual(Array.from(await ck.readF32("lm_head.weight")), [-1, -2, -3, -4]);
  assert.deepEqual(Array.from(await ck.readF32("model.embed_tokens.weight")), [1, 2, 3, 4]);
  assert.deepEqual(Array.from(await ck.readF32("model.norm.weight")), [0.5, 0.25]);
  assert.deepEqual(ck.names().sort(), ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"]);
  assert.throws(() => ck.info("model.layers.0.self_attn.q_proj.weight"), (e: unknown) =>
    e instanceof WebvlmError && e.code === "missing_tensor" && e.message.includes("model.layers.0.self_attn.q_proj.weight"));
  await rejectsWith(ck.readF32("visual.merger.ln_q.weight"), "missing_tensor", "visual.merger.ln_q.weight");
});

test("sharded checkpoint: index naming a tensor its shard lacks is missing_tensor; bad index is bad_request", async () => {
  const { files, index } = shardedFixture();
  const broken = structuredClone(index) as { weight_map: Record<string, string> };
  broken.weight_map["model.layers.0.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors";
  await rejectsWith(
    SafetensorsCheckpoint.open((f) => bytesSource(files.get(f)!), broken),
    "missing_tensor",
    "model.layers.0.mlp.up_proj.weight",
  );
  assert.throws(() => parseSafetensorsIndex({ metadata: {} }), WebvlmError);
  assert.throws(() => parseSafetensorsIndex({ weight_map: { a: 3 } }), WebvlmError);
  assert.throws(() => parseSafetensorsIndex({ weight_map: { a: "../../etc/passwd" } }), WebvlmError);
  const idx = parseSafetensorsIndex(index);
  assert.deepEqual(idx.files, ["model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"]);
  assert.equal(idx.weightMap.get("model.norm.weight"), "model-00001-of-00002.safetensors");
});

test("Node file source and checkpoint directories (single and sharded)", async () => {
  const dir = await mkdtemp(join(tmpdir(), "webvlm-st-"));
  try {
    const single = join(dir, "single");
    const sharded = join(dir, "sharded");
    await import("node:fs/promises").then((fs) => Promise.all([fs.mkdir(single), fs.mkdir(sharded)]));
    const n = await writeSafetensorsFile(join(single, "model.safetensors"), [
      { name: "a", dtype: "F32", shape: [3], data: new Float32Array([1, 2, 3]) },
    ]);
    const src = await nodeFileSource(join(single, "model.safetensors"));
    assert.equal(src.size, n);
    assert.deepEqual(Array.from(await readTensorF32(src, await readSafetensorsHeader(src), "a")), [1, 2, 3]);
    assert.equal((await src.read(n - 2, 100)).length, 2, "reads past the end are short, not errors");
    await src.close?.();
    const ck = await openCheckpointDir(single);
    assert.deepEqual(Array.from(await ck.readF32("a")), [1, 2, 3]);
    await ck.close();

    const { files, index } = shardedFixture();
    for (const [f, bytes] of files) await writeFile(join(sharded, f), bytes);
    await writeFile(join(sharded, "model.safetensors.index.json"), JSON.stringify(index));
    const ck2 = await openCheckpointDir(sharded);
    assert.equal(ck2.info("lm_head.weight").file, "model-00002-of-00002.safetensors");
    assert.deepEqual(Array.from(await ck2.readF32("lm_head.weight")), [-1, -2, -3, -4]);
    await ck2.close();
    await rejectsWith(nodeFileSource(join(dir, "absent.safetensors")), "model_not_found");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
