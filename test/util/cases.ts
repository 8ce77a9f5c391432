import type { GpuContext } from "../../src/gpu/device.ts";

/**
 * A kernel check that runs the same way in Node (Dawn) and in Chromium:
 * it throws on mismatch and returns what it measured (e.g. "nmse=3e-14").
 */
export interface KernelCase {
  name: string;
  run(gpu: GpuContext): Promise<string>;
}

/** Runs a case and fails it if WebGPU reported any uncaptured (validation) error meanwhile. */
export async function runCase(c: KernelCase, gpu: GpuContext): Promise<string> {
  gpu.uncapturedErrors.length = 0;
  const measured = await c.run(gpu);
  await gpu.device.queue.onSubmittedWorkDone();
  if (gpu.uncapturedErrors.length > 0) {
    throw new Error(`WebGPU errors during ${c.name}: ${gpu.uncapturedErrors.join(" | ")}`);
  }
  return measured;
}
