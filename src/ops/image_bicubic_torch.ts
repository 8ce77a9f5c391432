import code from "../../shaders/image_bicubic_torch.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, numel, type Tensor } from "../gpu/tensor.ts";
import { allocTensor, uploadTensor } from "../gpu/transfer.ts";
import { torchBicubicTaps, type TorchBicubicTaps } from "../vision/resize_torch_bicubic.ts";

/** One resampling pass along the middle axis of x viewed as [outer, taps.inSize, inner]. */
function bicubicPass(
  rec: Recorder,
  x: Tensor,
  out: Tensor,
  outer: number,
  inner: number,
  taps: TorchBicubicTaps,
  label: string,
): void {
  const { inSize: inLen, outSize: outLen } = taps;
  // The indices are clamped to [0, inLen - 1], so their Int32 bits read the same as u32.
  const indexU32 = new Uint32Array(taps.index.buffer, taps.index.byteOffset, taps.index.length);
  const index = uploadTensor(rec.ctx, indexU32, [outLen * 4], "u32", `${label}_index`);
  const weight = uploadTensor(rec.ctx, taps.weight, [outLen * 4], "f32", `${label}_weight`);
  const n = outer * outLen * inner;
  rec.dispatch({
    code,
    // zero: always 0; the shader XORs each product's bits with it so no FMA can fuse product and sum.
    uniforms: packUniforms("uuuuu", n, inLen, outLen, inner, 0),
    bindings: [x, index, weight, out],
    workgroups: grid2d(Math.ceil(n / 256), rec.ctx.limits.maxComputeWorkgroupsPerDimension),
    label,
  });
  // Released once recorded: later users of these buffers come after this dispatch in stream order.
  rec.ctx.pool.release(index.buffer);
  rec.ctx.pool.release(weight.buffer);
}

/**
 * PyTorch's `F.interpolate(x[None], (outH, outW), mode="bicubic", align_corners=False)[0]` on an
 * f32 [C, H, W] tensor: a width pass into an f32 [C, H, outW] scratch, then a height pass, bit-exact
 * with resizeTorchBicubicChw (src/vision/resize_torch_bicubic.ts). No clamping of the result.
 * Phi-3.5-vision's global view is this resize of the normalized HD image to 336x336.
 */
export function bicubicTorch(rec: Recorder, x: Tensor, outH: number, outW: number, out?: Tensor): Tensor {
  expectDtype("bicubicTorch.x", x, ["f32"]);
  expectShape("bicubicTorch.x", x, [null, null, null]);
  const [c, h, w] = x.shape;
  if (!Number.isSafeInteger(c) || c < 1) {
    throw new WebvlmError("bad_request", `bicubicTorch: need at least one channel, got ${c}`);
  }
  // Taps and weights from the CPU reference itself (it also validates the four sizes), so both
  // sides multiply by the very same f32 weights.
  const tapsW = torchBicubicTaps(w, outW);
  const tapsH = torchBicubicTaps(h, outH);
  // The shader indexes with u32.
  for (const [name, count] of [["input", numel(x.shape)], ["scratch", c * h * outW], ["output", c * outH * outW]] as const) {
    if (count >= 2 ** 32) {
      throw new WebvlmError("limit_exceeded", `bicubicTorch: ${name} of ${count} values exceeds u32 indexing`);
    }
  }
  const y = out ?? allocTensor(rec.ctx, [c, outH, outW], "f32", "bicubic_torch");
  expectDtype("bicubicTorch.out", y, ["f32"]);
  expectShape("bicubicTorch.out", y, [c, outH, outW]);
  const mid = allocTensor(rec.ctx, [c, h, outW], "f32", "bicubic_torch_mid");
  bicubicPass(rec, x, mid, c * h, 1, tapsW, "bicubic_torch_w");
  bicubicPass(rec, mid, y, c, outW, tapsH, "bicubic_torch_h");
  rec.ctx.pool.release(mid.buffer);
  return y;
}
