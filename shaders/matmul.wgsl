// Tiled linear with a dense f32 or f16 weight: y[m, out_col + n] = sum_k x[m, k] * W[n, k] (+ bias) (+ y, with accumulate).
// Any M, N, K (bounds-checked element reads; also the small-M fallback when K is not vec4-aligned).
// @binding(0) uniform Params { M, N, K, out_col, out_stride, has_bias, accumulate }   (N = rows of this weight/shard)
// (1) x: array<f32> [M, K]
// (2) w: array<u32> [N, K]: f32 bits, or f16 pairs (element e in half e % 2 of word e / 2)
// (3) bias: array<f32>, indexed out_col + n (bind any read-only buffer when has_bias is 0)
// (4) y: array<f32>, element (m, out_col + n) at m * out_stride + out_col + n
// Workgroup 16x16 computes a 64x64 output tile, 4x4 per thread (rows ty + 16i, cols tx + 16j, so
// shared reads are broadcast / consecutive and global writes coalesced). K steps of 16: each
// thread stages 4 x values and 4 weights (of one row) into shared memory, k-major.
// Dispatch: (ceil(N / 64), ceil(M / 64)).

struct Params { M: u32, N: u32, K: u32, out_col: u32, out_stride: u32, has_bias: u32, accumulate: u32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

override WEIGHT_F16: bool = true;

const BM = 64u;
const BN = 64u;
const BK = 16u;

var<workgroup> xs: array<f32, BK * BM>;  // [k][m]
var<workgroup> ws: array<f32, BK * BN>;  // [k][n]

fn weight(n: u32, k: u32) -> f32 {
  let e = n * params.K + k;
  if (WEIGHT_F16) { return unpack2x16float(w[e >> 1u])[e & 1u]; }
  return bitcast<f32>(w[e]);
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(workgroup_id) wid: vec3<u32>,
) {
  let tx = lid.x;
  let ty = lid.y;
  let tid = ty * 16u + tx;
  let n0 = wid.x * BN;
  let m0 = wid.y * BM;
  let K = params.K;
  // Staging role: row tid / 4 of the tile, k offsets 4 * (tid % 4) .. + 3.
  let sr = tid / 4u;
  let sk = (tid % 4u) * 4u;

  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < K; k0 += BK) {
    let m = m0 + sr;
    let n = n0 + sr;
    for (var c = 0u; c < 4u; c++) {
      let k = k0 + sk + c;
      var xv = 0.0;
      var wv = 0.0;
      if (k < K) {
        if (m < params.M) { xv = x[m * K + k]; }
        if (n < params.N) { wv = weight(n, k); }
      }
      xs[(sk + c) * BM + sr] = xv;
      ws[(sk + c) * BN + sr] = wv;
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
        for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let m = m0 + ty + 16u * i;
    if (m >= params.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tx + 16u * j;
      if (n < params.N) {
        var v = acc[i][j];
        if (params.has_bias != 0u) { v += bias[params.out_col + n]; }
        let out_index = m * params.out_stride + params.out_col + n;
        // accumulate: y += x W^T (the residual add fused into the projection).
        if (params.accumulate != 0u) { v += y[out_index]; }
        y[out_index] = v;
      }
    }
  }
}
