import { WebvlmError } from "../api/errors.ts";
import { fromF16Bits, toF16Bits } from "../quant/f16.ts";
import { assertAlive, type GpuContext } from "./device.ts";
import { byteSize, numel, type DType, type Tensor } from "./tensor.ts";

export type HostArray = Float32Array | Uint32Array | Int32Array | Uint16Array;

/** Allocates a pooled tensor (contents undefined). */
export function allocTensor(
  ctx: GpuContext,
  shape: readonly number[],
  dtype: DType,
  label?: string,
  forUpload = false,
): Tensor {
  const t = { shape: [...shape], dtype };
  return { buffer: ctx.pool.acquire(byteSize(t), label, forUpload), offset: 0, shape: t.shape, dtype };
}

/** Returns a tensor's buffer to the pool. */
export function releaseTensor(ctx: GpuContext, t: Tensor): void {
  ctx.pool.release(t.buffer);
}

/**
 * Uploads host data. For dtype f16, a Float32Array is converted; a
 * Uint16Array is taken as raw f16 bits.
 */
export function uploadTensor(
  ctx: GpuContext,
  data: HostArray,
  shape: readonly number[],
  dtype: DType,
  label?: string,
): Tensor {
  assertAlive(ctx);
  if (data.length !== numel(shape)) {
    throw new WebvlmError("shape_mismatch", `upload: ${data.length} values for shape [${shape}]`);
  }
  let bytes: ArrayBufferView;
  if (dtype === "f16") bytes = data instanceof Uint16Array ? data : toF16Bits(data);
  else if (dtype === "f32") bytes = data instanceof Float32Array ? data : Float32Array.from(data);
  else if (dtype === "u32") bytes = data instanceof Uint32Array ? data : Uint32Array.from(data);
  else bytes = data instanceof Int32Array ? data : Int32Array.from(data);
  const t = allocTensor(ctx, shape, dtype, label, true);
  writeBytes(ctx, t.buffer, t.offset, bytes);
  return t;
}

/** writeBuffer needs a multiple of 4 bytes; pads the tail of f16 data. */
export function writeBytes(ctx: GpuContext, buffer: GPUBuffer, offset: number, data: ArrayBufferView): void {
  let view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (view.byteLength % 4 !== 0) {
    const padded = new Uint8Array(Math.ceil(view.byteLength / 4) * 4);
    padded.set(view);
    view = padded;
  }
  ctx.device.queue.writeBuffer(buffer, offset, view);
}

/** Copies bytes back to the CPU (waits for all submitted work). */
export async function readBytes(ctx: GpuContext, buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
  assertAlive(ctx);
  const { device } = ctx;
  const staging = device.createBuffer({ size, usage: 0x01 | 0x08 /* MAP_READ | COPY_DST */ });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
  device.queue.submit([enc.finish()]);
  try {
    await staging.mapAsync(0x0001 /* GPUMapMode.READ */);
  } catch (e) {
    staging.destroy();
    throw ctx.lostError ?? new WebvlmError("device_lost", `readback failed: ${(e as Error).message}`);
  }
  const copy = staging.getMappedRange().slice(0);
  staging.unmap();
  staging.destroy();
  return copy;
}

/** Reads a tensor as numbers: f32/f16 as Float32Array, u32 as Uint32Array, i32 as Int32Array. */
export async function readTensor(ctx: GpuContext, t: Tensor): Promise<Float32Array | Uint32Array | Int32Array> {
  const bytes = await readBytes(ctx, t.buffer, t.offset, byteSize(t));
  const n = numel(t.shape);
  switch (t.dtype) {
    case "f32":
      return new Float32Array(bytes, 0, n);
    case "f16":
      return fromF16Bits(new Uint16Array(bytes, 0, n));
    case "u32":
      return new Uint32Array(bytes, 0, n);
    case "i32":
      return new Int32Array(bytes, 0, n);
  }
}

export async function readF32(ctx: GpuContext, t: Tensor): Promise<Float32Array> {
  const v = await readTensor(ctx, t);
  if (!(v instanceof Float32Array)) throw new WebvlmError("dtype_mismatch", `readF32 on ${t.dtype} tensor`);
  return v;
}
