// Idefics2's tensor table (IDEFICS2.md §3): checkpoint names verbatim with their stored shapes.
// The language model is the shared decoder's table under `model.text_model.` (lm_head keeps its
// top-level name); the vision tower and the connector are listed here. One list drives the
// checkpoint check before loading and the comparison with the tiny-checkpoint generator's list.
import type { Idefics2Config } from "./config.ts";
import { decoderTensorTable } from "../decoder/names.ts";

export type Idefics2Part = "text" | "vision" | "connector";

export interface Idefics2TensorSpec {
  /** Checkpoint name, verbatim. */
  name: string;
  /** Stored shape (the patch embedding's Conv2d kernel is [D, 3, p, p]). */
  shape: number[];
  part: Idefics2Part;
}

export const VISION_PREFIX = "model.vision_model.";
export const CONNECTOR_PREFIX = "model.connector.";
const TEXT_PREFIX = "model.text_model.";

/**
 * The checkpoint name of a decoder-table name: `model.X` -> `model.text_model.X`; lm_head.weight
 * and names already under the vision/connector prefixes are unchanged.
 */
export function idefics2CheckpointName(name: string): string {
  if (name.startsWith(VISION_PREFIX) || name.startsWith(CONNECTOR_PREFIX) || name.startsWith(TEXT_PREFIX)) return name;
  if (name.startsWith("model.")) return TEXT_PREFIX + name.slice("model.".length);
  return name;
}

export const idefics2Names = {
  patchEmbedding: `${VISION_PREFIX}embeddings.patch_embedding`,
  positionEmbedding: `${VISION_PREFIX}embeddings.position_embedding.weight`,
  visionLayer: (i: number) => `${VISION_PREFIX}encoder.layers.${i}`,
  postLayernorm: `${VISION_PREFIX}post_layernorm`,
  modalityProjection: `${CONNECTOR_PREFIX}modality_projection`,
  latents: `${CONNECTOR_PREFIX}perceiver_resampler.latents`,
  perceiverLayer: (j: number) => `${CONNECTOR_PREFIX}perceiver_resampler.layers.${j}`,
  perceiverNorm: `${CONNECTOR_PREFIX}perceiver_resampler.norm.weight`,
} as const;

/** Every checkpoint tensor the model reads, with its stored shape, in load order (text, vision, connector). */
export function idefics2TensorTable(c: Idefics2Config): Idefics2TensorSpec[] {
  const N = idefics2Names;
  const out: Idefics2TensorSpec[] = decoderTensorTable(c.text).map((s) => ({ name: idefics2CheckpointName(s.name), shape: s.shape, part: "text" }));
  const add = (part: Idefics2Part, name: string, shape: number[]): void => {
    out.push({ name, shape, part });
  };

  const v = c.vision;
  const D = v.hiddenSize;
  add("vision", `${N.patchEmbedding}.weight`, [D, v.numChannels, v.patchSize, v.patchSize]);
  add("vision", `${N.patchEmbedding}.bias`, [D]);
  add("vision", N.positionEmbedding, [v.positionsPerSide ** 2, D]);
  for (let i = 0; i < v.numLayers; i++) {
    const p = N.visionLayer(i);
    const norm = (k: string): void => (add("vision", `${p}.${k}.weight`, [D]), add("vision", `${p}.${k}.bias`, [D]));
    const lin = (k: string, rows: number, cols: number): void => (add("vision", `${p}.${k}.weight`, [rows, cols]), add("vision", `${p}.${k}.bias`, [rows]));
    norm("layer_norm1");
    for (const k of ["q_proj", "k_proj", "v_proj", "out_proj"]) lin(`self_attn.${k}`, D, D);
    norm("layer_norm2");
    lin("mlp.fc1", v.intermediateSize, D);
    lin("mlp.fc2", D, v.intermediateSize);
  }
  add("vision", `${N.postLayernorm}.weight`, [D]);
  add("vision", `${N.postLayernorm}.bias`, [D]);

  const H = c.text.hiddenSize;
  const I = c.text.intermediateSize;
  const r = c.perceiver;
  const mp = N.modalityProjection;
  add("connector", `${mp}.gate_proj.weight`, [I, D]);
  add("connector", `${mp}.up_proj.weight`, [I, D]);
  add("connector", `${mp}.down_proj.weight`, [H, I]);
  add("connector", N.latents, [r.numLatents, H]);
  for (let j = 0; j < r.depth; j++) {
    const p = N.perceiverLayer(j);
    add("connector", `${p}.input_latents_norm.weight`, [H]);
    add("connector", `${p}.input_context_norm.weight`, [H]);
    add("connector", `${p}.self_attn.q_proj.weight`, [r.numHeads * r.headDim, H]);
    add("connector", `${p}.self_attn.k_proj.weight`, [r.numKvHeads * r.headDim, H]);
    add("connector", `${p}.self_attn.v_proj.weight`, [r.numKvHeads * r.headDim, H]);
    add("connector", `${p}.self_attn.o_proj.weight`, [H, r.numHeads * r.headDim]);
    add("connector", `${p}.post_attention_layernorm.weight`, [H]);
    add("connector", `${p}.mlp.gate_proj.weight`, [4 * H, H]);
    add("connector", `${p}.mlp.up_proj.weight`, [4 * H, H]);
    add("connector", `${p}.mlp.down_proj.weight`, [H, 4 * H]);
  }
  add("connector", N.perceiverNorm, [H]);
  return out;
}
