// Prefill attention, flash-attention style: O = softmax(Q K^T * scale + mask) V, online softmax
// over key tiles staged in workgroup memory; f32 throughout.
// GQA packing: a workgroup serves one kv head and BR "rows", each a (query i, head-in-group g)
// pair (pair p -> i = p / group, g = p % group), so the group's heads share every K/V tile.
// Masks: mode 0 causal with past P (query i sees keys j <= P + i); mode 1 segments (cu_seqlens:
// query i in segment s sees keys cu[s] <= j < cu[s+1]). Both give each row a key range [lo, hi).
// @binding(0) uniform Params (below)
// @binding(1) q: array<f32>  element (i, h, d) at i * qStride + qOff + h * D + d
// @binding(2) k: array<f32>  element (j, kvh, d) at j * kStride + kOff + kvh * D + d
// @binding(3) v: array<f32>  element (j, kvh, d) at j * vStride + vOff + kvh * D + d
// @binding(4) cu: array<u32> cu_seqlens (numSegments + 1); any buffer in causal mode (not read)
// @binding(5) out: array<f32> [Sq, numHeads * D]
// Overrides: D (head dim, multiple of 16, <= 128), BR (rows per tile), BC (keys per tile, multiple
// of 4, <= 32). Workgroup size BR * 4: 4 threads per row, each owning D / 16 vec4 output columns.
// Q and K/V tiles sit in workgroup memory as vec4 rows of D / 4 (+1 padding vec4).
// Dispatch: (ceil(Sq * group / BR), numKvHeads, 1).
struct Params {
  sq: u32,
  skv: u32,        // key rows that may be read
  numHeads: u32,
  group: u32,      // numHeads / numKvHeads
  qStride: u32, qOff: u32,
  kStride: u32, kOff: u32,
  vStride: u32, vOff: u32,
  past: u32,
  mode: u32,       // 0 causal, 1 segments
  numSegments: u32,
  scale: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> cu: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

override D: u32 = 128u;
override BR: u32 = 16u;
override BC: u32 = 32u;
const TPR: u32 = 4u;      // threads per row
const MAXC: u32 = 8u;     // D / 16 vec4 columns per thread, at most
const MAXS: u32 = 8u;     // BC / TPR scores per thread, at most
const NEG: f32 = -1.0e30; // "minus infinity" that stays finite under subtraction
override D4: u32 = D / 4u;
override RS: u32 = D / 4u + 1u; // padded vec4 row stride: rows start on different banks

var<workgroup> qs: array<vec4<f32>, BR * RS>;
var<workgroup> kv: array<vec4<f32>, BC * RS>;  // the K tile, then the V tile
var<workgroup> ps: array<f32, BR * (BC + 1u)>; // scores, then probabilities (padded rows)
var<workgroup> rowLo: array<u32, BR>;
var<workgroup> rowHi: array<u32, BR>;
var<workgroup> rowM: array<f32, BR>;
var<workgroup> rowL: array<f32, BR>;
var<workgroup> rowAlpha: array<f32, BR>;

// Keys visible to query i: [lo, hi), clamped to skv.
fn keyRange(i: u32) -> vec2<u32> {
  if (params.mode == 0u) {
    return vec2<u32>(0u, min(params.past + i + 1u, params.skv));
  }
  let n = params.numSegments;
  if (n == 0u || i >= cu[n]) { return vec2<u32>(0u, 0u); }
  // Largest s < n with cu[s] <= i.
  var a = 0u;
  var b = n - 1u;
  while (a < b) {
    let m = (a + b + 1u) / 2u;
    if (cu[m] <= i) { a = m; } else { b = m - 1u; }
  }
  return vec2<u32>(min(cu[a], params.skv), min(cu[a + 1u], params.skv));
}

fn loadK(base: u32) -> vec4<f32> { return vec4<f32>(k[base], k[base + 1u], k[base + 2u], k[base + 3u]); }
fn loadV(base: u32) -> vec4<f32> { return vec4<f32>(v[base], v[base + 1u], v[base + 2u], v[base + 3u]); }

@compute @workgroup_size(BR * TPR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let wg = BR * TPR;
  let group = params.group;
  let kvh = wid.y;
  let pair0 = wid.x * BR;
  let pairs = params.sq * group;
  // Key range of the whole tile (rows are sorted by i; lo and hi are monotone in i). Uniform.
  let i0 = pair0 / group;
  let i1 = (min(pair0 + BR, pairs) - 1u) / group;
  let kvLo = keyRange(i0).x;
  let kvHi = keyRange(i1).y;

  for (var e = t; e < BR * D4; e += wg) {
    let r = e / D4;
    let d4 = e % D4;
    let p = pair0 + r;
    var val = vec4<f32>(0.0);
    if (p < pairs) {
      let h = kvh * group + p % group;
      let b = (p / group) * params.qStride + params.qOff + h * D + d4 * 4u;
      val = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * params.scale;
    }
    qs[r * RS + d4] = val;
  }
  if (t < BR) {
    let p = pair0 + t;
    var range = vec2<u32>(0u, 0u);
    if (p < pairs) { range = keyRange(p / group); }
    rowLo[t] = range.x;
    rowHi[t] = range.y;
    rowM[t] = NEG;
    rowL[t] = 0.0;
  }

  let r = t / TPR;
  let j = t % TPR;
  let ncol = D4 / TPR;
  let nsc = BC / TPR;
  var acc = array<vec4<f32>, MAXC>();

  for (var kt = kvLo; kt < kvHi; kt += BC) {
    workgroupBarrier(); // previous tile's P.V is done with kv and ps
    for (var e = t; e < BC * D4; e += wg) {
      let c = e / D4;
      let d4 = e % D4;
      let key = kt + c;
      var val = vec4<f32>(0.0);
      if (key < kvHi) { val = loadK(key * params.kStride + params.kOff + kvh * D + d4 * 4u); }
      kv[c * RS + d4] = val;
    }
    workgroupBarrier();

    // Scores: thread (r, j) takes keys j, j + 4, j + 8, ...
    // Explicit initializer: Dawn + SwiftShader zero an uninitialized loop-local var only once.
    var s = array<f32, MAXS>();
    for (var d4 = 0u; d4 < D4; d4++) {
      let qd = qs[r * RS + d4];
      for (var m = 0u; m < nsc; m++) {
        s[m] += dot(qd, kv[(j + m * TPR) * RS + d4]);
      }
    }
    for (var m = 0u; m < nsc; m++) {
      ps[r * (BC + 1u) + j + m * TPR] = s[m];
    }
    workgroupBarrier();

    // One thread per row: online-softmax update. Meanwhile everyone loads the V tile.
    if (t < BR) {
      let lo = rowLo[t];
      let hi = rowHi[t];
      let mOld = rowM[t];
      var mx = mOld;
      for (var c = 0u; c < BC; c++) {
        let key = kt + c;
        if (key >= lo && key < hi) { mx = max(mx, ps[t * (BC + 1u) + c]); }
      }
      var sum = 0.0;
      for (var c = 0u; c < BC; c++) {
        let key = kt + c;
        var pr = 0.0;
        if (key >= lo && key < hi) { pr = exp(ps[t * (BC + 1u) + c] - mx); }
        ps[t * (BC + 1u) + c] = pr;
        sum += pr;
      }
      let alpha = exp(mOld - mx);
      rowAlpha[t] = alpha;
      rowL[t] = rowL[t] * alpha + sum;
      rowM[t] = mx;
    }
    for (var e = t; e < BC * D4; e += wg) {
      let c = e / D4;
      let d4 = e % D4;
      let key = kt + c;
      var val = vec4<f32>(0.0);
      if (key < kvHi) { val = loadV(key * params.vStride + params.vOff + kvh * D + d4 * 4u); }
      kv[c * RS + d4] = val;
    }
    workgroupBarrier();

    // P.V: thread (r, j) owns vec4 columns j, j + 4, j + 8, ... of row r.
    let alpha = rowAlpha[r];
    for (var c2 = 0u; c2 < ncol; c2++) { acc[c2] *= alpha; }
    for (var c = 0u; c < BC; c++) {
      let pr = ps[r * (BC + 1u) + c];
      for (var c2 = 0u; c2 < ncol; c2++) {
        acc[c2] += pr * kv[c * RS + j + c2 * TPR];
      }
    }
  }
  workgroupBarrier(); // rowL is visible even when the tile loop ran zero times

  let p = pair0 + r;
  if (p < pairs) {
    let l = rowL[r];
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let h = kvh * group + p % group;
    let base = (p / group) * params.numHeads * D + h * D;
    for (var c2 = 0u; c2 < ncol; c2++) {
      let o = base + (j + c2 * TPR) * 4u;
      let val = acc[c2] * inv;
      out[o] = val.x;
      out[o + 1u] = val.y;
      out[o + 2u] = val.z;
      out[o + 3u] = val.w;
    }
  }
}
