// Connector of the CPU reference of Idefics2 (Idefics2Connector: modality projection MLP, then
// Idefics2PerceiverResampler; IDEFICS2.md §7). f32 storage, f64 accumulation. Shares no code with src/.

import { activation, attendOne, f32, linear, rmsNorm, type Linear } from "./ref_math.ts";
import type { RefIdefics2Config, RefIdefics2Weights } from "./ref_idefics2_model.ts";

/** Idefics2MLP: down(act(gate(x)) * up(x)). */
function gatedMlp(x: Float32Array, rows: number, gate: Linear, up: Linear, down: Linear, act: (v: number) => number): Float32Array {
  const g = linear(x, rows, gate);
  const u = linear(x, rows, up);
  const prod = new Float32Array(g.length);
  for (let i = 0; i < g.length; i++) prod[i] = f32(act(g[i])) * u[i];
  return linear(prod, rows, down);
}

/** §7.1: [S, D] vision states -> [S, H] with the text hidden_act. */
export function modalityProjection(c: RefIdefics2Config, w: RefIdefics2Weights, x: Float32Array, rows: number): Float32Array {
  return gatedMlp(x, rows, w.projGate, w.projUp, w.projDown, activation(c.text.hiddenAct));
}

/**
 * §7.2 for one image: context [S, H] (every patch), keep [S] (valid patches) -> [L, H].
 * Keys/values are concat(RMSNorm(context), RMSNorm(latents)) (context first); the original context
 * is re-normalized in every layer; masked context keys (finfo.min) get weight exactly 0, so they
 * are left out; all latents are visible.
 */
export function perceiverResampler(c: RefIdefics2Config, w: RefIdefics2Weights, context: Float32Array, keep: Uint8Array): Float32Array {
  const pc = c.perceiver;
  const H = pc.hiddenSize;
  const S = keep.length;
  const L = pc.nLatents;
  const ph = pc.headDim;
  const groups = pc.numHeads / pc.numKvHeads;
  if (!Number.isInteger(groups)) throw new Error(`reference: perceiver heads ${pc.numHeads} not a multiple of kv heads ${pc.numKvHeads}`);
  const act = activation(pc.hiddenAct);
  const qDim = pc.numHeads * ph;
  const kvDim = pc.numKvHeads * ph;
  const scale = ph ** -0.5;
  const validContext: number[] = [];
  for (let s = 0; s < S; s++) if (keep[s]) validContext.push(s);

  let lat = Float32Array.from(w.latents);
  for (const layer of w.perceiverLayers) {
    const ln = rmsNorm(lat, L, H, layer.inputLatentsNorm, pc.rmsNormEps);
    const cn = rmsNorm(context, S, H, layer.inputContextNorm, pc.rmsNormEps);
    const kvIn = new Float32Array((S + L) * H);
    kvIn.set(cn, 0);
    kvIn.set(ln, S * H);
    const q = linear(ln, L, layer.q);
    const k = linear(kvIn, S + L, layer.k);
    const v = linear(kvIn, S + L, layer.v);
    const visible = [...validContext, ...Array.from({ length: L }, (_, i) => S + i)];
    const attn = new Float32Array(L * qDim);
    for (let h = 0; h < pc.numHeads; h++) {
      const g = Math.floor(h / groups);
      const keys = visible.map((j) => k.subarray(j * kvDim + g * ph, j * kvDim + (g + 1) * ph));
      const values = visible.map((j) => v.subarray(j * kvDim + g * ph, j * kvDim + (g + 1) * ph));
      for (let i = 0; i < L; i++) attendOne(q.subarray(i * qDim + h * ph, i * qDim + (h + 1) * ph), keys, values, scale, attn, i * qDim + h * ph);
    }
    const o = linear(attn, L, layer.o);
    lat = lat.map((val, i) => val + o[i]);
    const m = rmsNorm(lat, L, H, layer.postAttentionNorm, pc.rmsNormEps);
    const mlp = gatedMlp(m, L, layer.gate, layer.up, layer.down, act);
    lat = lat.map((val, i) => val + mlp[i]);
  }
  return rmsNorm(lat, L, H, w.perceiverNorm, pc.rmsNormEps);
}

/** §7 for all images: vision states [N, S, D] + patch mask [N, S] -> [N*L, H] in image order. */
export function connectorForward(c: RefIdefics2Config, w: RefIdefics2Weights, hidden: Float32Array, patchMask: Uint8Array, n: number): Float32Array {
  const D = c.vision.hiddenSize;
  const H = c.text.hiddenSize;
  const L = c.perceiver.nLatents;
  const S = patchMask.length / n;
  const out = new Float32Array(n * L * H);
  for (let i = 0; i < n; i++) {
    const ctx = modalityProjection(c, w, hidden.subarray(i * S * D, (i + 1) * S * D), S);
    out.set(perceiverResampler(c, w, ctx, patchMask.subarray(i * S, (i + 1) * S)), i * L * H);
  }
  return out;
}
