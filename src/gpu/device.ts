import { WebvlmError } from "../api/errors.ts";
import { BufferPool } from "./pool.ts";
import type { DispatchTimer } from "./recorder.ts";
import { PipelineCache } from "./pipelines.ts";

/** Optional features the kernels can use when present; none is required. */
export const OPTIONAL_FEATURES = ["shader-f16", "subgroups", "timestamp-query"] as const;
export type OptionalFeature = (typeof OPTIONAL_FEATURES)[number];

/** Limits requested at the adapter's own maximum (the defaults are far lower). */
const REQUESTED_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxComputeWorkgroupStorageSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupsPerDimension",
] as const;
type RequestedLimit = (typeof REQUESTED_LIMITS)[number];

export interface AdapterReport {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter: boolean;
  features: OptionalFeature[];
  limits: Record<RequestedLimit, number>;
}

/** The device plus everything kernels need to choose a variant. */
export interface GpuContext {
  readonly device: GPUDevice;
  readonly adapter: AdapterReport;
  /**
   * The GPU and adapter objects stay referenced for the device's lifetime:
   * in Node, Dawn's instance is torn down when they are garbage collected.
   */
  readonly keepAlive: readonly [GPU, GPUAdapter];
  readonly limits: Record<RequestedLimit, number>;
  readonly features: ReadonlySet<OptionalFeature>;
  readonly pool: BufferPool;
  readonly pipelines: PipelineCache;
  /** Resolves (never rejects) when the device is lost; its value says why. */
  readonly lost: Promise<WebvlmError>;
  /**
   * WebGPU validation/out-of-memory errors nobody captured, newest last. A
   * kernel bug shows up here rather than as an exception; tests assert it stays empty.
   */
  readonly uncapturedErrors: string[];
  /** Set once the device is lost; every later GPU call should throw it. */
  lostError: WebvlmError | null;
  /** Dispatches recorded and submits made by every Recorder on this device (benchmarks diff them). */
  readonly stats: { dispatches: number; submits: number };
  /** When set, every Recorder times its dispatches with it (benchmarks' per-kernel time shares). */
  dispatchTimer: DispatchTimer | null;
  destroy(): void;
}

export interface AcquireOptions {
  /** A GPU object; defaults to navigator.gpu. Node passes the `webgpu` package's. */
  gpu?: GPU;
  powerPreference?: GPUPowerPreference;
  /** Features to leave off even if the adapter has them (to test fallbacks). */
  disableFeatures?: OptionalFeature[];
}

const NO_ADAPTER_HELP =
  "No WebGPU adapter. In a browser, use a recent Chromium-based browser (or Chrome with " +
  "--enable-unsafe-webgpu on Linux) over https or localhost. In Node, the `webgpu` package needs a " +
  "Vulkan driver: on a machine without a GPU install Debian's `chromium` and `libvulkan1` " +
  "(apt-get install chromium libvulkan1) to get SwiftShader, or set VK_ICD_FILENAMES to an ICD.";

export async function acquireGpu(options: AcquireOptions = {}): Promise<GpuContext> {
  const gpu = options.gpu ?? (typeof navigator !== "undefined" ? navigator.gpu : undefined);
  if (!gpu) throw new WebvlmError("no_adapter", NO_ADAPTER_HELP);
  const adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference ?? "high-performance" });
  if (!adapter) throw new WebvlmError("no_adapter", NO_ADAPTER_HELP);

  const disabled = new Set(options.disableFeatures ?? []);
  const features = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f) && !disabled.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) requiredLimits[name] = adapter.limits[name];

  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures: features, requiredLimits });
  } catch (e) {
    throw new WebvlmError("no_adapter", `requestDevice failed: ${(e as Error).message}`);
  }
  const limits = {} as Record<RequestedLimit, number>;
  for (const name of REQUESTED_LIMITS) limits[name] = device.limits[name];

  const info = adapter.info;
  const report: AdapterReport = {
    vendor: info?.vendor ?? "",
    architecture: info?.architecture ?? "",
    device: info?.device ?? "",
    description: info?.description ?? "",
    isFallbackAdapter: Boolean((info as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter),
    features,
    limits,
  };

  const ctx: GpuContext = {
    device,
    keepAlive: [gpu, adapter],
    adapter: report,
    limits,
    features: new Set(features),
    pool: new BufferPool(device),
    pipelines: new PipelineCache(device),
    lostError: null,
    uncapturedErrors: [],
    stats: { dispatches: 0, submits: 0 },
    dispatchTimer: null,
    lost: device.lost.then((info) => {
      const err = new WebvlmError("device_lost", `GPU device lost (${info.reason}): ${info.message}`, {
        reason: info.reason,
      });
      ctx.lostError = err;
      return err;
    }),
    destroy() {
      ctx.pool.clear();
      device.destroy();
    },
  };
  device.addEventListener("uncapturederror", (event) => {
    const message = (event as GPUUncapturedErrorEvent).error.message;
    if (ctx.uncapturedErrors.length < 100) ctx.uncapturedErrors.push(message);
  });
  return ctx;
}

/** Throws the typed device-lost error if the device is gone. */
export function assertAlive(ctx: GpuContext): void {
  if (ctx.lostError) throw ctx.lostError;
}
