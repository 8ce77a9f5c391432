import type { GpuContext } from "../../src/gpu/device.ts";

/**
 * A kernel check that runs the same way in Node (Dawn) and in Chromium:
 * it throws on mismatch and returns what it measured (e.g. "nmse=3e-14").
 */
export interface KernelCase {
  name: string;
  run(gpu: GpuContext): Promise<string>;
}
