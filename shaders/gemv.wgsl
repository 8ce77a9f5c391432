// Small-M linear with a dense f32 or f16 weight: y[m, out_col + n] = sum_k x[m, k] * W[n, k] (+ bias) (+ y, with accumulate).
// Requires K % 4 == 0 (f32) or K % 8 == 0 (f16) so every weight and x row starts on a vec4;
// other K go to matmul.wgsl.
// With NORM (override): y = rmsnorm(x) W^T: x is scaled by norm_weight as it is read and the row's sum of
// squares is reduced beside the dot products; the result is multiplied by inverseSqrt(mean + eps).
// @binding(0) uniform Params { M, N, K, out_col, out_stride, has_bias, accumulate, eps }   (N = rows of this weight/shard)
// (1) x: array<vec4<f32>> [M, K / 4]
// (2) w: array<vec4<u32>> [N, K]: f32 bits (4 per vec4) or f16 pairs (8 per vec4, low half first)
// (3) bias: array<f32>, indexed out_col + n (bind any read-only buffer when has_bias is 0)
// (4) y: array<f32>, element (m, out_col + n) at m * out_stride + out_col + n
// (5) norm_weight: array<vec4<f32>> [K / 4] (bind any read-only buffer without NORM)
// Workgroup (LANES, TEAMS). A team owns R consecutive output rows; lane l reads vec4<u32> l,
// l + LANES, ... of each row (coalesced). The lane's x values are read once from global memory
// (cached) and reused for the R rows; no barriers in the K loop. MROWS rows of x per workgroup.
// Per-lane partials are tree-reduced in shared memory at the end.
// Dispatch: (tiles_x, tiles_y, ceil(M / MROWS)), tiles_x * tiles_y >= ceil(N / (TEAMS * R)) (grid2d).

struct Params { M: u32, N: u32, K: u32, out_col: u32, out_stride: u32, has_bias: u32, accumulate: u32, eps: f32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> norm_weight: array<vec4<f32>>;

override WEIGHT_F16: bool = true;
override NORM: bool = false;  // fused RMSNorm (a pipeline constant: no per-element branch without it)
override LANES: u32 = 32u;   // threads along K per team; power of two, >= R * MROWS
override TEAMS: u32 = 8u;    // teams per workgroup
override R: u32 = 1u;        // output rows per team, R * MROWS <= MAX_RM
override MROWS: u32 = 1u;    // x rows per workgroup
override RM: u32 = R * MROWS;

const MAX_R = 8u;
const MAX_RM = 8u;
const MAX_MROWS = 4u;

override SLOTS: u32 = RM + MROWS;  // RM dot products, then MROWS sums of squares (norm)
var<workgroup> partial: array<f32, SLOTS * TEAMS * LANES>;  // [slot][team][lane]

@compute @workgroup_size(LANES, TEAMS)
fn main(
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
) {
  let lane = lid.x;
  let team = lid.y;
  let row0 = (wid.y * nwg.x + wid.x) * TEAMS * R;
  if (row0 >= params.N) { return; }  // whole workgroup: uniform
  let n0 = row0 + team * R;
  let m0 = wid.z * MROWS;
  let K4 = params.K / 4u;
  let xv = select(1u, 2u, WEIGHT_F16);  // x vec4s per weight vec4
  let row_vecs = K4 / xv;

  var acc: array<f32, MAX_RM>;
  var ss: array<f32, MAX_MROWS>;
  for (var kv = lane; kv < row_vecs; kv += LANES) {
    var xa: array<vec4<f32>, MAX_MROWS>;
    var xb: array<vec4<f32>, MAX_MROWS>;
    for (var m = 0u; m < MROWS; m++) {
      if (m0 + m < params.M) {
        let i = (m0 + m) * K4 + kv * xv;
        xa[m] = x[i];
        if (WEIGHT_F16) { xb[m] = x[i + 1u]; }
        if (NORM) {
          ss[m] += dot(xa[m], xa[m]);
          xa[m] *= norm_weight[kv * xv];
          if (WEIGHT_F16) {
            ss[m] += dot(xb[m], xb[m]);
            xb[m] *= norm_weight[kv * xv + 1u];
          }
        }
      }
    }
    for (var r = 0u; r < R; r++) {
      let n = n0 + r;
      if (n >= params.N) { break; }
      let q = w[n * row_vecs + kv];
      if (WEIGHT_F16) {
        let a = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        let b = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
        for (var m = 0u; m < MROWS; m++) { acc[r * MROWS + m] += dot(a, xa[m]) + dot(b, xb[m]); }
      } else {
        let a = bitcast<vec4<f32>>(q);
        for (var m = 0u; m < MROWS; m++) { acc[r * MROWS + m] += dot(a, xa[m]); }
      }
    }
  }

  // Tree reduction over the lanes of each team (with norm, also the sums of squares).
  let slots = select(RM, RM + MROWS, NORM);
  for (var i = 0u; i < RM; i++) { partial[(i * TEAMS + team) * LANES + lane] = acc[i]; }
  if (NORM) {
    for (var m = 0u; m < MROWS; m++) { partial[((RM + m) * TEAMS + team) * LANES + lane] = ss[m]; }
  }
  workgroupBarrier();
  for (var stride = LANES / 2u; stride > 0u; stride >>= 1u) {
    if (lane < stride) {
      for (var i = 0u; i < slots; i++) {
        let p = (i * TEAMS + team) * LANES + lane;
        partial[p] += partial[p + stride];
      }
    }
    workgroupBarrier();
  }
  if (lane < RM) {
    let n = n0 + lane / MROWS;
    let m = m0 + lane % MROWS;
    if (n < params.N && m < params.M) {
      var v = partial[(lane * TEAMS + team) * LANES];
      if (NORM) {
        let sum_sq = partial[((RM + lane % MROWS) * TEAMS + team) * LANES];
        v *= inverseSqrt(sum_sq / f32(params.K) + params.eps);
      }
      if (params.has_bias != 0u) { v += bias[params.out_col + n]; }
      let out_index = m * params.out_stride + params.out_col + n;
      // accumulate: y += x W^T (the residual add fused into the projection).
      if (params.accumulate != 0u) { v += y[out_index]; }
      y[out_index] = v;
    }
  }
}
