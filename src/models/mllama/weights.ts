// Llama 3.2 Vision checkpoint -> GPU weights. Every name and shape of the table (names.ts) is
// checked before anything is read, under either tensor-name layout; tensors then stream to the GPU
// one weight at a time.
//
// Formats (FormatChoice): the decoder's linears take `textLinear` (q4 by default, quantized in situ),
// the cross-attention layers' included: q/o and the MLP run per token like any decoder layer, and
// k/v run once per image set over T*P rows per image. embed_tokens / lm_head take `embedding`.
// The vision tower (patch conv, q|k|v, o, fc1, fc2), the tile / position / pre- and post-tile
// embedding tables and the projector take `vision` (f16 by default): the tower runs once per image
// as GEMMs over 4 x 1608 rows (compute-bound, the weights read once), so low bits save little time,
// while their error reaches every vision key of every cross layer. Norm weights, biases, the class
// embedding and every gate stay f32 (tiny; gates are read by tanh on the GPU).
//
// The projector's input is [global (D) | intermediates interleaved (feature D + d*K + k)]
// (MLLAMA.md §4.12-13). Instead of interleaving activations, its columns are regrouped at load into
// K + 1 [hidden, D] blocks (block 0 reads the global output, block 1 + k reads tap k), and the
// projection is their accumulated sum: the same products, no strided gather.
import type { GpuContext } from "../../gpu/device.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import type { WeightFormat } from "../../quant/formats.ts";
import { maxWeightBytes, quantize, shardWeight, uploadQuantized, uploadWeight } from "../../quant/pack.ts";
import type { LinearWeight, TensorSource, WeightFormats, WeightLoadOptions } from "../common/source.ts";
import { releaseTensors, resolveFormats, WeightLoader, type WeightMaker } from "../common/weight_loader.ts";
import { buildDecoderWeights, releaseDecoderWeights, type DecoderWeights } from "../decoder/weights.ts";
import type { VitBlockWeights, VitNormWeights } from "../vit/encoder.ts";
import type { MllamaConfig } from "./config.ts";
import { mllamaNameCandidates, mllamaNames, mllamaTensorTable } from "./names.ts";

export interface MllamaVisionWeights {
  /** Conv kernel as [D, C * p * p] (no bias). */
  patch: LinearWeight;
  /** f32 [D]. */
  classEmbedding: Tensor;
  /** [P, D]: gathered by position id. */
  positionEmbedding: LinearWeight;
  /** [aspect ratios + 1, T * P * D]: row = aspect ratio id. */
  tileEmbedding: LinearWeight;
  /** gated_positional_embedding.gate, f32 [1]. */
  positionGate: Tensor;
  /** [aspect ratios + 1, T * D]. */
  preTileEmbedding: LinearWeight;
  preTileGate: Tensor;
  postTileEmbedding: LinearWeight;
  postTileGate: Tensor;
  layernormPre: Required<VitNormWeights>;
  layernormPost: Required<VitNormWeights>;
  local: VitBlockWeights[];
  /** gateAttn / gateMlp set. */
  global: VitBlockWeights[];
  /** K + 1 blocks [hidden, D]: the global output's columns, then each tap's (see the header). */
  projector: LinearWeight[];
  projectorBias: Tensor;
}

export interface MllamaWeights {
  text: DecoderWeights;
  vision: MllamaVisionWeights;
  formats: WeightFormats;
  gpuBytes: number;
}

/** Loads every tensor of an mllama checkpoint (either name layout) onto the GPU. */
export async function loadMllamaWeights(gpu: GpuContext, config: MllamaConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<MllamaWeights> {
  const formats = resolveFormats(opts);
  const table = mllamaTensorTable(config);
  const L = new WeightLoader(gpu, source, table.length, opts, mllamaNameCandidates);
  for (const s of table) L.check(s.name, s.shape);
  return buildMllamaWeights(gpu, config, L, formats);
}

/** Projector column blocks (header): exact from a checkpoint, any values from another maker. */
async function projectorBlocks(gpu: GpuContext, c: MllamaConfig, L: WeightMaker, format: WeightFormat): Promise<LinearWeight[]> {
  const H = c.text.hiddenSize;
  const D = c.vision.hiddenSize;
  const K = c.vision.intermediateLayers.length;
  const W = c.vision.outputDim;
  const canonical = `${mllamaNames.projector}.weight`;
  if (!(L instanceof WeightLoader)) {
    const out: LinearWeight[] = [];
    for (let j = 0; j <= K; j++) out.push(await L.matrix([{ canonical, rows: H }], D, format, `projector[${j}]`));
    return out;
  }
  const name = L.check(canonical, [H, W]);
  const all = await L.read(name, H * W);
  const made: LinearWeight[] = [];
  const maxBytes = L.opts.maxBindingBytes ?? maxWeightBytes(gpu);
  try {
    for (let j = 0; j <= K; j++) {
      const block = new Float32Array(H * D);
      for (let r = 0; r < H; r++) {
        const src = r * W;
        const dst = r * D;
        if (j === 0) block.set(all.subarray(src, src + D), dst);
        else for (let d = 0; d < D; d++) block[dst + d] = all[src + D + d * K + (j - 1)];
      }
      const label = `projector[${j}]`;
      const bytes = H * D * (format === "f32" ? 4 : format === "f16" ? 2 : 1);
      const w = bytes > maxBytes
        ? shardWeight(gpu, block, H, D, format, maxBytes, label)
        : format === "q4" || format === "q8" ? uploadQuantized(gpu, quantize(block, H, D, format), label) : uploadWeight(gpu, block, H, D, format, label);
      made.push(L.countWeight(w));
    }
  } catch (e) {
    releaseTensors(gpu, made);
    throw e;
  }
  L.tick(name);
  return made;
}

/** The weight set made by `L` (decoder canonical names `model.*`, mapped by the maker). */
export async function buildMllamaWeights(gpu: GpuContext, config: MllamaConfig, L: WeightMaker, formats: WeightFormats): Promise<MllamaWeights> {
  const made: (Tensor | LinearWeight)[] = [];
  let text: DecoderWeights | null = null;
  const keep = <T extends Tensor | LinearWeight>(x: T): T => (made.push(x), x);
  const vec = async (name: string, n: number, label: string): Promise<Tensor> => keep(await L.vector([name], [n], label));
  const mat = async (parts: [string, number][], cols: number, label: string, alt?: number[]): Promise<LinearWeight> =>
    keep(await L.matrix(parts.map(([canonical, rows]) => ({ canonical, rows })), cols, formats.vision, label, alt));
  try {
    text = await buildDecoderWeights(gpu, config.text, L, formats);
    const N = mllamaNames;
    const v = config.vision;
    const D = v.hiddenSize;
    const T = v.maxNumTiles;
    const P = v.tokensPerTile;
    const arRows = v.aspectRatios.length + 1;
    const patchDim = v.numChannels * v.patchSize * v.patchSize;
    const norm = async (prefix: string, label: string): Promise<Required<VitNormWeights>> => ({
      weight: await vec(`${prefix}.weight`, D, `${label}.weight`),
      bias: await vec(`${prefix}.bias`, D, `${label}.bias`),
    });
    const block = async (prefix: string, label: string, gated: boolean): Promise<VitBlockWeights> => {
      const a = `${prefix}.self_attn`;
      const b: VitBlockWeights = {
        norm1: await norm(`${prefix}.input_layernorm`, `${label}.input_layernorm`),
        qkv: await mat([[`${a}.q_proj.weight`, D], [`${a}.k_proj.weight`, D], [`${a}.v_proj.weight`, D]], D, `${label}.qkv`),
        proj: await mat([[`${a}.o_proj.weight`, D]], D, `${label}.o_proj`),
        norm2: await norm(`${prefix}.post_attention_layernorm`, `${label}.post_attention_layernorm`),
        fc1: await mat([[`${prefix}.mlp.fc1.weight`, v.intermediateSize]], D, `${label}.fc1`),
        fc1Bias: await vec(`${prefix}.mlp.fc1.bias`, v.intermediateSize, `${label}.fc1.bias`),
        fc2: await mat([[`${prefix}.mlp.fc2.weight`, D]], v.intermediateSize, `${label}.fc2`),
        fc2Bias: await vec(`${prefix}.mlp.fc2.bias`, D, `${label}.fc2.bias`),
      };
      if (gated) {
        b.gateAttn = await vec(`${prefix}.gate_attn`, 1, `${label}.gate_attn`);
        b.gateMlp = await vec(`${prefix}.gate_ffn`, 1, `${label}.gate_ffn`);
      }
      return b;
    };
    const patch = await mat([[N.patchEmbedding, D]], patchDim, "patch_embedding", [D, v.numChannels, v.patchSize, v.patchSize]);
    const classEmbedding = await vec(N.classEmbedding, D, "class_embedding");
    const positionEmbedding = await mat([[N.positionEmbedding, P]], D, "gated_positional_embedding");
    const positionGate = await vec(N.positionGate, 1, "gated_positional_embedding.gate");
    const tileEmbedding = await mat([[N.tileEmbedding, arRows]], T * P * D, "tile_embedding");
    const preTileEmbedding = await mat([[N.preTileEmbedding, arRows]], T * D, "pre_tile_positional_embedding");
    const preTileGate = await vec(N.preTileGate, 1, "pre_tile_positional_embedding.gate");
    const postTileEmbedding = await mat([[N.postTileEmbedding, arRows]], T * D, "post_tile_positional_embedding");
    const postTileGate = await vec(N.postTileGate, 1, "post_tile_positional_embedding.gate");
    const layernormPre = await norm(N.layernormPre, "layernorm_pre");
    const layernormPost = await norm(N.layernormPost, "layernorm_post");
    const local: VitBlockWeights[] = [];
    for (let i = 0; i < v.numLayers; i++) local.push(await block(N.localLayer(i), `V${i}`, false));
    const global: VitBlockWeights[] = [];
    for (let i = 0; i < v.numGlobalLayers; i++) global.push(await block(N.globalLayer(i), `G${i}`, true));
    const projector = await projectorBlocks(gpu, config, L, formats.vision);
    made.push(...projector);
    const projectorBias = await vec(`${N.projector}.bias`, config.text.hiddenSize, "projector.bias");
    return {
      text,
      vision: {
        patch, classEmbedding, positionEmbedding, tileEmbedding, positionGate, preTileEmbedding, preTileGate, postTileEmbedding, postTileGate,
        layernormPre, layernormPost, local, global, projector, projectorBias,
      },
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
export function releaseMllamaWeights(gpu: GpuContext, w: MllamaWeights): void {
  releaseDecoderWeights(gpu, w.text);
  const v = w.vision;
  const items: (Tensor | LinearWeight)[] = [
    v.patch, v.classEmbedding, v.positionEmbedding, v.tileEmbedding, v.positionGate, v.preTileEmbedding, v.preTileGate,
    v.postTileEmbedding, v.postTileGate, v.layernormPre.weight, v.layernormPre.bias, v.layernormPost.weight, v.layernormPost.bias,
    ...v.projector, v.projectorBias,
  ];
  for (const b of [...v.local, ...v.global]) {
    for (const x of [b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias, b.qkv, b.proj, b.fc1, b.fc1Bias, b.fc2, b.fc2Bias, b.gateAttn, b.gateMlp]) {
      if (x) items.push(x);
    }
  }
  releaseTensors(gpu, items);
}
