// Mistral decoder of the CPU reference of Idefics2 (text_model = MistralModel, lm_head;
// IDEFICS2.md §8, §9). Takes input embeddings (image rows already merged), runs a chunk of new
// positions against a KV cache, sliding window on absolute positions. f32 storage, f64
// accumulation (as ref_math.ts). Shares no code with src/.

import { activation, applyRotaryInPlace, attendOne, f32, linear, rmsNorm, ropeInvFreq } from "./ref_math.ts";
import type { RefIdefics2Config, RefIdefics2Weights } from "./ref_idefics2_model.ts";

/** Per layer: rotated keys and values, one [nkv*hd] row per cached position. */
export class RefIdefics2Cache {
  readonly keys: Float32Array[][];
  readonly values: Float32Array[][];
  constructor(numLayers: number) {
    this.keys = Array.from({ length: numLayers }, () => []);
    this.values = Array.from({ length: numLayers }, () => []);
  }
  get length(): number {
    return this.keys[0]?.length ?? 0;
  }
}

/** embed_tokens lookup: ids -> [T, H]. */
export function embedIds(c: RefIdefics2Config, w: RefIdefics2Weights, ids: number[]): Float32Array {
  const H = c.text.hiddenSize;
  const out = new Float32Array(ids.length * H);
  ids.forEach((id, i) => {
    if (!(Number.isInteger(id) && id >= 0 && id < c.text.vocabSize)) throw new Error(`reference: token id ${id} out of range`);
    out.set(w.embedTokens.subarray(id * H, (id + 1) * H), i * H);
  });
  return out;
}

/** §8 masked_scatter: the k-th `<image>` position takes row k of imageFeatures [N*L, H]. */
export function mergeImageFeatures(c: RefIdefics2Config, ids: number[], embeds: Float32Array, imageFeatures: Float32Array | null): Float32Array {
  const H = c.text.hiddenSize;
  const slots: number[] = [];
  ids.forEach((id, i) => { if (id === c.imageTokenId) slots.push(i); });
  const rows = imageFeatures ? imageFeatures.length / H : 0;
  if (slots.length !== rows) throw new Error(`reference: ${slots.length} image tokens but ${rows} image feature rows`);
  if (rows === 0) return embeds;
  const out = Float32Array.from(embeds);
  slots.forEach((pos, k) => out.set(imageFeatures!.subarray(k * H, (k + 1) * H), pos * H));
  return out;
}

/** cos/sin [hd] of absolute position t: ang = f32(f32(t) * inv_freq), duplicated halves. */
function ropeAt(invFreq: Float32Array, t: number): { cos: Float32Array; sin: Float32Array } {
  const half = invFreq.length;
  const cos = new Float32Array(2 * half);
  const sin = new Float32Array(2 * half);
  for (let i = 0; i < half; i++) {
    const ang = f32(f32(t) * invFreq[i]);
    cos[i] = cos[i + half] = Math.cos(ang);
    sin[i] = sin[i + half] = Math.sin(ang);
  }
  return { cos, sin };
}

/**
 * Runs T new positions (cache.length .. cache.length+T-1) given their input embeddings [T, H];
 * appends their keys/values to the cache. Returns the final-normed hidden states of the rows
 * from `from` on ([T-from, H]).
 */
export function textForward(c: RefIdefics2Config, w: RefIdefics2Weights, embeds: Float32Array, cache: RefIdefics2Cache, from = 0): Float32Array {
  const t = c.text;
  const H = t.hiddenSize;
  const hd = t.headDim;
  const T = embeds.length / H;
  if (!Number.isInteger(T) || T < 1) throw new Error(`reference: ${embeds.length} embedding values are not a positive multiple of ${H}`);
  const past = cache.length;
  const qDim = t.numHeads * hd;
  const kvDim = t.numKvHeads * hd;
  const groups = t.numHeads / t.numKvHeads;
  const act = activation(t.hiddenAct);
  const invFreq = ropeInvFreq(hd, t.ropeTheta);
  const rope = Array.from({ length: T }, (_, i) => ropeAt(invFreq, past + i));
  const window = t.slidingWindow;

  let x = Float32Array.from(embeds);
  for (let li = 0; li < t.numLayers; li++) {
    const layer = w.textLayers[li];
    const h = rmsNorm(x, T, H, layer.inputNorm, t.rmsNormEps);
    const q = linear(h, T, layer.q);
    const k = linear(h, T, layer.k);
    const v = linear(h, T, layer.v);
    for (let i = 0; i < T; i++) {
      for (let a = 0; a < t.numHeads; a++) applyRotaryInPlace(q, i * qDim + a * hd, hd, rope[i].cos, rope[i].sin);
      for (let a = 0; a < t.numKvHeads; a++) applyRotaryInPlace(k, i * kvDim + a * hd, hd, rope[i].cos, rope[i].sin);
      cache.keys[li].push(k.slice(i * kvDim, (i + 1) * kvDim));
      cache.values[li].push(v.slice(i * kvDim, (i + 1) * kvDim));
    }
    const attn = new Float32Array(T * qDim);
    for (let a = 0; a < t.numHeads; a++) {
      const g = Math.floor(a / groups);
      const keys = cache.keys[li].map((row) => row.subarray(g * hd, (g + 1) * hd));
      const values = cache.values[li].map((row) => row.subarray(g * hd, (g + 1) * hd));
      for (let i = 0; i < T; i++) {
        const qi = past + i;
        // Key j visible iff j <= qi and (no window or j > qi - window).
        const lo = window === null ? 0 : Math.max(0, qi - window + 1);
        attendOne(q.subarray(i * qDim + a * hd, i * qDim + (a + 1) * hd), keys.slice(lo, qi + 1), values.slice(lo, qi + 1), hd ** -0.5, attn, i * qDim + a * hd);
      }
    }
    const o = linear(attn, T, layer.o);
    x = x.map((val, i) => val + o[i]);
    const m = rmsNorm(x, T, H, layer.postAttentionNorm, t.rmsNormEps);
    const g = linear(m, T, layer.gate);
    const u = linear(m, T, layer.up);
    const prod = new Float32Array(g.length);
    for (let i = 0; i < g.length; i++) prod[i] = f32(act(g[i])) * u[i];
    const down = linear(prod, T, layer.down);
    x = x.map((val, i) => val + down[i]);
  }
  return rmsNorm(x.subarray(from * H), T - from, H, w.textNorm, t.rmsNormEps);
}

/** lm_head on one final hidden row [H] -> logits [vocab] (f64 dot, f32 result). */
export function lmHeadRow(c: RefIdefics2Config, w: RefIdefics2Weights, row: Float32Array): Float32Array {
  const { hiddenSize: H, vocabSize: V } = c.text;
  const out = new Float32Array(V);
  for (let t = 0; t < V; t++) {
    let acc = 0;
    const off = t * H;
    for (let d = 0; d < H; d++) acc += row[d] * w.lmHead[off + d];
    out[t] = acc;
  }
  return out;
}
