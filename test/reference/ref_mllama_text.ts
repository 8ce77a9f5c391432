// Text side of the Llama 3.2 Vision CPU reference: the cross-attention mask from token ids
// (MLLAMA.md §6; processing_mllama.py get_cross_attention_token_mask and
// convert_sparse_cross_attention_mask_to_dense, modeling_mllama.py _prepare_cross_attention_mask)
// and the decoder (§7, §8; MllamaTextModel with self- and cross-attention layers, the cache keeping
// cross K/V computed once). f32 storage, f64 accumulation (ref_math.ts). Masked keys (float32.min)
// are left out of softmax: their weight is exactly 0 in f32.

import { refRopeParameters } from "./ref_decoder.ts";
import { activation, applyRotaryInPlace, attendOne, f32, linear, rmsNorm, type Linear } from "./ref_math.ts";
import type { RefMllamaConfig, RefMllamaCrossLayer, RefMllamaWeights } from "./ref_mllama_model.ts";
import { gateTanh } from "./ref_mllama_vision.ts";

// ---------------------------------------------------------------- §6 cross-attention mask

/**
 * get_cross_attention_token_mask: per image [start, end) over token positions. Consecutive images
 * (a span one token long) take over the end of the following image's span, walking backwards.
 */
export function crossAttentionSpans(ids: readonly number[], imageTokenId: number): [number, number][] {
  const locs: number[] = [];
  ids.forEach((id, i) => { if (id === imageTokenId) locs.push(i); });
  const spans: [number, number][] = locs.map((loc, k) => [loc, k + 1 < locs.length ? locs[k + 1] : ids.length]);
  let lastEnd = spans.length > 0 ? spans[spans.length - 1][1] : 0;
  for (let k = spans.length - 1; k >= 0; k--) {
    if (spans[k][0] === spans[k][1] - 1) spans[k][1] = lastEnd;
    lastEnd = spans[k][1];
  }
  return spans;
}

/** §6.2 dense mask M [S, numImages, T]: 1 if token s is in image i's span and t < numTiles(i). */
export function crossAttentionDenseMask(ids: readonly number[], imageTokenId: number, numTilesPerImage: readonly number[], maxTiles: number): Uint8Array {
  const spans = crossAttentionSpans(ids, imageTokenId);
  const N = numTilesPerImage.length;
  if (spans.length !== N) throw new Error(`reference: ${spans.length} image tokens for ${N} images`);
  const S = ids.length;
  const out = new Uint8Array(S * N * maxTiles);
  spans.forEach(([start, end], i) => {
    for (let s = start; s < Math.min(end, S); s++) for (let t = 0; t < numTilesPerImage[i]; t++) out[(s * N + i) * maxTiles + t] = 1;
  });
  return out;
}

/**
 * §6.3-4 per token row: which vision keys it attends (image, tile, patch order; repeat of M over P)
 * and r (1 if the row has any 1). Rows with r = 0 attend every key.
 */
export interface CrossAttentionRow {
  allowed: Uint8Array;
  r: 0 | 1;
}

export function crossAttentionRows(dense: Uint8Array, seqLen: number, numImages: number, maxTiles: number, numPatches: number): CrossAttentionRow[] {
  const rows: CrossAttentionRow[] = [];
  const keys = numImages * maxTiles * numPatches;
  for (let s = 0; s < seqLen; s++) {
    const allowed = new Uint8Array(keys);
    let any = false;
    for (let it = 0; it < numImages * maxTiles; it++) {
      if (dense[s * numImages * maxTiles + it]) {
        any = true;
        allowed.fill(1, it * numPatches, (it + 1) * numPatches);
      }
    }
    if (!any) allowed.fill(1);
    rows.push({ allowed, r: any ? 1 : 0 });
  }
  return rows;
}

// ---------------------------------------------------------------- decoder

/** Self-attention K/V per position (post-rope) and cross K/V computed once (§8). */
export class RefMllamaCache {
  readonly selfKeys: Float32Array[][];
  readonly selfValues: Float32Array[][];
  /** Per layer: [keys][kvHeads*headDim] after k_norm / v_proj, or null before the first cross forward. */
  readonly crossKeys: (Float32Array[] | null)[];
  readonly crossValues: (Float32Array[] | null)[];
  /** The last prompt row of the cross mask; decode steps reuse it (§6.5). */
  lastRow: CrossAttentionRow | null = null;
  /** How often cross K/V were computed (test hook: once per layer per request). */
  crossComputations = 0;
  constructor(layers: number) {
    this.selfKeys = Array.from({ length: layers }, () => []);
    this.selfValues = Array.from({ length: layers }, () => []);
    this.crossKeys = Array.from({ length: layers }, () => null);
    this.crossValues = Array.from({ length: layers }, () => null);
  }
  /** Positions seen so far. */
  length = 0;
}

/** Llama 3 inv_freq of the text config (op by op as modeling_rope_utils, via ref_decoder.ts). */
export function mllamaInvFreq(c: RefMllamaConfig): Float32Array {
  return refRopeParameters(c.text.rope, 1).invFreq;
}

export function embedTokens(c: RefMllamaConfig, w: RefMllamaWeights, ids: readonly number[]): Float32Array {
  const H = c.text.hiddenSize;
  const out = new Float32Array(ids.length * H);
  ids.forEach((id, i) => {
    if (!(id >= 0 && id < w.embedRows)) throw new Error(`reference: token id ${id} outside embed_tokens (${w.embedRows} rows)`);
    out.set(w.embedTokens.subarray(id * H, (id + 1) * H), i * H);
  });
  return out;
}

function mlp(c: RefMllamaConfig, layer: { gate: Linear; up: Linear; down: Linear }, h: Float32Array, rows: number): Float32Array {
  const act = activation(c.text.hiddenAct);
  const gate = linear(h, rows, layer.gate);
  const up = linear(h, rows, layer.up);
  return linear(gate.map((g, i) => f32(act(g)) * up[i]), rows, layer.down);
}

/** Per-head RMSNorm over head_dim (q_norm / k_norm). */
function headNorm(x: Float32Array, rows: number, heads: number, headDim: number, weight: Float32Array, eps: number): Float32Array {
  return rmsNorm(x, rows * heads, headDim, weight, eps);
}

function crossKV(c: RefMllamaConfig, layer: RefMllamaCrossLayer, crossStates: Float32Array): { keys: Float32Array[]; values: Float32Array[] } {
  const t = c.text;
  const H = t.hiddenSize;
  const kd = t.numKvHeads * t.headDim;
  const n = crossStates.length / H;
  const k = headNorm(linear(crossStates, n, layer.k), n, t.numKvHeads, t.headDim, layer.kNorm, t.rmsNormEps);
  const v = linear(crossStates, n, layer.v);
  return {
    keys: Array.from({ length: n }, (_, j) => k.subarray(j * kd, (j + 1) * kd)),
    values: Array.from({ length: n }, (_, j) => v.subarray(j * kd, (j + 1) * kd)),
  };
}

/**
 * Runs L new tokens (embeddings x [L, H]) at positions cache.length.. through the decoder.
 * `cross` null: text-only request, cross layers skipped (§6.6). Otherwise `rows[i]` is the cross
 * mask row of new token i and `states` the projected vision states (used only while the cache has
 * no cross K/V yet). Returns the final-norm hidden state of the last new token [H].
 */
export function textForward(
  c: RefMllamaConfig, w: RefMllamaWeights, x0: Float32Array, cache: RefMllamaCache,
  cross: { states: Float32Array | null; rows: CrossAttentionRow[] } | null,
): Float32Array {
  const t = c.text;
  const H = t.hiddenSize;
  const hd = t.headDim;
  const qd = t.numHeads * hd;
  const kd = t.numKvHeads * hd;
  const groups = t.numHeads / t.numKvHeads;
  const L = x0.length / H;
  const past = cache.length;
  const invFreq = mllamaInvFreq(c);
  const rot = Array.from({ length: L }, (_, i) => {
    const cos = new Float32Array(hd);
    const sin = new Float32Array(hd);
    for (let d = 0; d < hd; d++) {
      const angle = f32(invFreq[d % (hd / 2)] * (past + i));
      cos[d] = Math.cos(angle);
      sin[d] = Math.sin(angle);
    }
    return { cos, sin };
  });

  let x = x0;
  w.layers.forEach((layer, li) => {
    if (layer.kind === "cross") {
      if (cross === null) return;
      if (cache.crossKeys[li] === null) {
        if (!cross.states) throw new Error("reference: cross layer without vision states or cached cross K/V");
        const kv = crossKV(c, layer, cross.states);
        cache.crossKeys[li] = kv.keys;
        cache.crossValues[li] = kv.values;
        cache.crossComputations++;
      }
      const keys = cache.crossKeys[li]!;
      const values = cache.crossValues[li]!;
      const h = rmsNorm(x, L, H, layer.inputNorm, t.rmsNormEps);
      const q = headNorm(linear(h, L, layer.q), L, t.numHeads, hd, layer.qNorm, t.rmsNormEps);
      const attn = new Float32Array(L * qd);
      for (let i = 0; i < L; i++) {
        const allowed = cross.rows[i].allowed;
        if (allowed.length !== keys.length) throw new Error(`reference: cross mask has ${allowed.length} keys, vision states ${keys.length}`);
        for (let a = 0; a < t.numHeads; a++) {
          const g = Math.floor(a / groups);
          const ks: Float32Array[] = [];
          const vs: Float32Array[] = [];
          for (let j = 0; j < keys.length; j++) {
            if (!allowed[j]) continue;
            ks.push(keys[j].subarray(g * hd, (g + 1) * hd));
            vs.push(values[j].subarray(g * hd, (g + 1) * hd));
          }
          attendOne(q.subarray(i * qd + a * hd, i * qd + (a + 1) * hd), ks, vs, hd ** -0.5, attn, i * qd + a * hd);
        }
      }
      const o = linear(attn, L, layer.o);
      const ga = gateTanh(layer.attnGate);
      // transformers: the attention output is NOT multiplied by r (§7); only the MLP is.
      const mid = x.map((val, i) => val + f32(ga * o[i]));
      const m = mlp(c, layer, rmsNorm(mid, L, H, layer.postNorm, t.rmsNormEps), L);
      const gm = gateTanh(layer.mlpGate);
      x = mid.map((val, i) => val + f32(gm * f32(cross.rows[Math.floor(i / H)].r * m[i])));
      return;
    }
    const h = rmsNorm(x, L, H, layer.inputNorm, t.rmsNormEps);
    const q = linear(h, L, layer.q);
    const k = linear(h, L, layer.k);
    const v = linear(h, L, layer.v);
    for (let i = 0; i < L; i++) {
      for (let a = 0; a < t.numHeads; a++) applyRotaryInPlace(q, i * qd + a * hd, hd, rot[i].cos, rot[i].sin);
      for (let a = 0; a < t.numKvHeads; a++) applyRotaryInPlace(k, i * kd + a * hd, hd, rot[i].cos, rot[i].sin);
      cache.selfKeys[li].push(k.slice(i * kd, (i + 1) * kd));
      cache.selfValues[li].push(v.slice(i * kd, (i + 1) * kd));
    }
    const attn = new Float32Array(L * qd);
    for (let a = 0; a < t.numHeads; a++) {
      const g = Math.floor(a / groups);
      for (let i = 0; i < L; i++) {
        const ks: Float32Array[] = [];
        const vs: Float32Array[] = [];
        for (let j = 0; j <= past + i; j++) {
          ks.push(cache.selfKeys[li][j].subarray(g * hd, (g + 1) * hd));
          vs.push(cache.selfValues[li][j].subarray(g * hd, (g + 1) * hd));
        }
        attendOne(q.subarray(i * qd + a * hd, i * qd + (a + 1) * hd), ks, vs, hd ** -0.5, attn, i * qd + a * hd);
      }
    }
    const o = linear(attn, L, layer.o);
    const mid = x.map((val, i) => val + o[i]);
    const m = mlp(c, layer, rmsNorm(mid, L, H, layer.postNorm, t.rmsNormEps), L);
    x = mid.map((val, i) => val + m[i]);
  });
  cache.length += L;
  return rmsNorm(x.subarray((L - 1) * H), 1, H, w.norm, t.rmsNormEps);
}

/** lm_head on one final hidden state: [vocab_size] f32 logits. */
export function lmHeadRow(c: RefMllamaConfig, w: RefMllamaWeights, h: Float32Array): Float32Array {
  const H = c.text.hiddenSize;
  const V = c.text.vocabSize;
  const out = new Float32Array(V);
  for (let r = 0; r < V; r++) {
    let acc = 0;
    const o = r * H;
    for (let d = 0; d < H; d++) acc += h[d] * w.lmHead[o + d];
    out[r] = acc;
  }
  return out;
}
