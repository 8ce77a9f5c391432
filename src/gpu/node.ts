// Node-only: WebGPU through Dawn (the `webgpu` package). Never imported by browser code.
import { existsSync } from "node:fs";
import { acquireGpu, type AcquireOptions, type GpuContext } from "./device.ts";

const SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json";

function hasHardwareGpu(): boolean {
  return existsSync("/dev/nvidia0") || existsSync("/dev/dri/renderD128") || existsSync("/dev/kfd");
}

/**
 * Acquires a device in Node. Without a GPU (and without an explicit
 * VK_ICD_FILENAMES), points Vulkan at Chromium's SwiftShader so tests run on
 * CPU-only machines; WEBVLM_SWIFTSHADER=1 forces it even with a GPU.
 */
export async function acquireNodeGpu(options: Omit<AcquireOptions, "gpu"> = {}): Promise<GpuContext> {
  const forceSoftware = process.env.WEBVLM_SWIFTSHADER === "1";
  if (!process.env.VK_ICD_FILENAMES && (forceSoftware || !hasHardwareGpu()) && existsSync(SWIFTSHADER_ICD)) {
    process.env.VK_ICD_FILENAMES = SWIFTSHADER_ICD;
  }
  const { create, globals } = await import("webgpu");
  // Dawn's constants (GPUBufferUsage, ...) become globals as in a browser.
  Object.assign(globalThis, globals);
  return acquireGpu({ ...options, gpu: create([]) });
}
