// Phi-3.5-vision's tensor table (PHI3V.md §2): checkpoint names verbatim with their stored shapes.
// The language model is the shared decoder's table as is (model.*, lm_head); the CLIP tower sits
// under model.vision_embed_tokens.img_processor.vision_model. and the HD connector (separators and
// projection) under model.vision_embed_tokens. Entries the model never reads are listed with
// used: false — CLIP layers past layer_idx, post_layernorm, the wte copy of embed_tokens — so one
// list both drives loading and equals a checkpoint's names.
import { decoderTensorTable } from "../decoder/names.ts";
import { PHI3V_GRID, PHI3V_PATCH_SIZE, VISION_PREFIX, type Phi3VConfig, type Phi3VVisionConfig } from "./config.ts";

export type Phi3VPart = "text" | "vision" | "connector";

export interface Phi3VTensorSpec {
  /** Checkpoint name, verbatim. */
  name: string;
  /** Stored shape (the patch embedding's Conv2d kernel is [C, 3, 14, 14]). */
  shape: number[];
  part: Phi3VPart;
  /** false for tensors a checkpoint carries that the model does not read. */
  used: boolean;
}

export const EMBED_PREFIX = "model.vision_embed_tokens.";

export const phi3VNames = {
  classEmbedding: `${VISION_PREFIX}embeddings.class_embedding`,
  patchEmbedding: `${VISION_PREFIX}embeddings.patch_embedding.weight`,
  positionEmbedding: `${VISION_PREFIX}embeddings.position_embedding.weight`,
  preLayrnorm: `${VISION_PREFIX}pre_layrnorm`,
  visionLayer: (i: number) => `${VISION_PREFIX}encoder.layers.${i}`,
  postLayernorm: `${VISION_PREFIX}post_layernorm`,
  glbGN: `${EMBED_PREFIX}glb_GN`,
  subGN: `${EMBED_PREFIX}sub_GN`,
  projection: (i: 0 | 2) => `${EMBED_PREFIX}img_projection.${i}`,
  /** The embedding module shared with model.embed_tokens (same tensor): never read. */
  wte: `${EMBED_PREFIX}wte.weight`,
} as const;

export interface Phi3VTableOptions {
  /** List model.vision_embed_tokens.wte.weight (a checkpoint may carry it; default false). */
  withWte?: boolean;
}

/** Every checkpoint tensor, with its stored shape, in load order (text, vision, connector). */
export function phi3VTensorTable(c: Phi3VConfig, v: Phi3VVisionConfig, opts: Phi3VTableOptions = {}): Phi3VTensorSpec[] {
  const N = phi3VNames;
  const out: Phi3VTensorSpec[] = decoderTensorTable(c.text).map((s) => ({ name: s.name, shape: s.shape, part: "text", used: true }));
  const add = (part: Phi3VPart, name: string, shape: number[], used = true): void => {
    out.push({ name, shape, part, used });
  };
  const C = v.hiddenSize;
  add("vision", N.classEmbedding, [C]);
  add("vision", N.patchEmbedding, [C, 3, PHI3V_PATCH_SIZE, PHI3V_PATCH_SIZE]);
  add("vision", N.positionEmbedding, [PHI3V_GRID * PHI3V_GRID + 1, C]);
  add("vision", `${N.preLayrnorm}.weight`, [C]);
  add("vision", `${N.preLayrnorm}.bias`, [C]);
  for (let i = 0; i < v.numLayers; i++) {
    const p = N.visionLayer(i);
    const used = i < v.layersUsed;
    const norm = (k: string): void => (add("vision", `${p}.${k}.weight`, [C], used), add("vision", `${p}.${k}.bias`, [C], used));
    const lin = (k: string, rows: number, cols: number): void => (add("vision", `${p}.${k}.weight`, [rows, cols], used), add("vision", `${p}.${k}.bias`, [rows], used));
    norm("layer_norm1");
    for (const k of ["q_proj", "k_proj", "v_proj", "out_proj"]) lin(`self_attn.${k}`, C, C);
    norm("layer_norm2");
    lin("mlp.fc1", v.intermediateSize, C);
    lin("mlp.fc2", C, v.intermediateSize);
  }
  add("vision", `${N.postLayernorm}.weight`, [C], false);
  add("vision", `${N.postLayernorm}.bias`, [C], false);

  const H = c.text.hiddenSize;
  add("connector", N.glbGN, [1, 1, 4 * C]);
  add("connector", N.subGN, [1, 1, 1, 4 * C]);
  add("connector", `${N.projection(0)}.weight`, [H, 4 * C]);
  add("connector", `${N.projection(0)}.bias`, [H]);
  add("connector", `${N.projection(2)}.weight`, [H, H]);
  add("connector", `${N.projection(2)}.bias`, [H]);
  if (opts.withWte) add("text", N.wte, [c.text.vocabSize, H], false);
  return out;
}
