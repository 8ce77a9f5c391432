// Idefics2 checkpoint -> GPU weights. Every name and shape of the table (names.ts) is checked
// before anything is read; tensors then stream to the GPU one weight at a time.
//
// Formats (FormatChoice): the Mistral decoder's linears take `textLinear` (q4 by default, in situ
// as for Qwen2-VL), embed_tokens / lm_head take `embedding`; the vision tower (patch embedding,
// position table, q|k|v, out, fc1, fc2) and the connector's matrices (modality projection gate|up
// and down, perceiver q, k|v, o, gate|up, down) take `vision` (f16 by default): they run once per
// image as GEMMs over hundreds of rows, so low bits save little time while their error reaches
// every image row. The perceiver latents, every norm weight and every bias stay f32 (tiny, read by
// f32 kernels; the latents are the perceiver's residual stream's starting value). Sizes at
// idefics2-8b in f16: tower 0.8 GB, connector 1.5 GB (the perceiver MLPs, 4H wide, are 1.2 GB of
// it); a caller short of memory passes vision "q8" for both.
import type { GpuContext } from "../../gpu/device.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { LinearWeight, TensorSource, WeightFormats, WeightLoadOptions } from "../common/source.ts";
import { releaseTensors, resolveFormats, WeightLoader, type WeightMaker } from "../common/weight_loader.ts";
import { buildDecoderWeights, releaseDecoderWeights, type DecoderWeights } from "../decoder/weights.ts";
import type { VitBlockWeights, VitNormWeights } from "../vit/encoder.ts";
import type { VitEmbedWeights } from "../vit/embeddings.ts";
import type { Idefics2Config } from "./config.ts";
import { idefics2CheckpointName, idefics2Names, idefics2TensorTable } from "./names.ts";

export interface Idefics2VisionWeights {
  /** Patch embedding [D, 3*p*p] + bias, position table [nps^2, D]. */
  embed: VitEmbedWeights & { patchBias: Tensor; positionEmbedding: LinearWeight };
  blocks: VitBlockWeights[];
  postLayernorm: Required<VitNormWeights>;
}

export interface PerceiverLayerWeights {
  inputLatentsNorm: Tensor;
  inputContextNorm: Tensor;
  /** [pnh * ph, H] */
  q: LinearWeight;
  /** k | v rows: [2 * pkv * ph, H]. */
  kv: LinearWeight;
  /** [H, pnh * ph] */
  o: LinearWeight;
  postAttentionLayernorm: Tensor;
  /** gate | up rows: [2 * 4H, H]. */
  gateUp: LinearWeight;
  down: LinearWeight;
}

export interface Idefics2ConnectorWeights {
  /** modality_projection gate | up rows: [2 * I, D]. */
  projectionGateUp: LinearWeight;
  /** modality_projection down: [H, I]. */
  projectionDown: LinearWeight;
  /** f32 [L, H] (kept as its dense weight for release). */
  latents: Tensor;
  latentsWeight: LinearWeight;
  layers: PerceiverLayerWeights[];
  norm: Tensor;
}

export interface Idefics2Weights {
  text: DecoderWeights;
  vision: Idefics2VisionWeights;
  connector: Idefics2ConnectorWeights;
  formats: WeightFormats;
  /** Bytes the tensors occupy on the GPU (before pool rounding). */
  gpuBytes: number;
}

/**
 * Loads every tensor of an Idefics2 checkpoint onto the GPU (missing_tensor / shape_mismatch name
 * the tensor before anything is read). On failure, tensors already uploaded return to the pool.
 */
export async function loadIdefics2Weights(gpu: GpuContext, config: Idefics2Config, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Idefics2Weights> {
  const formats = resolveFormats(opts);
  const table = idefics2TensorTable(config);
  const L = new WeightLoader(gpu, source, table.length, opts, (n) => [idefics2CheckpointName(n)]);
  const v = config.vision;
  const patchDim = v.numChannels * v.patchSize * v.patchSize;
  const patchName = `${idefics2Names.patchEmbedding}.weight`;
  for (const s of table) {
    // The Conv2d kernel is read as the [D, 3*p*p] matrix it equals; both stored shapes are accepted.
    if (s.name === patchName) L.check(s.name, [v.hiddenSize, patchDim], s.shape);
    else L.check(s.name, s.shape);
  }
  return buildIdefics2Weights(gpu, config, L, formats);
}

/**
 * The weight set made by `L` in table order (decoder names are canonical `model.*`; the maker maps
 * them under model.text_model.). On failure, tensors already made are returned to the pool.
 */
export async function buildIdefics2Weights(gpu: GpuContext, config: Idefics2Config, L: WeightMaker, formats: WeightFormats): Promise<Idefics2Weights> {
  const made: (Tensor | LinearWeight)[] = [];
  let text: DecoderWeights | null = null;
  const keep = <T extends Tensor | LinearWeight>(x: T): T => (made.push(x), x);
  const vec = async (name: string, n: number, label: string): Promise<Tensor> => keep(await L.vector([name], [n], label));
  const mat = async (parts: [string, number][], cols: number, label: string, fmt = formats.vision, alt?: number[]): Promise<LinearWeight> =>
    keep(await L.matrix(parts.map(([canonical, rows]) => ({ canonical, rows })), cols, fmt, label, alt));
  try {
    text = await buildDecoderWeights(gpu, config.text, L, formats);
    const N = idefics2Names;
    const v = config.vision;
    const D = v.hiddenSize;
    const patchDim = v.numChannels * v.patchSize * v.patchSize;
    const embed = {
      patch: await mat([[`${N.patchEmbedding}.weight`, D]], patchDim, "patch_embedding", formats.vision, [D, v.numChannels, v.patchSize, v.patchSize]),
      patchBias: await vec(`${N.patchEmbedding}.bias`, D, "patch_embedding.bias"),
      positionEmbedding: await mat([[N.positionEmbedding, v.positionsPerSide ** 2]], D, "position_embedding"),
    };
    const blocks: VitBlockWeights[] = [];
    for (let i = 0; i < v.numLayers; i++) {
      const p = N.visionLayer(i);
      const norm = async (k: string): Promise<Required<VitNormWeights>> => ({
        weight: await vec(`${p}.${k}.weight`, D, `V${i}.${k}.weight`),
        bias: await vec(`${p}.${k}.bias`, D, `V${i}.${k}.bias`),
      });
      const a = `${p}.self_attn`;
      const norm1 = await norm("layer_norm1");
      const qkv = await mat([[`${a}.q_proj.weight`, D], [`${a}.k_proj.weight`, D], [`${a}.v_proj.weight`, D]], D, `V${i}.qkv`);
      const qkvBias = keep(await L.vector([`${a}.q_proj.bias`, `${a}.k_proj.bias`, `${a}.v_proj.bias`], [D, D, D], `V${i}.qkv.bias`));
      const proj = await mat([[`${a}.out_proj.weight`, D]], D, `V${i}.out_proj`);
      const projBias = await vec(`${a}.out_proj.bias`, D, `V${i}.out_proj.bias`);
      const norm2 = await norm("layer_norm2");
      const fc1 = await mat([[`${p}.mlp.fc1.weight`, v.intermediateSize]], D, `V${i}.fc1`);
      const fc1Bias = await vec(`${p}.mlp.fc1.bias`, v.intermediateSize, `V${i}.fc1.bias`);
      const fc2 = await mat([[`${p}.mlp.fc2.weight`, D]], v.intermediateSize, `V${i}.fc2`);
      const fc2Bias = await vec(`${p}.mlp.fc2.bias`, D, `V${i}.fc2.bias`);
      blocks.push({ norm1, norm2, qkv, qkvBias, proj, projBias, fc1, fc1Bias, fc2, fc2Bias });
    }
    const postLayernorm = {
      weight: await vec(`${N.postLayernorm}.weight`, D, "post_layernorm.weight"),
      bias: await vec(`${N.postLayernorm}.bias`, D, "post_layernorm.bias"),
    };

    const H = config.text.hiddenSize;
    const I = config.text.intermediateSize;
    const r = config.perceiver;
    const mp = N.modalityProjection;
    const projectionGateUp = await mat([[`${mp}.gate_proj.weight`, I], [`${mp}.up_proj.weight`, I]], D, "modality_projection.gate_up");
    const projectionDown = await mat([[`${mp}.down_proj.weight`, H]], I, "modality_projection.down");
    const latentsWeight = await mat([[N.latents, r.numLatents]], H, "perceiver.latents", "f32");
    if ("shards" in latentsWeight || latentsWeight.format !== "f32") throw new WebvlmError("internal", "idefics2: perceiver latents must be one f32 tensor");
    const layers: PerceiverLayerWeights[] = [];
    const qDim = r.numHeads * r.headDim;
    const kvDim = r.numKvHeads * r.headDim;
    for (let j = 0; j < r.depth; j++) {
      const p = N.perceiverLayer(j);
      const a = `${p}.self_attn`;
      layers.push({
        inputLatentsNorm: await vec(`${p}.input_latents_norm.weight`, H, `P${j}.input_latents_norm`),
        inputContextNorm: await vec(`${p}.input_context_norm.weight`, H, `P${j}.input_context_norm`),
        q: await mat([[`${a}.q_proj.weight`, qDim]], H, `P${j}.q_proj`),
        kv: await mat([[`${a}.k_proj.weight`, kvDim], [`${a}.v_proj.weight`, kvDim]], H, `P${j}.kv_proj`),
        o: await mat([[`${a}.o_proj.weight`, H]], qDim, `P${j}.o_proj`),
        postAttentionLayernorm: await vec(`${p}.post_attention_layernorm.weight`, H, `P${j}.post_attention_layernorm`),
        gateUp: await mat([[`${p}.mlp.gate_proj.weight`, 4 * H], [`${p}.mlp.up_proj.weight`, 4 * H]], H, `P${j}.gate_up`),
        down: await mat([[`${p}.mlp.down_proj.weight`, H]], 4 * H, `P${j}.down_proj`),
      });
    }
    const norm = await vec(N.perceiverNorm, H, "perceiver.norm");
    return {
      text,
      vision: { embed, blocks, postLayernorm },
      connector: { projectionGateUp, projectionDown, latents: latentsWeight.data, latentsWeight, layers, norm },
      formats,
      gpuBytes: L.gpuBytes,
    };
  } catch (err) {
    if (text) releaseDecoderWeights(gpu, text);
    releaseTensors(gpu, made);
    throw err;
  }
}

/** Returns every weight buffer to the pool. */
export function releaseIdefics2Weights(gpu: GpuContext, w: Idefics2Weights): void {
  releaseDecoderWeights(gpu, w.text);
  const items: (Tensor | LinearWeight)[] = [];
  const v = w.vision;
  items.push(v.embed.patch, v.embed.patchBias, v.embed.positionEmbedding, v.postLayernorm.weight, v.postLayernorm.bias);
  for (const b of v.blocks) {
    for (const x of [b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias, b.qkv, b.qkvBias, b.proj, b.projBias, b.fc1, b.fc1Bias, b.fc2, b.fc2Bias]) {
      if (x) items.push(x);
    }
  }
  const c = w.connector;
  items.push(c.projectionGateUp, c.projectionDown, c.latentsWeight, c.norm);
  for (const l of c.layers) items.push(l.inputLatentsNorm, l.inputContextNorm, l.q, l.kv, l.o, l.postAttentionLayernorm, l.gateUp, l.down);
  releaseTensors(gpu, items);
}
