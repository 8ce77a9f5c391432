// Tiled linear with a q4/q8 weight: y[m, out_col + n] = sum_k x[m, k] * W[n, k] (+ bias) (+ y, with accumulate).
// W layout as in gemv_q.wgsl / src/quant/formats.ts (groups of 32 along K, f16 scales [N, groups]),
// bound here as array<u32>; cols beyond K are zero-padded in W, and x is read bounds-checked.
// @binding(0) uniform Params { M, N, K, out_col, out_stride, has_bias, accumulate }   (N = rows of this weight/shard)
// (1) x: array<f32> [M, K]
// (2) w: array<u32> [N, groups * BITS]
// (3) scales: array<u32> (f16 pairs) [N, groups]
// (4) bias: array<f32>, indexed out_col + n (bind any read-only buffer when has_bias is 0)
// (5) y: array<f32>, element (m, out_col + n) at m * out_stride + out_col + n
// Workgroup 16x16 computes a 64x64 output tile, 4x4 per thread; K steps of 16 (half a group, so one
// scale per row per step). Each thread dequantizes 4 weights of one row into shared memory as f32.
// Entry points: main (symmetric groups) and main_zeros (asymmetric groups, with the override ZEROS =
// true): unsigned codes, value = (q - zero) * scale, zero byte g % 4 of word g / 4 of the row-major
// [N, groups] list, bound at (6) zeros: array<u32> [ceil(N * groups / 4)]; only main_zeros
// references it, so main's auto layout does not have it.
// Dispatch: (ceil(N / 64), ceil(M / 64)).

struct Params { M: u32, N: u32, K: u32, out_col: u32, out_stride: u32, has_bias: u32, accumulate: u32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> zeros: array<u32>;

override BITS: u32 = 4u;  // 4 or 8
override ZEROS: bool = false;  // unsigned codes with zero points (set for main_zeros)

const BM = 64u;
const BN = 64u;
const BK = 16u;

var<workgroup> xs: array<f32, BK * BM>;  // [k][m]
var<workgroup> ws: array<f32, BK * BN>;  // [k][n]

// Four dequantized weights W[n, k .. k + 3]; k is a multiple of 4 below paddedCols. z: the
// group's zero point (ZEROS only).
fn weights4(n: u32, k: u32, groups: u32, z: f32) -> vec4<f32> {
  let g = k / 32u;
  let i = k % 32u;
  let si = n * groups + g;
  let s = unpack2x16float(scales[si >> 1u])[si & 1u];
  let base = (n * groups + g) * BITS;
  if (BITS == 4u) {
    let word = vec4<u32>(w[base + i / 8u]);
    let sh = vec4<u32>(0u, 4u, 8u, 12u) + (i % 8u) * 4u;
    return (vec4<f32>((word >> sh) & vec4<u32>(15u)) - select(8.0, z, ZEROS)) * s;
  }
  let word = vec4<u32>(w[base + i / 4u]);
  if (ZEROS) {
    return (vec4<f32>((word >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u)) - z) * s;
  }
  let b = bitcast<vec4<i32>>(word << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
  return vec4<f32>(b) * s;
}

// Zero point of group k / 32 of row n (main_zeros only).
fn zero_of(n: u32, k: u32, groups: u32) -> f32 {
  let si = n * groups + k / 32u;
  return f32((zeros[si >> 2u] >> ((si & 3u) * 8u)) & 255u);
}

// Stages the tile's x values and the dequantized weights wv for K step k0, then adds the step's
// products into acc.
fn tile_step(tid: u32, tx: u32, ty: u32, m0: u32, k0: u32, wv: vec4<f32>, acc: ptr<function, array<array<f32, 4>, 4>>) {
  let sr = tid / 4u;
  let sk = (tid % 4u) * 4u;
  let K = params.K;
  let m = m0 + sr;
  for (var c = 0u; c < 4u; c++) {
    let k = k0 + sk + c;
    var xv = 0.0;
    if (k < K && m < params.M) { xv = x[m * K + k]; }
    xs[(sk + c) * BM + sr] = xv;
    ws[(sk + c) * BN + sr] = wv[c];
  }
  workgroupBarrier();
  for (var k = 0u; k < BK; k++) {
    var a: array<f32, 4>;
    var b: array<f32, 4>;
    for (var i = 0u; i < 4u; i++) {
      a[i] = xs[k * BM + ty + 16u * i];
      b[i] = ws[k * BN + tx + 16u * i];
    }
    for (var i = 0u; i < 4u; i++) {
      for (var j = 0u; j < 4u; j++) { (*acc)[i][j] = fma(a[i], b[j], (*acc)[i][j]); }
    }
  }
  workgroupBarrier();
}

fn store(tx: u32, ty: u32, m0: u32, n0: u32, acc: ptr<function, array<array<f32, 4>, 4>>) {
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + ty + 16u * i;
    if (m >= params.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tx + 16u * j;
      if (n < params.N) {
        var v = (*acc)[i][j];
        if (params.has_bias != 0u) { v += bias[params.out_col + n]; }
        let out_index = m * params.out_stride + params.out_col + n;
        // accumulate: y += x W^T (the residual add fused into the projection).
        if (params.accumulate != 0u) { v += y[out_index]; }
        y[out_index] = v;
      }
    }
  }
}

// The two entry points differ only in reading each group's zero point. Staging role of a thread:
// row tid / 4 of the tile, k offsets 4 * (tid % 4) .. + 3; k0 + BK never passes paddedCols (a
// multiple of 32), so the weight read is in bounds.

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = lid.y * 16u + lid.x;
  let n0 = wid.x * BN;
  let m0 = wid.y * BM;
  let groups = (params.K + 31u) / 32u;
  let n = n0 + tid / 4u;
  let sk = (tid % 4u) * 4u;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < params.K; k0 += BK) {
    var wv = vec4<f32>(0.0);
    if (n < params.N) { wv = weights4(n, k0 + sk, groups, 0.0); }
    tile_step(tid, lid.x, lid.y, m0, k0, wv, &acc);
  }
  store(lid.x, lid.y, m0, n0, &acc);
}

@compute @workgroup_size(16, 16)
fn main_zeros(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = lid.y * 16u + lid.x;
  let n0 = wid.x * BN;
  let m0 = wid.y * BM;
  let groups = (params.K + 31u) / 32u;
  let n = n0 + tid / 4u;
  let sk = (tid % 4u) * 4u;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < params.K; k0 += BK) {
    var wv = vec4<f32>(0.0);
    if (n < params.N) { wv = weights4(n, k0 + sk, groups, zero_of(n, k0 + sk, groups)); }
    tile_step(tid, lid.x, lid.y, m0, k0, wv, &acc);
  }
  store(lid.x, lid.y, m0, n0, &acc);
}
