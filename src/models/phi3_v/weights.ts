// Phi-3.5-vision checkpoint -> GPU weights. Every name and shape the model reads (names.ts, used
// entries) is checked before anything is read; tensors then stream to the GPU one weight at a time.
// CLIP layers past layer_idx and post_layernorm are never read (their output is not used), nor is
// model.vision_embed_tokens.wte.weight (the same tensor as model.embed_tokens.weight).
//
// Formats (FormatChoice): the Phi-3 decoder's linears (fused qkv, o, fused gate|up, down) take
// `textLinear` (q4 by default, quantized in situ as for the other families); embed_tokens and the
// untied lm_head take `embedding`; the CLIP tower (patch embedding, position table, q|k|v, out,
// fc1, fc2) and the HD projection (img_projection.0 / .2) take `vision` (f16 by default): they run
// once per image as GEMMs over up to 17 x 577 rows, so low bits save little time while their error
// reaches every image token. The class embedding, the sub_GN / glb_GN separators, every norm weight
// and every bias stay f32 (tiny; the separators are copied into the image rows as they are).
import type { GpuContext } from "../../gpu/device.ts";
import { reshape, type Tensor } from "../../gpu/tensor.ts";
import { WebvlmError } from "../../api/errors.ts";
import type { LinearWeight, TensorSource, WeightFormats, WeightLoadOptions } from "../common/source.ts";
import { releaseTensors, resolveFormats, WeightLoader, type WeightMaker } from "../common/weight_loader.ts";
import { buildDecoderWeights, releaseDecoderWeights, type DecoderWeights } from "../decoder/weights.ts";
import type { VitBlockWeights, VitNormWeights } from "../vit/encoder.ts";
import type { VitEmbedWeights } from "../vit/embeddings.ts";
import { PHI3V_GRID, PHI3V_PATCH_DIM, PHI3V_PATCH_SIZE, phi3VVisionConfig, type Phi3VConfig, type Phi3VVisionConfig } from "./config.ts";
import { phi3VNames, phi3VTensorTable } from "./names.ts";

export interface Phi3VVisionWeights {
  /** Patch embedding [C, 3*14*14] (no bias), class embedding f32 [C], position table [577, C], pre_layrnorm. */
  embed: VitEmbedWeights & { classEmbedding: Tensor; positionEmbedding: LinearWeight; preNorm: Required<VitNormWeights> };
  /** The first layersUsed encoder layers only. */
  blocks: VitBlockWeights[];
}

export interface Phi3VConnectorWeights {
  /** f32 [4C] each: appended after every grid row (sub) and between the sub and global grids (glb). */
  subGN: Tensor;
  glbGN: Tensor;
  /** The dense 1-row weights behind subGN / glbGN (kept for release). */
  separators: LinearWeight[];
  /** img_projection.0 [H, 4C] + bias, img_projection.2 [H, H] + bias. */
  proj0: LinearWeight;
  proj0Bias: Tensor;
  proj2: LinearWeight;
  proj2Bias: Tensor;
}

export interface Phi3VWeights {
  text: DecoderWeights;
  vision: Phi3VVisionWeights;
  connector: Phi3VConnectorWeights;
  /** The CLIP sizes read from the checkpoint's tensors. */
  visionConfig: Phi3VVisionConfig;
  formats: WeightFormats;
  /** Bytes the tensors occupy on the GPU (before pool rounding). */
  gpuBytes: number;
}

/**
 * Loads the tensors a Phi-3.5-vision model reads onto the GPU (missing_tensor / shape_mismatch name
 * the tensor before anything is read). On failure, tensors already uploaded return to the pool.
 */
export async function loadPhi3VWeights(gpu: GpuContext, config: Phi3VConfig, source: TensorSource, opts: WeightLoadOptions = {}): Promise<Phi3VWeights> {
  const formats = resolveFormats(opts);
  const vision = phi3VVisionConfig(config, source);
  const table = phi3VTensorTable(config, vision).filter((s) => s.used);
  const L = new WeightLoader(gpu, source, table.length, opts);
  for (const s of table) {
    // The Conv2d kernel is read as the [C, 3*14*14] matrix it equals; both stored shapes are accepted.
    if (s.name === phi3VNames.patchEmbedding) L.check(s.name, [vision.hiddenSize, PHI3V_PATCH_DIM], s.shape);
    else L.check(s.name, s.shape);
  }
  return buildPhi3VWeights(gpu, config, vision, L, formats);
}

/** The weight set made by `L` in table order. On failure, tensors already made are returned to the pool. */
export async function buildPhi3VWeights(gpu: GpuContext, config: Phi3VConfig, v: Phi3VVisionConfig, L: WeightMaker, formats: WeightFormats): Promise<Phi3VWeights> {
  const made: (Tensor | LinearWeight)[] = [];
  let text: DecoderWeights | null = null;
  const keep = <T extends Tensor | LinearWeight>(x: T): T => (made.push(x), x);
  const vec = async (name: string, n: number, label: string): Promise<Tensor> => keep(await L.vector([name], [n], label));
  const mat = async (name: string, rows: number, cols: number, label: string, fmt = formats.vision, alt?: number[]): Promise<LinearWeight> =>
    keep(await L.matrix([{ canonical: name, rows }], cols, fmt, label, alt));
  /** A stored [1, 1, (1,) n] separator as an f32 vector (one dense row). */
  const separator = async (name: string, n: number, stored: number[], label: string): Promise<[Tensor, LinearWeight]> => {
    const w = await mat(name, 1, n, label, "f32", stored);
    if ("shards" in w || w.format !== "f32") throw new WebvlmError("internal", `phi3_v: ${label} must be one f32 row`);
    return [reshape(w.data, [n]), w];
  };
  try {
    text = await buildDecoderWeights(gpu, config.text, L, formats);
    const N = phi3VNames;
    const C = v.hiddenSize;
    const embed = {
      classEmbedding: await vec(N.classEmbedding, C, "class_embedding"),
      patch: await mat(N.patchEmbedding, C, PHI3V_PATCH_DIM, "patch_embedding", formats.vision, [C, 3, PHI3V_PATCH_SIZE, PHI3V_PATCH_SIZE]),
      positionEmbedding: await mat(N.positionEmbedding, PHI3V_GRID * PHI3V_GRID + 1, C, "position_embedding"),
      preNorm: {
        weight: await vec(`${N.preLayrnorm}.weight`, C, "pre_layrnorm.weight"),
        bias: await vec(`${N.preLayrnorm}.bias`, C, "pre_layrnorm.bias"),
      },
    };
    const blocks: VitBlockWeights[] = [];
    for (let i = 0; i < v.layersUsed; i++) {
      const p = N.visionLayer(i);
      const norm = async (k: string): Promise<Required<VitNormWeights>> => ({
        weight: await vec(`${p}.${k}.weight`, C, `V${i}.${k}.weight`),
        bias: await vec(`${p}.${k}.bias`, C, `V${i}.${k}.bias`),
      });
      const a = `${p}.self_attn`;
      const norm1 = await norm("layer_norm1");
      const qkv = keep(await L.matrix([`q_proj`, `k_proj`, `v_proj`].map((k) => ({ canonical: `${a}.${k}.weight`, rows: C })), C, formats.vision, `V${i}.qkv`));
      const qkvBias = keep(await L.vector([`${a}.q_proj.bias`, `${a}.k_proj.bias`, `${a}.v_proj.bias`], [C, C, C], `V${i}.qkv.bias`));
      const proj = await mat(`${a}.out_proj.weight`, C, C, `V${i}.out_proj`);
      const projBias = await vec(`${a}.out_proj.bias`, C, `V${i}.out_proj.bias`);
      const norm2 = await norm("layer_norm2");
      const fc1 = await mat(`${p}.mlp.fc1.weight`, v.intermediateSize, C, `V${i}.fc1`);
      const fc1Bias = await vec(`${p}.mlp.fc1.bias`, v.intermediateSize, `V${i}.fc1.bias`);
      const fc2 = await mat(`${p}.mlp.fc2.weight`, C, v.intermediateSize, `V${i}.fc2`);
      const fc2Bias = await vec(`${p}.mlp.fc2.bias`, C, `V${i}.fc2.bias`);
      blocks.push({ norm1, norm2, qkv, qkvBias, proj, projBias, fc1, fc1Bias, fc2, fc2Bias });
    }

    const H = config.text.hiddenSize;
    const [glbGN, glbW] = await separator(N.glbGN, 4 * C, [1, 1, 4 * C], "glb_GN");
    const [subGN, subW] = await separator(N.subGN, 4 * C, [1, 1, 1, 4 * C], "sub_GN");
    const connector: Phi3VConnectorWeights = {
      glbGN,
      subGN,
      separators: [glbW, subW],
      proj0: await mat(`${N.projection(0)}.weight`, H, 4 * C, "img_projection.0"),
      proj0Bias: await vec(`${N.projection(0)}.bias`, H, "img_projection.0.bias"),
      proj2: await mat(`${N.projection(2)}.weight`, H, H, "img_projection.2"),
      proj2Bias: await vec(`${N.projection(2)}.bias`, H, "img_projection.2.bias"),
    };
    return { text, vision: { embed, blocks }, connector, visionConfig: v, formats, gpuBytes: L.gpuBytes };
  } catch (err) {
    if (text) releaseDecoderWeights(gpu, text);
    releaseTensors(gpu, made);
    throw err;
  }
}

/** Returns every weight buffer to the pool. */
export function releasePhi3VWeights(gpu: GpuContext, w: Phi3VWeights): void {
  releaseDecoderWeights(gpu, w.text);
  const items: (Tensor | LinearWeight)[] = [];
  const e = w.vision.embed;
  items.push(e.patch, e.classEmbedding, e.positionEmbedding, e.preNorm.weight, e.preNorm.bias);
  for (const b of w.vision.blocks) {
    for (const x of [b.norm1.weight, b.norm1.bias, b.norm2.weight, b.norm2.bias, b.qkv, b.qkvBias, b.proj, b.projBias, b.fc1, b.fc1Bias, b.fc2, b.fc2Bias]) {
      if (x) items.push(x);
    }
  }
  const c = w.connector;
  items.push(...c.separators, c.proj0, c.proj0Bias, c.proj2, c.proj2Bias);
  releaseTensors(gpu, items);
}
