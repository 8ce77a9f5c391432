// Decode attention (one query row) against a KV cache, split over the sequence (flash-decoding).
// Entry `partial`: workgroup (chunk, kvh) handles keys [chunk * chunkSize, min(+chunkSize, length))
//   for the GROUP query heads of kv head kvh: per head the chunk's max m, sum l = sum exp(s - m)
//   and unnormalized acc[d] = sum exp(s - m) v[d]. Keys are processed WG at a time, online softmax.
// Entry `combine`: workgroup h merges head h's chunks: out = sum_c e^(m_c-M) acc_c / sum_c e^(m_c-M) l_c.
// @binding(0) uniform Params (below), shared by both entries
// partial: @binding(1) part: array<f32> (read_write), (2) q, (3) k, (4) v: array<f32>
//   q element (h, d) at qOff + h * D + d; k/v element (j, kvh, d) at j * stride + off + kvh * D + d
// combine: @binding(1) part: array<f32>, (2) out: array<f32> [numHeads * D]
//   (binding 2 is q in one entry and out in the other: WGSL only forbids sharing within one entry)
// part layout: acc [numHeads][numChunks][D], then m [numHeads][numChunks], then l [numHeads][numChunks].
// Overrides: D (head dim, multiple of 4), GROUP (numHeads / numKvHeads, <= 16).
// Dispatch: partial (numChunks, numKvHeads, 1); combine (numHeads, 1, 1). Workgroup size WG = 64.
struct Params {
  length: u32,     // valid keys
  chunkSize: u32,  // multiple of WG
  numChunks: u32,
  numHeads: u32,
  qOff: u32,
  kStride: u32, kOff: u32,
  vStride: u32, vOff: u32,
  scale: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> part: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;

override D: u32 = 128u;
override GROUP: u32 = 1u;
override D4: u32 = D / 4u;
const WG: u32 = 64u;
const MAXG: u32 = 16u;
const NEG: f32 = -1.0e30; // "minus infinity" that stays finite under subtraction

var<workgroup> qs: array<vec4<f32>, GROUP * D4>;
var<workgroup> accs: array<vec4<f32>, GROUP * D4>;
var<workgroup> ps: array<f32, GROUP * WG>;
var<workgroup> hM: array<f32, MAXG>;
var<workgroup> hL: array<f32, MAXG>;
var<workgroup> hAlpha: array<f32, MAXG>;

@compute @workgroup_size(WG)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let chunk = wid.x;
  let kvh = wid.y;
  let start = chunk * params.chunkSize;
  let end = min(start + params.chunkSize, params.length);
  let nc = params.numChunks;

  for (var e = t; e < GROUP * D4; e += WG) {
    let b = params.qOff + kvh * GROUP * D + e * 4u;
    qs[e] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * params.scale;
    accs[e] = vec4<f32>(0.0);
  }
  if (t < GROUP) {
    hM[t] = NEG;
    hL[t] = 0.0;
  }

  for (var kt = start; kt < end; kt += WG) {
    workgroupBarrier(); // qs ready; previous sub-tile's P.V done with ps
    // Scores: one thread per key, all GROUP heads at once (each K row is read once).
    let key = kt + t;
    // Explicit initializer: Dawn + SwiftShader zero an uninitialized loop-local var only once.
    var s = array<f32, MAXG>();
    if (key < end) {
      let base = key * params.kStride + params.kOff + kvh * D;
      for (var d4 = 0u; d4 < D4; d4++) {
        let b = base + d4 * 4u;
        let k4 = vec4<f32>(k[b], k[b + 1u], k[b + 2u], k[b + 3u]);
        for (var g = 0u; g < GROUP; g++) { s[g] += dot(qs[g * D4 + d4], k4); }
      }
    }
    for (var g = 0u; g < GROUP; g++) { ps[g * WG + t] = s[g]; }
    workgroupBarrier();

    let n = min(WG, end - kt);
    if (t < GROUP) {
      let mOld = hM[t];
      var mx = mOld;
      for (var c = 0u; c < n; c++) { mx = max(mx, ps[t * WG + c]); }
      var sum = 0.0;
      for (var c = 0u; c < n; c++) {
        let pr = exp(ps[t * WG + c] - mx);
        ps[t * WG + c] = pr;
        sum += pr;
      }
      let alpha = exp(mOld - mx);
      hAlpha[t] = alpha;
      hL[t] = hL[t] * alpha + sum;
      hM[t] = mx;
    }
    workgroupBarrier();

    // P.V: thread owns vec4 outputs o = t, t + WG, ... (neighbouring threads read neighbouring V).
    for (var o = t; o < GROUP * D4; o += WG) {
      let g = o / D4;
      var a = accs[o] * hAlpha[g];
      var vb = kt * params.vStride + params.vOff + kvh * D + (o % D4) * 4u;
      for (var c = 0u; c < n; c++) {
        a += ps[g * WG + c] * vec4<f32>(v[vb], v[vb + 1u], v[vb + 2u], v[vb + 3u]);
        vb += params.vStride;
      }
      accs[o] = a;
    }
  }
  workgroupBarrier();

  for (var o = t; o < GROUP * D4; o += WG) {
    let h = kvh * GROUP + o / D4;
    let b = (h * nc + chunk) * D + (o % D4) * 4u;
    let a = accs[o];
    part[b] = a.x;
    part[b + 1u] = a.y;
    part[b + 2u] = a.z;
    part[b + 3u] = a.w;
  }
  if (t < GROUP) {
    let h = kvh * GROUP + t;
    let stats = params.numHeads * nc * D;
    part[stats + h * nc + chunk] = hM[t];
    part[stats + params.numHeads * nc + h * nc + chunk] = hL[t];
  }
}

@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let h = wid.x;
  let nc = params.numChunks;
  let stats = params.numHeads * nc * D;
  var mx = NEG;
  for (var c = 0u; c < nc; c++) { mx = max(mx, part[stats + h * nc + c]); }
  var l = 0.0;
  for (var c = 0u; c < nc; c++) {
    l += part[stats + params.numHeads * nc + h * nc + c] * exp(part[stats + h * nc + c] - mx);
  }
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var d = t; d < D; d += WG) {
    var a = 0.0;
    for (var c = 0u; c < nc; c++) {
      a += part[(h * nc + c) * D + d] * exp(part[stats + h * nc + c] - mx);
    }
    out[h * D + d] = a * inv;
  }
}
