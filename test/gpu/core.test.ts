// The GPU core: device report, pooling, pipeline cache, batching, device loss.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { Recorder, packUniforms } from "../../src/gpu/recorder.ts";
import { readF32, uploadTensor, allocTensor } from "../../src/gpu/transfer.ts";
import { reshape, sliceRows } from "../../src/gpu/tensor.ts";
import { sizeClass } from "../../src/gpu/pool.ts";
import { add } from "../../src/ops/add.ts";
import { WebvlmError } from "../../src/api/errors.ts";
import { f16BitsToF32, f32ToF16Bits } from "../../src/quant/f16.ts";

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
});
after(() => {
  assert.deepEqual(gpu.uncapturedErrors, [], "no WebGPU validation errors in the core tests");
  gpu?.destroy();
});

test("device requests the adapter's own limits and reports features", () => {
  assert.ok(gpu.limits.maxStorageBufferBindingSize >= 128 * 1024 * 1024, "more than the 128 MiB default");
  assert.ok(gpu.limits.maxComputeWorkgroupStorageSize >= 16384);
  assert.equal(gpu.device.limits.maxBufferSize, gpu.limits.maxBufferSize);
  for (const f of gpu.adapter.features) assert.ok(gpu.device.features.has(f), `${f} enabled on the device`);
  assert.ok(gpu.adapter.vendor.length > 0 || gpu.adapter.description.length > 0, "adapter identifies itself");
});

test("buffer pool reuses released buffers by size class", () => {
  const before = gpu.pool.allocatedBytes;
  const a = gpu.pool.acquire(1000);
  gpu.pool.release(a);
  const b = gpu.pool.acquire(900);
  assert.equal(a, b, "same size class reuses the buffer");
  gpu.pool.release(b);
  assert.equal(gpu.pool.allocatedBytes - before, sizeClass(1000));
  assert.equal(sizeClass(1), 256);
  for (const n of [257, 1000, 4097, 1e6, 467e6]) {
    const c = sizeClass(n);
    assert.ok(c >= n && c <= n * 1.125 + 256, `size class of ${n} is ${c}`);
  }
});

test("pipeline cache compiles each (shader, constants) once", async () => {
  const x = uploadTensor(gpu, new Float32Array([1, 2, 3]), [3], "f32");
  const rec = new Recorder(gpu);
  const sizeBefore = gpu.pipelines.size;
  for (let i = 0; i < 3; i++) add(rec, x, x, allocTensor(gpu, [3], "f32"));
  rec.submit();
  assert.ok(gpu.pipelines.size - sizeBefore <= 1);
  gpu.pool.release(x.buffer);
});

test("one submit carries hundreds of dispatches with distinct uniforms", async () => {
  // 600 dispatches overflow one 64 KiB uniform chunk (256 slots) twice.
  const n = 600;
  const rec = new Recorder(gpu);
  let acc = uploadTensor(gpu, new Float32Array([0]), [1], "f32");
  const one = uploadTensor(gpu, new Float32Array([1]), [1], "f32");
  const tensors = [acc, one];
  for (let i = 0; i < n; i++) {
    acc = add(rec, acc, one);
    tensors.push(acc);
  }
  assert.equal(rec.dispatchCount, n);
  rec.submit();
  assert.equal(rec.submitCount, 1);
  const [v] = await readF32(gpu, acc);
  assert.equal(v, n);
  for (const t of tensors) gpu.pool.release(t.buffer);
});

test("uniforms pack u32, i32 and f32 fields in order", () => {
  const buf = packUniforms("uif", 7, -3, 0.5);
  const view = new DataView(buf);
  assert.equal(buf.byteLength, 16);
  assert.equal(view.getUint32(0, true), 7);
  assert.equal(view.getInt32(4, true), -3);
  assert.equal(view.getFloat32(8, true), 0.5);
});

test("tensor views: reshape and sliceRows keep bytes, reject bad shapes", () => {
  const t = allocTensor(gpu, [8, 4], "f32");
  assert.deepEqual(reshape(t, [2, 16]).shape, [2, 16]);
  assert.throws(() => reshape(t, [3, 3]), (e: unknown) => e instanceof WebvlmError && e.code === "shape_mismatch");
  const s = sliceRows(t, 2, 3);
  assert.equal(s.offset, 2 * 16);
  assert.throws(() => sliceRows(t, 6, 3), WebvlmError);
  gpu.pool.release(t.buffer);
});

test("f16 round trip: exact for representable values, nearest-even otherwise", () => {
  for (const v of [0, 1, -2, 0.5, 65504, 2 ** -24, -(2 ** -14)]) assert.equal(f16BitsToF32(f32ToF16Bits(v)), v);
  assert.equal(f16BitsToF32(f32ToF16Bits(1 + 2 ** -11)), 1); // tie -> even
  assert.equal(f16BitsToF32(f32ToF16Bits(1 + 3 * 2 ** -11)), 1 + 2 ** -9);
  assert.equal(f16BitsToF32(f32ToF16Bits(1e6)), Infinity);
});

test("a binding over maxStorageBufferBindingSize is a typed error, not a GPU validation failure", () => {
  const rec = new Recorder(gpu);
  const fake = { buffer: gpu.pool.acquire(256), offset: 0, shape: [gpu.limits.maxStorageBufferBindingSize / 4 + 64], dtype: "f32" as const };
  assert.throws(
    () => add(rec, fake, fake, fake),
    (e: unknown) => e instanceof WebvlmError && e.code === "limit_exceeded",
  );
});

test("device loss surfaces as a typed device_lost error and later calls throw it", async () => {
  const own = await acquireNodeGpu();
  own.device.destroy();
  const err = await own.lost;
  assert.equal(err.code, "device_lost");
  assert.equal(own.lostError, err);
  assert.throws(() => new Recorder(own), (e: unknown) => e instanceof WebvlmError && e.code === "device_lost");
  await assert.rejects(readF32(own, { buffer: gpu.pool.acquire(256), offset: 0, shape: [1], dtype: "f32" }), (e: unknown) => e instanceof WebvlmError && e.code === "device_lost");
});

test("timestamp profiler attributes GPU time to each dispatch label", async () => {
  const { TimestampProfiler } = await import("../../src/gpu/profiler.ts");
  if (!gpu.features.has("timestamp-query")) {
    assert.throws(() => new TimestampProfiler(gpu), (e: unknown) => e instanceof WebvlmError && e.code === "unsupported_feature");
    return;
  }
  const profiler = new TimestampProfiler(gpu, 16);
  const rec = new Recorder(gpu);
  rec.timer = profiler;
  const x = uploadTensor(gpu, new Float32Array(1 << 16).fill(1), [1 << 16], "f32");
  const y = add(rec, x, x);
  const z = add(rec, y, x);
  rec.submit();
  assert.deepEqual(Array.from(await readF32(gpu, z)).slice(0, 2), [3, 3], "results unchanged when timed");
  const times = await profiler.collect();
  assert.equal(times.length, 1);
  assert.equal(times[0].label, "add");
  assert.equal(times[0].count, 2);
  assert.ok(times[0].ns > 0, "nonzero GPU time");
  profiler.destroy();
  for (const t of [x, y, z]) gpu.pool.release(t.buffer);
});

test("an upload never lands in a buffer that recorded-but-unsubmitted work still reads", async () => {
  const rec = new Recorder(gpu);
  const a = uploadTensor(gpu, new Float32Array(64).fill(1), [64], "f32");
  const sum = add(rec, a, a); // recorded, not yet submitted: reads a
  gpu.pool.release(a.buffer);
  const b = uploadTensor(gpu, new Float32Array(64).fill(5), [64], "f32"); // must not reuse a's buffer
  assert.notEqual(b.buffer, a.buffer);
  rec.submit();
  assert.equal((await readF32(gpu, sum))[0], 2);
  const c = allocTensor(gpu, [64], "f32");
  assert.equal(c.buffer, a.buffer, "after the submit the released buffer is reused");
  for (const t of [sum, b, c]) gpu.pool.release(t.buffer);
});
