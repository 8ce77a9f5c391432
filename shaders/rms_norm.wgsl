// RMSNorm over the last dim, in f32 (Qwen2RMSNorm):
//   out[r, i] = x[r, i] * inverseSqrt(mean_i(x[r, :]^2) + eps) * weight[i]
// @binding(0) uniform Params { rows: u32, h: u32, eps: f32 }
// @binding(1) x: array<f32> [rows, h]
// @binding(2) weight: array<f32> [h]
// @binding(3) out: array<f32> [rows, h] (a separate buffer: WebGPU forbids binding x read and read_write)
// Dispatch: one 256-invocation workgroup per row, rows split over x and y (grid2d):
//   row = wg.y * nwg.x + wg.x. Any h >= 1 (strided loop); the reduction is a
//   shared-memory tree (no subgroup ops: WebGPU gives no reliable mapping from
//   local_invocation_index to subgroups, and the tree is 8 barrier steps per row).
struct Params { rows: u32, h: u32, eps: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

// Workgroup-wide sum; every invocation gets the total. Call in uniform control flow.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
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
  var ss = 0.0;
  for (var i = lid; i < h; i += WG) {
    let v = x[base + i];
    ss = fma(v, v, ss);
  }
  let total = workgroup_sum(lid, ss);
  let scale = inverseSqrt(total / f32(h) + params.eps);
  for (var i = lid; i < h; i += WG) {
    out[base + i] = x[base + i] * scale * weight[i];
  }
}
