// Idefics2's connector (IDEFICS2.md §7): the modality projection (SwiGLU MLP with the TEXT
// intermediate size) over every valid patch, then the perceiver resampler per crop, all crops in
// one pass: latents [crops * L, H]; each layer RMS-normalizes the latents and the ORIGINAL context,
// lays out [context_c | latents_c] per crop as keys/values (context first), and lets crop c's
// latent queries see only its own block (a "ranges" mask). Only valid patches are passed, so no
// key mask is needed. GQA with the perceiver's own head dim; scale head_dim^-0.5; no positions.
// Records into a Recorder; submits nothing.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";
import { allocTensor } from "../../gpu/transfer.ts";
import { geluTanhMulFused, siluMulFused } from "../../ops/activation.ts";
import { attentionPrefill } from "../../ops/attention.ts";
import { linear } from "../../ops/linear.ts";
import { rmsNorm } from "../../ops/rms_norm.ts";
import type { Idefics2PerceiverConfig } from "./config.ts";
import type { Idefics2ConnectorWeights } from "./weights.ts";

export type PerceiverActivation = "silu" | "gelu_tanh";

/** The perceiver's hidden_act mapped onto a gated-MLP kernel. */
export function perceiverActivation(name: string): PerceiverActivation {
  if (name === "silu" || name === "swish") return "silu";
  if (name === "gelu_pytorch_tanh" || name === "gelu_new" || name === "gelu_fast") return "gelu_tanh";
  throw new WebvlmError("unsupported_feature", `idefics2: perceiver hidden_act ${JSON.stringify(name)} is not supported (silu, gelu_pytorch_tanh)`);
}

/**
 * Key ranges of the latent queries, u32 [crops * L, 2]: crop c's block [context_c | latents_c]
 * starts after the blocks of the crops before it. `counts`: valid patches per crop.
 */
export function perceiverKeyRanges(counts: readonly number[], numLatents: number): Uint32Array {
  const r = new Uint32Array(2 * counts.length * numLatents);
  let base = 0;
  counts.forEach((n, c) => {
    for (let i = 0; i < numLatents; i++) {
      r[2 * (c * numLatents + i)] = base;
      r[2 * (c * numLatents + i) + 1] = base + n + numLatents;
    }
    base += n + numLatents;
  });
  return r;
}

/**
 * vision f32 [n, D] (crops' valid patches concatenated, `counts` per crop) -> image features f32
 * [crops * L, H], crop-major. `ranges` = perceiverKeyRanges(counts, L), uploaded by the caller.
 * `projectionRows`: most rows per modality-projection pass (see modalityProjection). The caller
 * releases the result.
 */
export function connectorForward(
  rec: Recorder,
  cfg: Idefics2PerceiverConfig,
  w: Idefics2ConnectorWeights,
  vision: Tensor,
  counts: readonly number[],
  ranges: Tensor,
  projectionRows = Infinity,
): Tensor {
  const ctx = rec.ctx;
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));
  const H = cfg.hiddenSize;
  const L = cfg.numLatents;
  const crops = counts.length;
  const n = counts.reduce((a, b) => a + b, 0);
  if (vision.shape[0] !== n) throw new WebvlmError("internal", `idefics2 connector: ${vision.shape[0]} vision rows for ${n} patches`);
  const gated = perceiverActivation(cfg.hiddenAct) === "silu" ? siluMulFused : geluTanhMulFused;
  const rowBytes = H * 4;

  const context = modalityProjection(rec, w, vision, projectionRows);

  // Every crop starts from the same learned latents.
  const lat = allocTensor(ctx, [crops * L, H], "f32", "perceiver.latents");
  for (let c = 0; c < crops; c++) rec.copy(w.latents, { buffer: lat.buffer, offset: lat.offset + c * L * rowBytes, size: L * rowBytes });

  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const kvRows = n + crops * L;
  for (const lw of w.layers) {
    const cn = rmsNorm(rec, context, lw.inputContextNorm, cfg.rmsNormEps);
    const ln = rmsNorm(rec, lat, lw.inputLatentsNorm, cfg.rmsNormEps);
    // [context_c | latents_c] per crop: buffer copies, no kernel.
    const kvIn = allocTensor(ctx, [kvRows, H], "f32", "perceiver.kv_in");
    let src = 0;
    let dst = 0;
    counts.forEach((count, c) => {
      rec.copy(
        { buffer: cn.buffer, offset: cn.offset + src * rowBytes, size: count * rowBytes },
        { buffer: kvIn.buffer, offset: kvIn.offset + dst * rowBytes, size: count * rowBytes },
      );
      rec.copy(
        { buffer: ln.buffer, offset: ln.offset + c * L * rowBytes, size: L * rowBytes },
        { buffer: kvIn.buffer, offset: kvIn.offset + (dst + count) * rowBytes, size: L * rowBytes },
      );
      src += count;
      dst += count + L;
    });
    free(cn);
    const kv = linear(rec, kvIn, lw.kv);
    free(kvIn);
    const q = linear(rec, ln, lw.q);
    free(ln);
    const attn = attentionPrefill(
      rec,
      { tensor: q },
      { tensor: kv, rowStride: 2 * kvDim, colOffset: 0 },
      { tensor: kv, rowStride: 2 * kvDim, colOffset: kvDim },
      { numHeads: cfg.numHeads, numKvHeads: cfg.numKvHeads, headDim: cfg.headDim, mask: { kind: "ranges", ranges, kvLength: kvRows } },
    );
    free(q, kv);
    if (attn.shape[1] !== qDim) throw new WebvlmError("internal", "idefics2 connector: attention width");
    linear(rec, attn, lw.o, undefined, lat, { accumulate: true });
    free(attn);
    const gu2 = linear(rec, lat, lw.gateUp, undefined, undefined, { rmsNorm: { weight: lw.postAttentionLayernorm, eps: cfg.rmsNormEps } });
    const act2 = gated(rec, gu2);
    free(gu2);
    linear(rec, act2, lw.down, undefined, lat, { accumulate: true });
    free(act2);
  }
  free(context);
  const out = rmsNorm(rec, lat, w.norm, cfg.rmsNormEps);
  free(lat);
  return out;
}

/**
 * The modality projection down(silu(gate(x)) * up(x)) (the text model's activation, silu) over
 * x f32 [n, D] -> [n, H], at most `maxRows` rows per pass: its gate|up activation is 2 * the text
 * intermediate size wide (28672 floats a row for idefics2-8b, 0.5 GB for one 980 px crop), so a
 * split image would pass a binding limit in one pass. Rows are independent; passes copy their rows
 * in and out (no binding at an unaligned offset).
 */
export function modalityProjection(rec: Recorder, w: Idefics2ConnectorWeights, x: Tensor, maxRows = Infinity): Tensor {
  const ctx = rec.ctx;
  const free = (...ts: Tensor[]): void => ts.forEach((t) => ctx.pool.release(t.buffer));
  const project = (rows: Tensor): Tensor => {
    const gu = linear(rec, rows, w.projectionGateUp);
    const act = siluMulFused(rec, gu);
    free(gu);
    const y = linear(rec, act, w.projectionDown);
    free(act);
    return y;
  };
  const [n, D] = x.shape;
  if (n <= maxRows) return project(x);
  if (!(maxRows >= 1)) throw new WebvlmError("internal", `idefics2 connector: ${maxRows} rows per projection pass`);
  const H = w.projectionDown.rows;
  const out = allocTensor(ctx, [n, H], "f32", "modality_projection");
  for (let r0 = 0; r0 < n; r0 += maxRows) {
    const r = Math.min(maxRows, n - r0);
    const part = allocTensor(ctx, [r, D], "f32", "modality_projection.rows");
    rec.copy({ buffer: x.buffer, offset: x.offset + r0 * D * 4, size: r * D * 4 }, part);
    const y = project(part);
    free(part);
    rec.copy(y, { buffer: out.buffer, offset: out.offset + r0 * H * 4, size: r * H * 4 });
    free(y);
  }
  return out;
}
