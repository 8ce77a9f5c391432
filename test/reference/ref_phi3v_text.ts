// Phi-3.5-vision reference, text side (PHI3V.md §5 merge, §6 decoder): embedding merge at image
// positions, the Phi-3 decoder (fused qkv_proj / gate_up_proj, RMSNorm, GQA in repeat_interleave
// order, eager causal mask with the config's sliding window) with su/longrope rotary and a KV
// cache whose keys keep the factors of the pass that produced them.
import { attendOne, f32, linear, rmsNorm, silu } from "./ref_math.ts";
import type { RefPhi3VConfig, RefPhi3VWeights } from "./ref_phi3v_model.ts";

/** Processor ids (-1e9 < id < 0) and the runtime's `<|image|>` id both mark image positions. */
export function isImagePosition(config: RefPhi3VConfig, id: number): boolean {
  return (id < 0 && id > -1e9) || id === config.imageTokenId;
}

export type RopeFactors = "short" | "long";

/** §6: the factors a pass uses whose key length (cache + new tokens) is T. */
export function factorsForLength(config: RefPhi3VConfig, keyLength: number): RopeFactors {
  return keyLength > config.rope.originalMax ? "long" : "short";
}

/** inv_freq[j] = 1 / (ext[j] · theta^(2j/hd)) in f32 steps (plain RoPE: ext = 1). */
export function phi3vInvFreq(config: RefPhi3VConfig, factors: RopeFactors): Float32Array {
  const hd = config.headDim;
  const r = config.rope;
  const ext = r.type === null ? null : factors === "long" ? r.longFactor : r.shortFactor;
  const out = new Float32Array(hd / 2);
  for (let j = 0; j < hd / 2; j++) {
    const pw = f32(r.theta ** f32((2 * j) / hd));
    out[j] = ext ? f32(1 / f32(f32(ext[j]) * pw)) : f32(1 / pw);
  }
  return out;
}

/**
 * Embeds ids; image positions look up row 0 (the processor's clamp; features overwrite them).
 * `plain` embeds every id as itself (generated tokens: a generated 32044 is a token).
 */
export function embedIds(config: RefPhi3VConfig, weights: RefPhi3VWeights, ids: readonly number[], plain = false): Float32Array {
  const H = config.hidden;
  const out = new Float32Array(ids.length * H);
  ids.forEach((id, t) => {
    const row = !plain && isImagePosition(config, id) ? 0 : id;
    if (row < 0 || row >= config.vocab) throw new Error(`reference: token id ${id} outside the vocabulary`);
    out.set(weights.embed.subarray(row * H, (row + 1) * H), t * H);
  });
  return out;
}

/**
 * Writes the images' projected features (concatenated in image order) into the image positions
 * in sequence order; their total length must equal the number of image positions.
 */
export function mergeImageFeatures(config: RefPhi3VConfig, ids: readonly number[], embeds: Float32Array, features: readonly Float32Array[]): Float32Array {
  const H = config.hidden;
  const positions = ids.flatMap((id, t) => (isImagePosition(config, id) ? [t] : []));
  const total = features.reduce((n, f) => n + f.length / H, 0);
  if (positions.length !== total) throw new Error(`reference: ${positions.length} image positions but ${total} image feature rows`);
  let p = 0;
  for (const f of features) {
    for (let r = 0; r < f.length / H; r++) embeds.set(f.subarray(r * H, (r + 1) * H), positions[p++] * H);
  }
  return embeds;
}

/** Keys and values per layer, per kv head, per position (each [hd]). */
export class RefPhi3VCache {
  keys: Float32Array[][][];
  values: Float32Array[][][];
  constructor(layers: number, kvHeads: number) {
    this.keys = Array.from({ length: layers }, () => Array.from({ length: kvHeads }, () => []));
    this.values = Array.from({ length: layers }, () => Array.from({ length: kvHeads }, () => []));
  }
  get length(): number {
    return this.keys[0]?.[0]?.length ?? 0;
  }
}

/** cos/sin (hd each, [θ, θ] then × s) of position p. */
function rotary(config: RefPhi3VConfig, invFreq: Float32Array, p: number): { cos: Float32Array; sin: Float32Array } {
  const hd = config.headDim;
  const s = config.rope.attentionScaling;
  const cos = new Float32Array(hd);
  const sin = new Float32Array(hd);
  for (let j = 0; j < hd / 2; j++) {
    const theta = f32(p * invFreq[j]);
    cos[j] = cos[j + hd / 2] = f32(f32(Math.cos(theta)) * s);
    sin[j] = sin[j + hd / 2] = f32(f32(Math.sin(theta)) * s);
  }
  return { cos, sin };
}

/** x·cos + rotate_half(x)·sin on one head vector. */
function rotate(x: Float32Array, cos: Float32Array, sin: Float32Array): Float32Array {
  const hd = x.length;
  const half = hd / 2;
  const out = new Float32Array(hd);
  for (let d = 0; d < hd; d++) {
    const rot = d < half ? -x[d + half] : x[d - half];
    out[d] = f32(f32(x[d] * cos[d]) + f32(rot * sin[d]));
  }
  return out;
}

/**
 * One pass of the decoder over embeds [T, H] at positions cache.length … cache.length + T − 1,
 * appending to the cache; the factors are chosen by this pass's key length (cache + T) unless
 * forced. Returns the last position's logits [vocab].
 */
export function decoderForward(config: RefPhi3VConfig, weights: RefPhi3VWeights, embeds: Float32Array, cache: RefPhi3VCache, factors?: RopeFactors): Float32Array {
  const H = config.hidden;
  const T = embeds.length / H;
  const p0 = cache.length;
  const hd = config.headDim;
  const nh = config.heads;
  const nkv = config.kvHeads;
  const group = nh / nkv;
  const invFreq = phi3vInvFreq(config, factors ?? factorsForLength(config, p0 + T));
  const rot = Array.from({ length: T }, (_, t) => rotary(config, invFreq, p0 + t));
  const window = config.slidingWindow;
  const scale = 1 / Math.sqrt(hd);
  const x = Float32Array.from(embeds);
  for (let l = 0; l < config.layers; l++) {
    const w = weights.layers[l];
    const h = rmsNorm(x, T, H, w.inputNorm, config.rmsNormEps);
    const qkv = linear(h, T, w.qkv);
    const width = (nh + 2 * nkv) * hd;
    const queries: Float32Array[][] = [];
    for (let t = 0; t < T; t++) {
      const row = qkv.subarray(t * width, (t + 1) * width);
      const { cos, sin } = rot[t];
      queries.push(Array.from({ length: nh }, (_, hh) => rotate(row.subarray(hh * hd, (hh + 1) * hd), cos, sin)));
      for (let kh = 0; kh < nkv; kh++) {
        cache.keys[l][kh].push(rotate(row.subarray((nh + kh) * hd, (nh + kh + 1) * hd), cos, sin));
        cache.values[l][kh].push(row.slice((nh + nkv + kh) * hd, (nh + nkv + kh + 1) * hd));
      }
    }
    const attn = new Float32Array(T * nh * hd);
    for (let t = 0; t < T; t++) {
      const p = p0 + t;
      // Causal, and keys more than `window` positions back are masked (PHI3V.md §1, eager mask).
      const first = window === null ? 0 : Math.max(0, p - window);
      for (let hh = 0; hh < nh; hh++) {
        const kh = Math.floor(hh / group);
        attendOne(queries[t][hh], cache.keys[l][kh].slice(first, p + 1), cache.values[l][kh].slice(first, p + 1), scale, attn, (t * nh + hh) * hd);
      }
    }
    const o = linear(attn, T, w.o);
    for (let i = 0; i < x.length; i++) x[i] = f32(x[i] + o[i]);
    const h2 = rmsNorm(x, T, H, w.postNorm, config.rmsNormEps);
    const gu = linear(h2, T, w.gateUp);
    const I = config.intermediate;
    const act = new Float32Array(T * I);
    for (let t = 0; t < T; t++) {
      for (let i = 0; i < I; i++) act[t * I + i] = f32(gu[t * 2 * I + I + i] * f32(silu(gu[t * 2 * I + i])));
    }
    const d = linear(act, T, w.down);
    for (let i = 0; i < x.length; i++) x[i] = f32(x[i] + d[i]);
  }
  const last = rmsNorm(x.subarray((T - 1) * H), 1, H, weights.norm, config.rmsNormEps);
  return linear(last, 1, weights.lmHead);
}
