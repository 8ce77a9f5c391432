export type PipelineConstants = Record<string, number | boolean>;

/** A compiled pipeline and its bind group layout (queried once: Dawn makes a new object per call). */
export interface CachedPipeline {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  /** Small id for bind-group cache keys. */
  id: number;
}

/**
 * Compute pipelines cached by shader text, entry point and override constants. Looked up on
 * every dispatch, so the shader text (the same string object each time) is a Map key of its
 * own rather than part of a concatenated key that would be rebuilt and rehashed per call.
 */
export class PipelineCache {
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly byCode = new Map<string, Map<string, CachedPipeline>>();
  private count = 0;

  constructor(private readonly device: GPUDevice) {}

  get size(): number {
    return this.count;
  }

  get(code: string, constants: PipelineConstants = {}, entryPoint = "main"): GPUComputePipeline {
    return this.entry(code, constants, entryPoint).pipeline;
  }

  entry(code: string, constants: PipelineConstants = {}, entryPoint = "main"): CachedPipeline {
    let variants = this.byCode.get(code);
    if (!variants) {
      variants = new Map();
      this.byCode.set(code, variants);
    }
    let key = entryPoint;
    for (const k of Object.keys(constants).sort()) key += `|${k}=${Number(constants[k])}`;
    let cached = variants.get(key);
    if (!cached) {
      let module = this.modules.get(code);
      if (!module) {
        module = this.device.createShaderModule({ code });
        this.modules.set(code, module);
      }
      const numeric: Record<string, number> = {};
      for (const [k, v] of Object.entries(constants)) numeric[k] = Number(v);
      const pipeline = this.device.createComputePipeline({
        layout: "auto",
        compute: { module, entryPoint, constants: numeric },
      });
      cached = { pipeline, layout: pipeline.getBindGroupLayout(0), id: ++this.count };
      variants.set(key, cached);
    }
    return cached;
  }
}
