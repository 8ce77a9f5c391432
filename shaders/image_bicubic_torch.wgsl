// One axis of PyTorch's upsample_bicubic2d (align_corners=False, no antialias), bit-exact with
// src/vision/resize_torch_bicubic.ts. The input is viewed as [outer, in_len, inner] and resampled
// along the middle axis to [outer, out_len, inner]:
//   out[o, j, i] = ((x0 w0 + x1 w1) + x2 w2) + x3 w3,  xk = x[o, index[4j + k], i], wk = weight[4j + k]
// with every product and sum rounded to f32, as the CPU reference (and ATen's CPU kernel) does.
// Width pass: outer = C*H, inner = 1; height pass: outer = C, inner = out_w.
// The taps (clamped source indices and f32 weights) come from torchBicubicTaps on the CPU.
// Each product goes through rounded(): a bitcast round trip XORed with a uniform that is always 0,
// which no compiler can fold, so a*b is rounded to f32 on its own and never fused with the
// following add into an FMA (one rounding instead of two) by the shader compiler or driver.
// @binding(0) uniform Params { n = outer * out_len * inner, in_len, out_len, inner, zero (= 0) }
// @binding(1) x: array<f32> [outer, in_len, inner]
// @binding(2) index: array<u32> [out_len * 4], each < in_len
// @binding(3) weight: array<f32> [out_len * 4]
// @binding(4) out: array<f32> [outer, out_len, inner]
// Dispatch: ceil(n / 256) workgroups, split over x and y (row width = num_workgroups.x * 256).
struct Params { n: u32, in_len: u32, out_len: u32, inner: u32, zero: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn rounded(v: f32) -> f32 {
  return bitcast<f32>(bitcast<u32>(v) ^ params.zero);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.n) { return; }
  let inner = params.inner;
  let col = i % inner;
  let rest = i / inner;
  let j = rest % params.out_len;
  let o = rest / params.out_len;
  let base = o * params.in_len * inner + col;
  let k = j * 4u;
  let p0 = rounded(x[base + index[k] * inner] * weight[k]);
  let p1 = rounded(x[base + index[k + 1u] * inner] * weight[k + 1u]);
  let p2 = rounded(x[base + index[k + 2u] * inner] * weight[k + 2u]);
  let p3 = rounded(x[base + index[k + 3u] * inner] * weight[k + 3u]);
  out[i] = ((p0 + p1) + p2) + p3;
}
