// Language model of the CPU reference: Qwen2VLTextModel (Qwen2 decoder with
// M-RoPE: Qwen2VLRotaryEmbedding + apply_multimodal_rotary_pos_emb) and lm_head.

import { activation, applyRotaryInPlace, attendOne, f32, linear, rmsNorm, ropeInvFreq } from "./ref_math.ts";
import type { RefModel, RefTextConfig } from "./ref_model.ts";

/**
 * Per-layer cache of rotated keys and of values, one Float32Array row
 * [numKvHeads * headDim] per cached position. `length` is the number of
 * positions cached so far (= the cache index of the next token).
 */
export class RefKVCache {
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

/**
 * Qwen2VLRotaryEmbedding + the section selection of apply_multimodal_rotary_pos_emb
 * for one token: returns cos/sin [headDim].
 *  - inv_freq = 1/theta^(arange(0, headDim, 2)/headDim)  (headDim/2 values, f32)
 *  - for each row r in (t, h, w): freqs_r = pos_r * inv_freq (f32), emb_r = cat(freqs_r, freqs_r)
 *  - mrope_section * 2 (list repetition: [s0, s1, s2, s0, s1, s2]) splits the
 *    headDim channels into 6 chunks; chunk i takes its values from row i % 3.
 */
export function mropeCosSin(tc: RefTextConfig, pos: [number, number, number], invFreq = ropeInvFreq(tc.headDim, tc.ropeTheta)): { cos: Float32Array; sin: Float32Array } {
  const hd = tc.headDim;
  const emb = pos.map((p) => {
    const row = new Float32Array(hd);
    for (let j = 0; j < hd / 2; j++) {
      row[j] = f32(p * invFreq[j]);
      row[j + hd / 2] = row[j];
    }
    return row;
  });
  const sections = [...tc.mropeSection, ...tc.mropeSection];
  const cos = new Float32Array(hd);
  const sin = new Float32Array(hd);
  let d = 0;
  sections.forEach((size, chunk) => {
    const source = emb[chunk % 3];
    for (let k = 0; k < size; k++, d++) {
      cos[d] = Math.cos(source[d]);
      sin[d] = Math.sin(source[d]);
    }
  });
  if (d !== hd) throw new Error(`mrope: sections cover ${d} of ${hd} channels`);
  return { cos, sin };
}

/** Embedding lookup: ids -> [L, hidden]. */
export function embedTokens(model: RefModel, ids: number[]): Float32Array {
  const h = model.config.text.hiddenSize;
  const out = new Float32Array(ids.length * h);
  ids.forEach((id, i) => {
    if (!(Number.isInteger(id) && id >= 0 && id < model.config.text.vocabSize)) throw new Error(`embed: token id ${id} out of range`);
    out.set(model.text.embedTokens.subarray(id * h, (id + 1) * h), i * h);
  });
  return out;
}

/**
 * lm_head on rows of final hidden states: [rows, hidden] -> [rows, vocab]; a
 * plain f64 dot per (row, vocab entry). The vocab loop is outermost so each
 * weight row is read from memory once for all rows.
 */
export function lmHead(model: RefModel, hidden: Float32Array, rows: number): Float32Array {
  const { hiddenSize: h, vocabSize: vocab } = model.config.text;
  const w = model.text.lmHead;
  const logits = new Float32Array(rows * vocab);
  for (let v = 0; v < vocab; v++) {
    const wOff = v * h;
    for (let r = 0; r < rows; r++) {
      const xOff = r * h;
      let acc = 0;
      for (let k = 0; k < h; k++) acc += hidden[xOff + k] * w[wOff + k];
      logits[r * vocab + v] = acc;
    }
  }
  return logits;
}

export interface TextForwardOptions {
  /** Return logits only for the last position (default: all positions). */
  lastOnly?: boolean;
  /** Return logits only for chunk positions >= this index (rows logitsFrom .. L-1). */
  logitsFrom?: number;
}

/**
 * Qwen2VLTextModel.forward + lm_head for a chunk of L new tokens.
 * inputsEmbeds [L, hidden]; positions [3][L] (t, h, w rows; from getRopeIndex
 * for a prompt, or i + ropeDelta on all rows for the token at cache index i).
 * With a cache, the chunk's keys/values are appended and the chunk attends
 * causally to everything cached before it (query at cache index c sees keys 0..c).
 * Returns logits [L, vocab] (or [1, vocab] with lastOnly, [L - logitsFrom, vocab] with logitsFrom).
 */
export function textForward(
  model: RefModel, inputsEmbeds: Float32Array, positions: number[][],
  kvCache: RefKVCache = new RefKVCache(model.config.text.numLayers), options: TextForwardOptions = {},
): Float32Array {
  const tc = model.config.text;
  const H = tc.hiddenSize;
  const hd = tc.headDim;
  const L = inputsEmbeds.length / H;
  if (!Number.isInteger(L) || L < 1) throw new Error(`text: inputsEmbeds length ${inputsEmbeds.length} is not a positive multiple of ${H}`);
  if (positions.length !== 3 || positions.some((row) => row.length !== L)) throw new Error("text: positions must be [3][L]");
  const past = kvCache.length;
  const nRep = tc.numHeads / tc.numKvHeads;
  const qDim = tc.numHeads * hd;
  const kvDim = tc.numKvHeads * hd;
  const scale = hd ** -0.5;
  const act = activation(tc.hiddenAct);

  const invFreq = ropeInvFreq(hd, tc.ropeTheta);
  const rope = Array.from({ length: L }, (_, i) =>
    mropeCosSin(tc, [positions[0][i], positions[1][i], positions[2][i]], invFreq));

  let x = Float32Array.from(inputsEmbeds);
  for (let li = 0; li < tc.numLayers; li++) {
    const layer = model.text.layers[li];
    // Self-attention block.
    const hNorm = rmsNorm(x, L, H, layer.inputNorm, tc.rmsNormEps);
    const q = linear(hNorm, L, layer.q);
    const k = linear(hNorm, L, layer.k);
    const v = linear(hNorm, L, layer.v);
    for (let i = 0; i < L; i++) {
      for (let h = 0; h < tc.numHeads; h++) applyRotaryInPlace(q, i * qDim + h * hd, hd, rope[i].cos, rope[i].sin);
      for (let h = 0; h < tc.numKvHeads; h++) applyRotaryInPlace(k, i * kvDim + h * hd, hd, rope[i].cos, rope[i].sin);
      kvCache.keys[li].push(k.slice(i * kvDim, (i + 1) * kvDim));
      kvCache.values[li].push(v.slice(i * kvDim, (i + 1) * kvDim));
    }
    const attn = new Float32Array(L * qDim);
    for (let h = 0; h < tc.numHeads; h++) {
      const kvHead = Math.floor(h / nRep); // repeat_kv: query head h uses kv head h // n_rep
      const keys = kvCache.keys[li].map((row) => row.subarray(kvHead * hd, (kvHead + 1) * hd));
      const values = kvCache.values[li].map((row) => row.subarray(kvHead * hd, (kvHead + 1) * hd));
      for (let i = 0; i < L; i++) {
        const visible = past + i + 1; // causal: keys at cache indices 0 .. past + i
        attendOne(q.subarray(i * qDim + h * hd, i * qDim + (h + 1) * hd), keys.slice(0, visible), values.slice(0, visible), scale, attn, i * qDim + h * hd);
      }
    }
    const o = linear(attn, L, layer.o);
    const afterAttn = new Float32Array(L * H);
    for (let i = 0; i < L * H; i++) afterAttn[i] = x[i] + o[i];
    x = afterAttn;
    // MLP block: down(act(gate(h)) * up(h)).
    const h2 = rmsNorm(x, L, H, layer.postAttentionNorm, tc.rmsNormEps);
    const gate = linear(h2, L, layer.gate);
    const up = linear(h2, L, layer.up);
    const prod = new Float32Array(gate.length);
    for (let i = 0; i < gate.length; i++) prod[i] = f32(act(gate[i])) * up[i];
    const down = linear(prod, L, layer.down);
    const afterMlp = new Float32Array(L * H);
    for (let i = 0; i < L * H; i++) afterMlp[i] = x[i] + down[i];
    x = afterMlp;
  }
  const final = rmsNorm(x, L, H, model.text.norm, tc.rmsNormEps);
  const from = options.lastOnly ? L - 1 : (options.logitsFrom ?? 0);
  if (!(from >= 0 && from < L)) throw new Error(`text: logitsFrom ${from} outside 0..${L - 1}`);
  return lmHead(model, final.subarray(from * H), L - from);
}
