// Softmax along the last dim, in f32: out[r, i] = exp(x[r, i] - max_r) / sum_j exp(x[r, j] - max_r).
// Online form (running max and rescaled sum per invocation, then a (max, sum) tree merge),
// so x is read twice, not three times.
// @binding(0) uniform Params { rows: u32, n: u32 }
// @binding(1) x: array<f32> [rows, n]
// @binding(2) out: array<f32> [rows, n] (a separate buffer from x)
// Dispatch: one 256-invocation workgroup per row, rows split over x and y (grid2d):
//   row = wg.y * nwg.x + wg.x. Inputs must be finite: WGSL lets implementations assume no
//   inf/NaN, so mask with a large negative finite value (e.g. -1e30), not -inf.
struct Params { rows: u32, n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
const LOWEST: f32 = -3.0e38;
var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;

// s1 * exp(m1 - m) with m >= m1; an empty partial (s1 == 0) contributes exactly 0.
fn rescale(s1: f32, m1: f32, m: f32) -> f32 {
  return select(s1 * exp(m1 - m), 0.0, s1 == 0.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= params.rows) { return; } // uniform per workgroup
  let n = params.n;
  let base = row * n;
  var m = LOWEST;
  var s = 0.0;
  for (var i = lid; i < n; i += WG) {
    let v = x[base + i];
    if (v > m) {
      s = rescale(s, m, v) + 1.0;
      m = v;
    } else {
      s += exp(v - m);
    }
  }
  red_m[lid] = m;
  red_s[lid] = s;
  workgroupBarrier();
  for (var k = WG / 2u; k > 0u; k = k >> 1u) {
    if (lid < k) {
      let m1 = red_m[lid];
      let m2 = red_m[lid + k];
      let mm = max(m1, m2);
      red_s[lid] = rescale(red_s[lid], m1, mm) + rescale(red_s[lid + k], m2, mm);
      red_m[lid] = mm;
    }
    workgroupBarrier();
  }
  let row_max = red_m[0];
  let inv_sum = 1.0 / red_s[0];
  for (var i = lid; i < n; i += WG) {
    out[base + i] = exp(x[base + i] - row_max) * inv_sum;
  }
}
