// Decoder checkpoint -> GPU weights, driven by the tensor table (names.ts): every name and shape
// checked before anything is read, then tensors streamed one GPU weight at a time (q|k|v and
// gate|up row-stacked into one matrix whether the checkpoint splits or fuses them), each matrix
// in its requested format. Release walks the same structure.
import type { GpuContext } from "../../gpu/device.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import type { ShardedWeight, Weight, WeightFormat } from "../../quant/formats.ts";
import type { TensorSource, WeightLoadOptions } from "../common/source.ts";
import { releaseTensors, resolveFormats, WeightLoader, type WeightMaker } from "../common/weight_loader.ts";
import { isCrossLayer, type DecoderConfig } from "./config.ts";
import type { CrossAttentionLayerWeights } from "./cross_attention.ts";
import { decoderTensorTable, type Slot, type TensorSpec } from "./names.ts";

export type DecoderLinear = Weight | ShardedWeight;

export interface DecoderLayerWeights {
  inputNorm: Tensor;
  /** q | k | v rows: [(Hq + 2 Hkv) D, hidden]. */
  qkv: DecoderLinear;
  qkvBias: Tensor | null;
  o: DecoderLinear;
  oBias: Tensor | null;
  postNorm: Tensor;
  /** gate | up rows: [2 I, hidden]. */
  gateUp: DecoderLinear;
  gateUpBias: Tensor | null;
  down: DecoderLinear;
  downBias: Tensor | null;
}

export interface DecoderWeights {
  embed: DecoderLinear;
  /** The self-attention layers, in order (every layer unless the config has cross-attention layers). */
  layers: DecoderLayerWeights[];
  /** The cross-attention layers (config.crossAttentionLayers), in order; empty for text decoders. */
  crossLayers: CrossAttentionLayerWeights[];
  norm: Tensor;
  /** The same object as `embed` when tied. */
  lmHead: DecoderLinear;
  formats: { textLinear: WeightFormat; embedding: WeightFormat };
  gpuBytes: number;
}

/**
 * Loads a decoder checkpoint onto the GPU. Formats: opts.textLinear for the layers' matrices,
 * opts.embedding for embed_tokens / lm_head (DEFAULT_FORMATS otherwise); norms and biases f32.
 * Every name and shape is checked before anything is read; on failure every tensor already
 * uploaded goes back to the pool.
 */
export async function loadDecoderWeights(gpu: GpuContext, c: DecoderConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<DecoderWeights> {
  const { textLinear, embedding } = resolveFormats(opts);
  const table = decoderTensorTable(c);
  const L = new WeightLoader(gpu, source, table.length, opts);
  for (const s of table) L.check(s.name, s.shape);
  return buildDecoderWeights(gpu, c, L, { textLinear, embedding });
}

/**
 * The decoder's weight set made by `L` from its tensor table (a checkpoint loader, or a
 * benchmark's random maker; a family embedding the decoder passes its own maker). On failure,
 * tensors already made are returned to the pool.
 */
export async function buildDecoderWeights(
  gpu: GpuContext, c: DecoderConfig, L: WeightMaker, formats: { textLinear: WeightFormat; embedding: WeightFormat },
): Promise<DecoderWeights> {
  const table = decoderTensorTable(c);
  const made: (Tensor | DecoderLinear)[] = [];
  const keep = <T extends Tensor | DecoderLinear>(x: T): T => (made.push(x), x);
  const of = (slot: Slot, layer: number | null): TensorSpec[] => table.filter((s) => s.slot === slot && s.layer === layer);
  const vector = async (parts: TensorSpec[], label: string): Promise<Tensor> =>
    keep(await L.vector(parts.map((p) => p.name), parts.map((p) => p.shape[0]), label));
  const matrix = async (parts: TensorSpec[], format: WeightFormat, label: string): Promise<DecoderLinear> =>
    keep(await L.matrix(parts.map((p) => ({ canonical: p.name, rows: p.shape[0] })), parts[0].shape[1], format, label));
  try {
    const embed = await matrix(of("embed", null), formats.embedding, "embed_tokens");
    const layers: DecoderLayerWeights[] = [];
    const crossLayers: CrossAttentionLayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const vec = async (slot: Slot, label: string): Promise<Tensor | null> => {
        const parts = of(slot, i);
        return parts.length ? vector(parts, `L${i}.${label}`) : null;
      };
      const mat = (slot: Slot, label: string): Promise<DecoderLinear> => matrix(of(slot, i), formats.textLinear, `L${i}.${label}`);
      if (isCrossLayer(c, i)) {
        crossLayers.push({
          inputNorm: (await vec("inputNorm", "input_layernorm"))!,
          q: await mat("crossQ", "cross_attn.q_proj"),
          k: await mat("crossK", "cross_attn.k_proj"),
          v: await mat("crossV", "cross_attn.v_proj"),
          o: await mat("crossO", "cross_attn.o_proj"),
          qNorm: (await vec("qNorm", "cross_attn.q_norm"))!,
          kNorm: (await vec("kNorm", "cross_attn.k_norm"))!,
          attnGate: (await vec("attnGate", "cross_attn_attn_gate"))!,
          mlpGate: (await vec("mlpGate", "cross_attn_mlp_gate"))!,
          postNorm: (await vec("postNorm", "post_attention_layernorm"))!,
          gateUp: await mat("gateUp", "gate_up"),
          down: await mat("down", "down_proj"),
        });
        continue;
      }
      layers.push({
        inputNorm: (await vec("inputNorm", "input_layernorm"))!,
        qkv: await mat("qkv", "qkv"),
        qkvBias: await vec("qkvBias", "qkv.bias"),
        o: await mat("o", "o_proj"),
        oBias: await vec("oBias", "o_proj.bias"),
        postNorm: (await vec("postNorm", "post_attention_layernorm"))!,
        gateUp: await mat("gateUp", "gate_up"),
        gateUpBias: await vec("gateUpBias", "gate_up.bias"),
        down: await mat("down", "down_proj"),
        downBias: await vec("downBias", "down_proj.bias"),
      });
    }
    const norm = await vector(of("norm", null), "norm");
    const lmHead = c.tieWordEmbeddings ? embed : await matrix(of("lmHead", null), formats.embedding, "lm_head");
    return { embed, layers, crossLayers, norm, lmHead, formats, gpuBytes: L.gpuBytes };
  } catch (e) {
    releaseTensors(gpu, made);
    throw e;
  }
}

/** Returns every weight buffer to the pool (a tied lm_head once). */
export function releaseDecoderWeights(gpu: GpuContext, w: DecoderWeights): void {
  const items: (Tensor | DecoderLinear | null)[] = [w.embed, w.norm, w.lmHead];
  for (const l of w.layers) items.push(l.inputNorm, l.qkv, l.qkvBias, l.o, l.oBias, l.postNorm, l.gateUp, l.gateUpBias, l.down, l.downBias);
  for (const l of w.crossLayers) items.push(l.inputNorm, l.q, l.k, l.v, l.o, l.qNorm, l.kNorm, l.attnGate, l.mlpGate, l.postNorm, l.gateUp, l.down);
  releaseTensors(gpu, items.filter((x): x is Tensor | DecoderLinear => x !== null));
}
