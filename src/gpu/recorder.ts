import { WebvlmError } from "../api/errors.ts";
import { assertAlive, type GpuContext } from "./device.ts";
import type { PipelineConstants } from "./pipelines.ts";
import { byteSize, type Tensor } from "./tensor.ts";

/** A storage binding: a tensor, a whole buffer, or an explicit range. */
export type Binding = Tensor | GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

export interface DispatchSpec {
  /** WGSL source (cached by text). */
  code: string;
  entryPoint?: string;
  constants?: PipelineConstants;
  /** Bytes for the `var<uniform>` at @binding(0); omit when the shader has none. */
  uniforms?: ArrayBuffer;
  /** Storage bindings, in order, after the uniform (from @binding(1), or 0 without uniforms). */
  bindings: Binding[];
  workgroups: readonly [number, number?, number?];
  label?: string;
}

const UNIFORM_SLOT = 256; // minUniformBufferOffsetAlignment on every adapter
const CHUNK_BYTES = 64 * 1024;
const UNIFORM_USAGE = 0x40 | 0x08; // UNIFORM | COPY_DST

/** One uniform chunk: a GPU buffer and its CPU staging copy. */
interface UniformChunk {
  buffer: GPUBuffer;
  staging: Uint8Array;
  used: number;
}

const chunkPools = new WeakMap<GpuContext, UniformChunk[]>();

/**
 * Bind groups reused across submits, keyed by pipeline and bound ranges. A decode step records
 * the same dispatches over the same pooled buffers and uniform chunks every token, and creating
 * ~230 bind groups per token was a large part of its host time. Buffers get small ids (a
 * destroyed buffer's id is never seen again); the map is dropped whole when it grows large.
 */
const bindGroupCaches = new WeakMap<GpuContext, Map<string, GPUBindGroup>>();
const MAX_BIND_GROUPS = 4096;
const bufferIds = new WeakMap<GPUBuffer, number>();
let nextBufferId = 1;

function bufferId(b: GPUBuffer): number {
  let id = bufferIds.get(b);
  if (id === undefined) {
    id = nextBufferId++;
    bufferIds.set(b, id);
  }
  return id;
}

/** Optional per-dispatch GPU timing (timestamp-query), for benchmarks. */
export interface DispatchTimer {
  /** Timestamp writes for the next dispatch's pass, labelled. */
  next(label: string): GPUComputePassTimestampWrites | undefined;
}

/**
 * Records many dispatches into one command encoder and submits them at once.
 * Uniforms come from pooled 64 KiB chunks written with one writeBuffer each at
 * submit; the queue's ordering makes reuse by the next submit safe.
 */
export class Recorder {
  private encoder: GPUCommandEncoder;
  private pass: GPUComputePassEncoder | null = null;
  private chunks: UniformChunk[] = [];
  dispatchCount = 0;
  submitCount = 0;
  timer: DispatchTimer | null = null;

  constructor(readonly ctx: GpuContext) {
    assertAlive(ctx);
    this.encoder = ctx.device.createCommandEncoder();
  }

  dispatch(spec: DispatchSpec): void {
    assertAlive(this.ctx);
    const { device, pipelines, limits } = this.ctx;
    const { pipeline, layout, id } = pipelines.entry(spec.code, spec.constants, spec.entryPoint ?? "main");
    const entries: GPUBindGroupEntry[] = [];
    let key = String(id);
    let binding = 0;
    if (spec.uniforms) {
      const u = this.uniform(spec.uniforms);
      entries.push({ binding: binding++, resource: u });
      key += `|${bufferId(u.buffer)}@${u.offset}+${u.size}`;
    }
    for (const b of spec.bindings) {
      const resource = toBufferBinding(b);
      const size = resource.size ?? resource.buffer.size - (resource.offset ?? 0);
      if (size > limits.maxStorageBufferBindingSize) {
        throw new WebvlmError(
          "limit_exceeded",
          `${spec.label ?? "dispatch"}: binding of ${size} bytes exceeds maxStorageBufferBindingSize ` +
            `${limits.maxStorageBufferBindingSize}; split the tensor`,
        );
      }
      entries.push({ binding: binding++, resource });
      key += `|${bufferId(resource.buffer)}@${resource.offset ?? 0}+${size}`;
    }
    let cache = bindGroupCaches.get(this.ctx);
    if (!cache || cache.size >= MAX_BIND_GROUPS) {
      cache = new Map();
      bindGroupCaches.set(this.ctx, cache);
    }
    let bindGroup = cache.get(key);
    if (!bindGroup) {
      bindGroup = device.createBindGroup({ layout, entries });
      cache.set(key, bindGroup);
    }
    const [x, y = 1, z = 1] = spec.workgroups;
    const maxDim = limits.maxComputeWorkgroupsPerDimension;
    if (x > maxDim || y > maxDim || z > maxDim) {
      throw new WebvlmError("limit_exceeded", `${spec.label ?? "dispatch"}: grid ${x}x${y}x${z} exceeds ${maxDim}`);
    }
    if (x === 0 || y === 0 || z === 0) return;

    const timestamps = (this.timer ?? this.ctx.dispatchTimer)?.next(spec.label ?? spec.entryPoint ?? "kernel");
    if (timestamps) {
      this.endPass();
      const pass = this.encoder.beginComputePass({ timestampWrites: timestamps });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(x, y, z);
      pass.end();
    } else {
      const pass = (this.pass ??= this.encoder.beginComputePass());
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, bindGroup);
      pass.dispatchWorkgroups(x, y, z);
    }
    this.dispatchCount++;
    this.ctx.stats.dispatches++;
  }

  /** Copies bytes between tensors (same byte size) inside the recorded stream. */
  copy(src: Binding, dst: Binding, bytes?: number): void {
    const s = toBufferBinding(src);
    const d = toBufferBinding(dst);
    const n = bytes ?? s.size ?? s.buffer.size - (s.offset ?? 0);
    this.endPass();
    this.encoder.copyBufferToBuffer(s.buffer, s.offset ?? 0, d.buffer, d.offset ?? 0, n);
  }

  /** The encoder, for callers that add their own commands (readback copies). */
  commandEncoder(): GPUCommandEncoder {
    this.endPass();
    return this.encoder;
  }

  /** Writes uniforms, submits everything recorded, and starts a new encoder. */
  submit(): void {
    assertAlive(this.ctx);
    this.endPass();
    const { device } = this.ctx;
    for (const c of this.chunks) device.queue.writeBuffer(c.buffer, 0, c.staging, 0, c.used);
    device.queue.submit([this.encoder.finish()]);
    this.ctx.pool.markSubmitted();
    this.submitCount++;
    this.ctx.stats.submits++;
    const pool = chunkPools.get(this.ctx) ?? [];
    for (const c of this.chunks) {
      c.used = 0;
      pool.push(c);
    }
    chunkPools.set(this.ctx, pool);
    this.chunks = [];
    this.encoder = device.createCommandEncoder();
  }

  private endPass(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
  }

  private uniform(data: ArrayBuffer): { buffer: GPUBuffer; offset: number; size: number } {
    const size = Math.ceil(data.byteLength / 16) * 16;
    if (size > UNIFORM_SLOT * 16) throw new WebvlmError("internal", "uniform block too large");
    let chunk = this.chunks[this.chunks.length - 1];
    if (!chunk || chunk.used + size > CHUNK_BYTES) {
      chunk = chunkPools.get(this.ctx)?.pop() ?? {
        buffer: this.ctx.device.createBuffer({ size: CHUNK_BYTES, usage: UNIFORM_USAGE, label: "uniforms" }),
        staging: new Uint8Array(CHUNK_BYTES),
        used: 0,
      };
      this.chunks.push(chunk);
    }
    const offset = chunk.used;
    chunk.staging.set(new Uint8Array(data), offset);
    chunk.used = offset + Math.ceil(size / UNIFORM_SLOT) * UNIFORM_SLOT;
    return { buffer: chunk.buffer, offset, size };
  }
}

function isTensor(b: Binding): b is Tensor {
  return (b as Tensor).shape !== undefined;
}

function isGpuBuffer(b: Binding): b is GPUBuffer {
  return (b as { mapAsync?: unknown }).mapAsync !== undefined;
}

export function toBufferBinding(b: Binding): GPUBufferBinding {
  if (isTensor(b)) {
    if (b.offset % 256 !== 0) {
      throw new WebvlmError("internal", `tensor bound at unaligned offset ${b.offset}; pass element offsets as uniforms`);
    }
    return { buffer: b.buffer, offset: b.offset, size: byteSize(b) };
  }
  if (isGpuBuffer(b)) return { buffer: b };
  return { buffer: b.buffer, offset: b.offset ?? 0, size: b.size };
}

/** Packs uniform fields: `types` has one letter per value: u (u32), i (i32), f (f32). */
export function packUniforms(types: string, ...values: number[]): ArrayBuffer {
  if (types.length !== values.length) throw new WebvlmError("internal", "packUniforms: type/value count mismatch");
  const buf = new ArrayBuffer(Math.max(16, Math.ceil((types.length * 4) / 16) * 16));
  const view = new DataView(buf);
  for (let i = 0; i < types.length; i++) {
    const t = types[i];
    if (t === "u") view.setUint32(i * 4, values[i] >>> 0, true);
    else if (t === "i") view.setInt32(i * 4, values[i] | 0, true);
    else if (t === "f") view.setFloat32(i * 4, values[i], true);
    else throw new WebvlmError("internal", `packUniforms: unknown type ${t}`);
  }
  return buf;
}

/** Splits a 1-D workgroup count over x and y to stay under the per-dimension limit. */
export function grid2d(count: number, maxDim = 65535): [number, number] {
  if (count <= maxDim) return [count, 1];
  const y = Math.ceil(count / maxDim);
  return [Math.ceil(count / y), y];
}
