// LayerNorm over the last dim, in f32, biased variance (torch.nn.LayerNorm):
//   out[r, i] = (x[r, i] - mean) * inverseSqrt(var + eps) * weight[i] + bias[i]
// Corrected two-pass statistics (Chan, Golub & LeVeque): m = sum(x)/h in f32; then
// d = x - m, c = sum(d)/h, var = sum(d^2)/h - c^2, and x - mean = d - c. The correction c
// cancels the rounding of m itself, which matters when |mean| >> std (e.g. mean 1000,
// std 0.6: the plain two-pass result is off by ~1e-4 relative, this one by ~1e-7).
// @binding(0) uniform Params { rows: u32, h: u32, eps: f32 }
// @binding(1) x: array<f32> [rows, h]
// @binding(2) weight: array<f32> [h]
// @binding(3) bias: array<f32> [h]
// @binding(4) out: array<f32> [rows, h] (a separate buffer from x)
// Dispatch: one 256-invocation workgroup per row, rows split over x and y (grid2d):
//   row = wg.y * nwg.x + wg.x. Shared-memory tree reductions (see rms_norm.wgsl).
struct Params { rows: u32, h: u32, eps: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<vec2<f32>, WG>;

// Workgroup-wide sum; every invocation gets the total. Call in uniform control flow.
fn workgroup_sum(lid: u32, v: vec2<f32>) -> vec2<f32> {
  partial[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { partial[lid] = partial[lid] + partial[lid + s]; }
    workgroupBarrier();
  }
  let total = partial[0];
  workgroupBarrier(); // all reads of partial[0] happen before any later reuse
  return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= params.rows) { return; } // uniform per workgroup
  let h = params.h;
  let base = row * h;
  let inv_h = 1.0 / f32(h);
  var s1 = 0.0;
  for (var i = lid; i < h; i += WG) { s1 += x[base + i]; }
  let m = workgroup_sum(lid, vec2<f32>(s1, 0.0)).x * inv_h;
  var s2 = vec2<f32>(0.0);
  for (var i = lid; i < h; i += WG) {
    let d = x[base + i] - m;
    s2 += vec2<f32>(d, d * d);
  }
  let sums = workgroup_sum(lid, s2) * inv_h;
  let c = sums.x;
  let rstd = inverseSqrt(max(sums.y - c * c, 0.0) + params.eps);
  for (var i = lid; i < h; i += WG) {
    out[base + i] = ((x[base + i] - m) - c) * rstd * weight[i] + bias[i];
  }
}
