// The adapter's measured limits, the denominators of every roofline ratio: copy bandwidth
// (a vec4 copy kernel, read + write) and peak f32 FLOPS (register-only FMA chains).
import copyCode from "./copy.wgsl?raw";
import fmaCode from "./fma.wgsl?raw";
import type { GpuContext } from "../src/gpu/device.ts";
import { grid2d, packUniforms } from "../src/gpu/recorder.ts";
import { timeGpu } from "./timing.ts";

/** GB/s moved (bytes read + bytes written) by a copy of `bytes`. */
export async function copyBandwidth(ctx: GpuContext, bytes: number, iters: number): Promise<number> {
  const src = ctx.pool.acquire(bytes);
  const dst = ctx.pool.acquire(bytes);
  const vec4s = bytes / 16;
  const t = await timeGpu(
    ctx,
    (rec) =>
      rec.dispatch({
        code: copyCode,
        bindings: [{ buffer: src, size: bytes }, { buffer: dst, size: bytes }],
        workgroups: grid2d(Math.ceil(vec4s / 256), ctx.limits.maxComputeWorkgroupsPerDimension),
        label: "copy",
      }),
    iters,
  );
  ctx.pool.release(src);
  ctx.pool.release(dst);
  return (2 * bytes) / (t.ms * 1e6);
}

/** GFLOPS of f32 FMAs with `threads` threads (enough to fill the GPU) and `steps` per thread. */
export async function peakFlops(ctx: GpuContext, threads: number, steps: number, iters: number): Promise<number> {
  const out = ctx.pool.acquire(threads * 16);
  const t = await timeGpu(
    ctx,
    (rec) =>
      rec.dispatch({
        code: fmaCode,
        uniforms: packUniforms("uu", steps, threads),
        bindings: [{ buffer: out, size: threads * 16 }],
        workgroups: grid2d(Math.ceil(threads / 256), ctx.limits.maxComputeWorkgroupsPerDimension),
        label: "fma",
      }),
    iters,
  );
  ctx.pool.release(out);
  return (threads * steps * 8 * 4 * 2) / (t.ms * 1e6);
}
