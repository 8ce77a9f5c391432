// Small-M linear for short rows: one thread computes one output element y[m, out_col + n] over
// the whole row (no lanes, no shared-memory reduction). When a row is a few vec4s, a lane team's
// tree reduction costs more than it saves (and on CPU adapters such as SwiftShader every barrier is
// a fiber switch), so linear() picks this for K up to ROWS_MAX_K.
// Entry points (same bindings as gemv.wgsl / gemv_q.wgsl, so linear() binds them the same way):
//   dense: f32 or f16 weights (WEIGHT_F16), K % 4 == 0 (f32) / K % 8 == 0 (f16).
//     (0) Params { M, N, K, out_col, out_stride, has_bias, accumulate, eps } (1) x: array<vec4<f32>> [M, K/4]
//     (2) w: array<vec4<u32>> (3) bias: array<f32> (4) y: array<f32> (5) norm weight: array<vec4<f32>> [K/4]
//   quant: q4/q8 weights (BITS), layout of src/quant/formats.ts, K % 4 == 0.
//     (1) x (2) w: array<vec4<u32>> [N, groups * BITS / 4] (3) scales: array<u32> f16 pairs [N, groups]
//     (4) bias (5) y (6) norm weight
//   quant_zeros: quant with zero points (override ZEROS = true): unsigned codes, value = (q - zero) *
//     scale; bindings of quant plus (7) zero_words: array<u32>, byte g % 4 of word g / 4 of the row-major
//     [N, groups] list (only this entry point references it, so quant's auto layout lacks it).
// With NORM (override): y = rmsnorm(x) W^T (x scaled by the norm weight as read, the dot product times
// inverseSqrt(mean(x^2) + eps) of the row).
// Dispatch: (tiles_x, tiles_y, M), tiles_x * tiles_y * 64 >= N (grid2d).

struct Params { M: u32, N: u32, K: u32, out_col: u32, out_stride: u32, has_bias: u32, accumulate: u32, eps: f32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

override WEIGHT_F16: bool = true;
override NORM: bool = false;  // fused RMSNorm (a pipeline constant: no per-element branch without it)
override BITS: u32 = 4u;
override ZEROS: bool = false;  // unsigned codes with zero points (set for quant_zeros)

fn row_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.y * nwg.x * 64u + gid.x;
}

// RMSNorm's factor for x row m: inverseSqrt(mean(x[m, :]^2) + eps).
fn row_scale(m: u32) -> f32 {
  let K4 = params.K / 4u;
  var ss = 0.0;
  for (var kv = 0u; kv < K4; kv++) {
    let v = x[m * K4 + kv];
    ss += dot(v, v);
  }
  return inverseSqrt(ss / f32(params.K) + params.eps);
}

@group(0) @binding(3) var<storage, read> dense_bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dense_y: array<f32>;
@group(0) @binding(5) var<storage, read> dense_norm: array<vec4<f32>>;

// x[m] vec4 kv, times the norm weight with norm.
fn dense_x(m: u32, kv: u32) -> vec4<f32> {
  let v = x[m * (params.K / 4u) + kv];
  if (NORM) { return v * dense_norm[kv]; }
  return v;
}

@compute @workgroup_size(64)
fn dense(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = row_index(gid, nwg);
  let m = gid.z;
  if (n >= params.N || m >= params.M) { return; }
  let K4 = params.K / 4u;
  var acc = 0.0;
  if (WEIGHT_F16) {
    let row_vecs = K4 / 2u;
    for (var kv = 0u; kv < row_vecs; kv++) {
      let q = w[n * row_vecs + kv];
      acc += dot(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)), dense_x(m, kv * 2u));
      acc += dot(vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)), dense_x(m, kv * 2u + 1u));
    }
  } else {
    for (var kv = 0u; kv < K4; kv++) {
      acc += dot(bitcast<vec4<f32>>(w[n * K4 + kv]), dense_x(m, kv));
    }
  }
  if (NORM) { acc *= row_scale(m); }
  if (params.has_bias != 0u) { acc += dense_bias[params.out_col + n]; }
  let out_index = m * params.out_stride + params.out_col + n;
  // accumulate: y += x W^T (the residual add fused into the projection).
  if (params.accumulate != 0u) { acc += dense_y[out_index]; }
  dense_y[out_index] = acc;
}

@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> quant_bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> quant_y: array<f32>;
@group(0) @binding(6) var<storage, read> quant_norm: array<vec4<f32>>;

fn scale_of(i: u32) -> f32 {
  return unpack2x16float(scales[i / 2u])[i % 2u];
}

// x[m, k..k+4) as a vec4, zero past K (the padded tail of the last group has zero weights, but
// x past the row end is another row's data or out of bounds and must not meet them).
fn x4(m: u32, k: u32) -> vec4<f32> {
  if (k >= params.K) { return vec4<f32>(0.0); }
  let v = x[(m * params.K + k) / 4u];
  if (NORM) { return v * quant_norm[k / 4u]; }
  return v;
}

// Codes minus their offset z (q4: 8, or the zero point with ZEROS; q8: 0, or the zero point) dotted
// with x[m, k .. k + 8) (q4) / x[m, k .. k + 4) (q8).
fn q4_dot(word: u32, k: u32, m: u32, z: f32) -> f32 {
  let lo = vec4<f32>(vec4<u32>(word, word >> 4u, word >> 8u, word >> 12u) & vec4<u32>(15u)) - z;
  let hi = vec4<f32>(vec4<u32>(word >> 16u, word >> 20u, word >> 24u, word >> 28u) & vec4<u32>(15u)) - z;
  return dot(lo, x4(m, k)) + dot(hi, x4(m, k + 4u));
}

fn q8_dot(word: u32, k: u32, m: u32, z: f32) -> f32 {
  if (ZEROS) {
    return dot(vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(255u)) - z, x4(m, k));
  }
  let v = vec4<f32>(vec4<i32>(bitcast<i32>(word << 24u), bitcast<i32>(word << 16u), bitcast<i32>(word << 8u), bitcast<i32>(word)) >> vec4<u32>(24u));
  return dot(v, x4(m, k));
}

// sum over group g of row n of (code - z) * x[m, k] (times the scale: the caller).
fn group_sum(n: u32, m: u32, g: u32, groups: u32, z: f32) -> f32 {
  let k0 = g * 32u;
  let base = (n * groups + g) * (BITS / 4u);
  if (BITS == 4u) {
    let q = w[base];
    return q4_dot(q.x, k0, m, z) + q4_dot(q.y, k0 + 8u, m, z) + q4_dot(q.z, k0 + 16u, m, z) + q4_dot(q.w, k0 + 24u, m, z);
  }
  let a = w[base];
  let b = w[base + 1u];
  return q8_dot(a.x, k0, m, z) + q8_dot(a.y, k0 + 4u, m, z) + q8_dot(a.z, k0 + 8u, m, z) + q8_dot(a.w, k0 + 12u, m, z)
    + q8_dot(b.x, k0 + 16u, m, z) + q8_dot(b.y, k0 + 20u, m, z) + q8_dot(b.z, k0 + 24u, m, z) + q8_dot(b.w, k0 + 28u, m, z);
}

// The epilogue: norm factor, bias, accumulate, store.
fn quant_store(n: u32, m: u32, dot_sum: f32) {
  var acc = dot_sum;
  if (NORM) { acc *= row_scale(m); }
  if (params.has_bias != 0u) { acc += quant_bias[params.out_col + n]; }
  let out_index = m * params.out_stride + params.out_col + n;
  // accumulate: y += x W^T (the residual add fused into the projection).
  if (params.accumulate != 0u) { acc += quant_y[out_index]; }
  quant_y[out_index] = acc;
}

@compute @workgroup_size(64)
fn quant(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = row_index(gid, nwg);
  let m = gid.z;
  if (n >= params.N || m >= params.M) { return; }
  let groups = (params.K + 31u) / 32u;
  var acc = 0.0;
  for (var g = 0u; g < groups; g++) {
    acc += group_sum(n, m, g, groups, select(0.0, 8.0, BITS == 4u)) * scale_of(n * groups + g);
  }
  quant_store(n, m, acc);
}

@group(0) @binding(7) var<storage, read> zero_words: array<u32>;

@compute @workgroup_size(64)
fn quant_zeros(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let n = row_index(gid, nwg);
  let m = gid.z;
  if (n >= params.N || m >= params.M) { return; }
  let groups = (params.K + 31u) / 32u;
  var acc = 0.0;
  for (var g = 0u; g < groups; g++) {
    let si = n * groups + g;
    let z = f32((zero_words[si >> 2u] >> ((si & 3u) * 8u)) & 255u);
    acc += group_sum(n, m, g, groups, z) * scale_of(si);
  }
  quant_store(n, m, acc);
}
