// Llama 3.2 Vision's tensor table (MLLAMA.md §2), checkpoint names verbatim. Canonical names are the
// hub's ("old") layout, except the decoder's, which the shared decoder table spells `model.*` /
// `lm_head.weight` and this family places under `language_model.`. The loader looks each canonical
// name up under both layouts transformers has written: the hub's (`vision_model.`,
// `multi_modal_projector.`, `language_model.model.`, `language_model.lm_head.`) and >= 4.52's
// (`model.vision_model.`, `model.multi_modal_projector.`, `model.language_model.`, `lm_head.`).
import { decoderTensorTable } from "../decoder/names.ts";
import type { MllamaConfig } from "./config.ts";

export const mllamaNames = {
  patchEmbedding: "vision_model.patch_embedding.weight",
  classEmbedding: "vision_model.class_embedding",
  positionEmbedding: "vision_model.gated_positional_embedding.embedding",
  positionGate: "vision_model.gated_positional_embedding.gate",
  tileEmbedding: "vision_model.gated_positional_embedding.tile_embedding.weight",
  preTileEmbedding: "vision_model.pre_tile_positional_embedding.embedding.weight",
  preTileGate: "vision_model.pre_tile_positional_embedding.gate",
  postTileEmbedding: "vision_model.post_tile_positional_embedding.embedding.weight",
  postTileGate: "vision_model.post_tile_positional_embedding.gate",
  layernormPre: "vision_model.layernorm_pre",
  layernormPost: "vision_model.layernorm_post",
  localLayer: (i: number) => `vision_model.transformer.layers.${i}`,
  globalLayer: (i: number) => `vision_model.global_transformer.layers.${i}`,
  projector: "multi_modal_projector",
} as const;

/** The stored names a canonical name may have: hub layout first, then transformers >= 4.52's. */
export function mllamaNameCandidates(canonical: string): string[] {
  if (canonical === "lm_head.weight") return ["language_model.lm_head.weight", "lm_head.weight"];
  if (canonical.startsWith("model.")) return [`language_model.${canonical}`, `model.language_model.${canonical.slice("model.".length)}`];
  if (canonical.startsWith("vision_model.") || canonical.startsWith("multi_modal_projector.")) return [canonical, `model.${canonical}`];
  return [canonical];
}

/** The hub ("old") name of a canonical name. */
export function mllamaHubName(canonical: string): string {
  return mllamaNameCandidates(canonical)[0];
}

export interface MllamaTensorSpec {
  /** Canonical name (see the header); mllamaHubName gives the hub's spelling. */
  name: string;
  shape: number[];
}

/** A vision transformer layer's tensors (gated: the global transformer's gate_attn / gate_ffn). */
function visionLayerTensors(prefix: string, c: MllamaConfig, gated: boolean): MllamaTensorSpec[] {
  const v = c.vision;
  const D = v.hiddenSize;
  const out: MllamaTensorSpec[] = [];
  for (const p of ["q_proj", "k_proj", "v_proj", "o_proj"]) out.push({ name: `${prefix}.self_attn.${p}.weight`, shape: [D, D] });
  out.push(
    { name: `${prefix}.mlp.fc1.weight`, shape: [v.intermediateSize, D] },
    { name: `${prefix}.mlp.fc1.bias`, shape: [v.intermediateSize] },
    { name: `${prefix}.mlp.fc2.weight`, shape: [D, v.intermediateSize] },
    { name: `${prefix}.mlp.fc2.bias`, shape: [D] },
  );
  for (const n of ["input_layernorm", "post_attention_layernorm"]) out.push({ name: `${prefix}.${n}.weight`, shape: [D] }, { name: `${prefix}.${n}.bias`, shape: [D] });
  if (gated) out.push({ name: `${prefix}.gate_attn`, shape: [1] }, { name: `${prefix}.gate_ffn`, shape: [1] });
  return out;
}

/** Every tensor the model reads, canonical names, stored shapes (the patch conv as [D, C, p, p]). */
export function mllamaTensorTable(c: MllamaConfig): MllamaTensorSpec[] {
  const N = mllamaNames;
  const v = c.vision;
  const D = v.hiddenSize;
  const T = v.maxNumTiles;
  const P = v.tokensPerTile;
  const arRows = v.aspectRatios.length + 1;
  const out: MllamaTensorSpec[] = [
    { name: N.patchEmbedding, shape: [D, v.numChannels, v.patchSize, v.patchSize] },
    { name: N.classEmbedding, shape: [D] },
    { name: N.positionEmbedding, shape: [P, D] },
    { name: N.positionGate, shape: [1] },
    { name: N.tileEmbedding, shape: [arRows, T * P * D] },
    { name: N.preTileEmbedding, shape: [arRows, T * D] },
    { name: N.preTileGate, shape: [1] },
    { name: N.postTileEmbedding, shape: [arRows, T * D] },
    { name: N.postTileGate, shape: [1] },
    { name: `${N.layernormPre}.weight`, shape: [D] },
    { name: `${N.layernormPre}.bias`, shape: [D] },
    { name: `${N.layernormPost}.weight`, shape: [D] },
    { name: `${N.layernormPost}.bias`, shape: [D] },
  ];
  for (let i = 0; i < v.numLayers; i++) out.push(...visionLayerTensors(N.localLayer(i), c, false));
  for (let i = 0; i < v.numGlobalLayers; i++) out.push(...visionLayerTensors(N.globalLayer(i), c, true));
  out.push({ name: `${N.projector}.weight`, shape: [c.text.hiddenSize, v.outputDim] }, { name: `${N.projector}.bias`, shape: [c.text.hiddenSize] });
  for (const s of decoderTensorTable(c.text)) out.push({ name: s.name, shape: s.shape });
  return out;
}
