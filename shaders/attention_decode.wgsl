// Decode attention (one query row) against a KV cache, split over the keys (flash-decoding).
// The row sees keys [lo, hi), and with maskMode 1 only those with keep[j] != 0.
// Entry `partial`: workgroup (chunk, y) handles keys [lo + chunk * chunkSize, min(+chunkSize, hi))
//   for the GROUP query heads y * GROUP .. y * GROUP + GROUP - 1 (kv head y / slices): per head the
//   chunk's max m, sum l = sum exp(s - m) and unnormalized acc[d] = sum exp(s - m) v[d].
//   Keys are processed WG at a time, online softmax.
// Entry `combine`: workgroup h merges head h's chunks: out = sum_c e^(m_c-M) acc_c / sum_c e^(m_c-M) l_c
//   (zeros when no key was visible).
// @binding(0) uniform Params (below), shared by both entries
// partial: @binding(1) part: array<f32> (read_write), (2) q: array<f32>, (3) k, (4) v: array<u32>
//   (f32 bits, or with KV_F16 packed f16 pairs: element i is half i & 1 of word i >> 1),
//   (5) keep: array<u32> (key mask; any buffer when maskMode = 0, not read)
//   q element (h, d) at qOff + h * D + d; k/v element (j, kvh, d) at j * stride + off + kvh * D + d
// combine: @binding(1) part: array<f32>, (2) out: array<f32> [numHeads * D]
//   (binding 2 is q in one entry and out in the other: WGSL only forbids sharing within one entry)
// part layout: acc [numHeads][numChunks][D], then m [numHeads][numChunks], then l [numHeads][numChunks].
// Overrides: KV_F16 (k/v hold f16 pairs), D (head dim, any), GROUP (heads per workgroup, <= 16: the kv group, or a slice of it
// when workgroup memory is short). Query and accumulators sit in workgroup memory as D4 = ceil(D / 4)
// vec4 per head, zero beyond D.
// Dispatch: partial (numChunks, numKvHeads * slices, 1); combine (numHeads, 1, 1). Workgroup size WG = 64.
struct Params {
  lo: u32,         // first visible key
  hi: u32,         // one past the last visible key
  chunkSize: u32,  // multiple of WG
  numChunks: u32,
  numHeads: u32,
  slices: u32,     // workgroups per kv head (group / GROUP)
  qOff: u32,
  kStride: u32, kOff: u32,
  vStride: u32, vOff: u32,
  maskMode: u32,   // 0 none, 1 keep[] masks keys
  scale: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> part: array<f32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k: array<u32>;
@group(0) @binding(4) var<storage, read> v: array<u32>;
@group(0) @binding(5) var<storage, read> keep: array<u32>;

override D: u32 = 128u;
override KV_F16: bool = false; // k/v hold packed f16 pairs (an f16 KV cache)
override GROUP: u32 = 1u;
override D4: u32 = (D + 3u) / 4u;
override TAIL: bool = D % 4u != 0u; // the last vec4 column is partial
const WG: u32 = 64u;
const MAXG: u32 = 16u;
const NEG: f32 = -1.0e30; // "minus infinity" that stays finite under subtraction

var<workgroup> qs: array<vec4<f32>, GROUP * D4>;
var<workgroup> accs: array<vec4<f32>, GROUP * D4>;
var<workgroup> ps: array<f32, GROUP * WG>;
var<workgroup> vis: array<u32, WG>;
var<workgroup> hM: array<f32, MAXG>;
var<workgroup> hL: array<f32, MAXG>;
var<workgroup> hAlpha: array<f32, MAXG>;

// Four elements of one head row starting at column d (a multiple of 4); zeros past D.
fn loadQ(base: u32, d: u32) -> vec4<f32> {
  if (!TAIL || d + 4u <= D) { return vec4<f32>(q[base + d], q[base + d + 1u], q[base + d + 2u], q[base + d + 3u]); }
  var r = vec4<f32>(0.0);
  for (var e = 0u; d + e < D; e++) { r[e] = q[base + d + e]; }
  return r;
}
// k and v: f32 bits (KV_F16 = false: bitcast, exact) or f16 pairs (KV_F16 = true: element i is
// half i & 1 of word i >> 1; a vec4 starting on an even element is two words).
fn kAt(i: u32) -> f32 {
  if (KV_F16) {
    let w = unpack2x16float(k[i >> 1u]);
    return select(w.x, w.y, (i & 1u) == 1u);
  }
  return bitcast<f32>(k[i]);
}
fn vAt(i: u32) -> f32 {
  if (KV_F16) {
    let w = unpack2x16float(v[i >> 1u]);
    return select(w.x, w.y, (i & 1u) == 1u);
  }
  return bitcast<f32>(v[i]);
}
fn loadK(base: u32, d: u32) -> vec4<f32> {
  let i = base + d;
  if (!TAIL || d + 4u <= D) {
    if (!KV_F16) { return bitcast<vec4<f32>>(vec4<u32>(k[i], k[i + 1u], k[i + 2u], k[i + 3u])); }
    if ((i & 1u) == 0u) { return vec4<f32>(unpack2x16float(k[i >> 1u]), unpack2x16float(k[(i >> 1u) + 1u])); }
    return vec4<f32>(kAt(i), kAt(i + 1u), kAt(i + 2u), kAt(i + 3u));
  }
  var r = vec4<f32>(0.0);
  for (var e = 0u; d + e < D; e++) { r[e] = kAt(i + e); }
  return r;
}
fn loadV(base: u32, d: u32) -> vec4<f32> {
  let i = base + d;
  if (!TAIL || d + 4u <= D) {
    if (!KV_F16) { return bitcast<vec4<f32>>(vec4<u32>(v[i], v[i + 1u], v[i + 2u], v[i + 3u])); }
    if ((i & 1u) == 0u) { return vec4<f32>(unpack2x16float(v[i >> 1u]), unpack2x16float(v[(i >> 1u) + 1u])); }
    return vec4<f32>(vAt(i), vAt(i + 1u), vAt(i + 2u), vAt(i + 3u));
  }
  var r = vec4<f32>(0.0);
  for (var e = 0u; d + e < D; e++) { r[e] = vAt(i + e); }
  return r;
}

@compute @workgroup_size(WG)
fn partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let chunk = wid.x;
  let h0 = wid.y * GROUP;             // first query head of this workgroup
  let kvh = wid.y / params.slices;
  let start = params.lo + chunk * params.chunkSize;
  let end = min(start + params.chunkSize, params.hi);
  let nc = params.numChunks;

  for (var e = t; e < GROUP * D4; e += WG) {
    let g = e / D4;
    qs[e] = loadQ(params.qOff + (h0 + g) * D, (e % D4) * 4u) * params.scale;
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
    var seen = 0u;
    if (key < end) {
      seen = 1u;
      if (params.maskMode != 0u) { seen = select(0u, 1u, keep[key] != 0u); }
      let base = key * params.kStride + params.kOff + kvh * D;
      for (var d4 = 0u; d4 < D4; d4++) {
        let k4 = loadK(base, d4 * 4u);
        for (var g = 0u; g < GROUP; g++) { s[g] += dot(qs[g * D4 + d4], k4); }
      }
    }
    for (var g = 0u; g < GROUP; g++) { ps[g * WG + t] = s[g]; }
    vis[t] = seen;
    workgroupBarrier();

    let n = min(WG, end - kt);
    if (t < GROUP) {
      let mOld = hM[t];
      var mx = mOld;
      for (var c = 0u; c < n; c++) {
        if (vis[c] != 0u) { mx = max(mx, ps[t * WG + c]); }
      }
      var sum = 0.0;
      for (var c = 0u; c < n; c++) {
        var pr = 0.0;
        if (vis[c] != 0u) { pr = exp(ps[t * WG + c] - mx); }
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
      let d = (o % D4) * 4u;
      var a = accs[o] * hAlpha[g];
      var vb = kt * params.vStride + params.vOff + kvh * D;
      for (var c = 0u; c < n; c++) {
        a += ps[g * WG + c] * loadV(vb, d);
        vb += params.vStride;
      }
      accs[o] = a;
    }
  }
  workgroupBarrier();

  for (var o = t; o < GROUP * D4; o += WG) {
    let h = h0 + o / D4;
    let d = (o % D4) * 4u;
    let b = (h * nc + chunk) * D + d;
    let a = accs[o];
    if (!TAIL || d + 4u <= D) {
      part[b] = a.x;
      part[b + 1u] = a.y;
      part[b + 2u] = a.z;
      part[b + 3u] = a.w;
    } else {
      for (var e = 0u; d + e < D; e++) { part[b + e] = a[e]; }
    }
  }
  if (t < GROUP) {
    let h = h0 + t;
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
