// Prefill / encoder / cross attention, flash-attention style: O = softmax(Q K^T * scale + mask) V,
// online softmax over key tiles staged in workgroup memory; f32 throughout.
// GQA packing: a workgroup serves one kv head and BR "rows", each a (query i, head-in-group g)
// pair (pair p -> i = p / group, g = p % group), so the group's heads share every K/V tile.
// Key range of query i, [lo, hi) clamped to skv, by mode:
//   0 causal: [0, past + i + 1)           1 segments (cu_seqlens): [cu[s], cu[s+1]) for i's segment s
//   2 full:   [0, skv) (Sq may differ)    3 ranges: [rows[2i], rows[2i+1]) per query row
// Key mask (maskMode): 0 none; 1 key j is visible only if keep[j] != 0 (every row);
//   2 the same, but only for rows i with keep[i] == 0 (mllama's vision encoder: (1-m_i)(1-m_j) masking).
// Empty rows: a row with lo >= hi gets zeros, or with emptyAll = 1 attends to all keys [0, skv)
//   without the key mask (what transformers' mllama computes for text rows before any image).
//   A row whose non-empty range is entirely key-masked gets zeros.
// @binding(0) uniform Params (below)
// @binding(1) q: array<f32>  element (i, h, d) at i * qStride + qOff + h * D + d
// @binding(2) k: array<u32>  element (j, kvh, d) at j * kStride + kOff + kvh * D + d: f32 bits, or
//   with KV_F16 f16 halves (element i in word i >> 1, low half first)
// @binding(3) v: array<u32>  element (j, kvh, d) at j * vStride + vOff + kvh * D + d, as k
// @binding(4) rows: array<u32> cu_seqlens (numSegments + 1) in mode 1, [Sq][2] ranges in mode 3;
//   any buffer otherwise (not read)
// @binding(5) keep: array<u32> key mask [>= skv] when maskMode != 0; any buffer otherwise (not read)
// @binding(6) out: array<f32> [Sq, numHeads * D]
// Overrides: KV_F16 (k/v are packed f16 pairs, e.g. an f16 KV cache), D (head dim, <= 256), BR (rows per tile), BC (keys per tile, multiple of TPR, BC / TPR
// <= 8), TPR (threads per row, D <= 32 * TPR). Workgroup size BR * TPR. Q and K/V tiles sit in
// workgroup memory as rows of D4 = ceil(D / 4) vec4 (+1 padding vec4), zero beyond D, so the dot
// products stay vec4 for any D; thread (r, j) owns vec4 output columns j, j + TPR, ...
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
  mode: u32,       // 0 causal, 1 segments, 2 full, 3 ranges
  numSegments: u32,
  maskMode: u32,   // 0 none, 1 all rows, 2 rows whose own keep entry is 0
  emptyAll: u32,   // 1: empty rows attend to every key, unmasked
  scale: f32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read> rows: array<u32>;
@group(0) @binding(5) var<storage, read> keep: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

override D: u32 = 128u;
override KV_F16: bool = false; // k/v hold packed f16 pairs (an f16 KV cache)
override BR: u32 = 16u;
override BC: u32 = 32u;
override TPR: u32 = 4u;    // threads per row
const MAXC: u32 = 8u;      // vec4 output columns per thread, at most
const MAXS: u32 = 8u;      // scores per thread per tile, at most
const NEG: f32 = -1.0e30;  // "minus infinity" that stays finite under subtraction
override D4: u32 = (D + 3u) / 4u;
override RS: u32 = D4 + 1u;                   // padded vec4 row stride: rows start on different banks
override NCOL: u32 = (D4 + TPR - 1u) / TPR;   // output columns of thread j: those < D4
override NS: u32 = BC / TPR;
// Constant after pipeline creation, so the guards they control fold away for D = 64, 80, 128...
override EVEN: bool = D4 % TPR == 0u;         // every thread owns NCOL columns
override TAIL: bool = D % 4u != 0u;           // the last vec4 column is partial

var<workgroup> qs: array<vec4<f32>, BR * RS>;
var<workgroup> kv: array<vec4<f32>, BC * RS>;  // the K tile, then the V tile
var<workgroup> ps: array<f32, BR * (BC + 1u)>; // scores, then probabilities (padded rows)
var<workgroup> kmask: array<u32, BC>;          // keep[] of the tile's keys
var<workgroup> rowLo: array<u32, BR>;
var<workgroup> rowHi: array<u32, BR>;
var<workgroup> rowMasked: array<u32, BR>;      // 1: the key mask applies to this row
var<workgroup> rowM: array<f32, BR>;
var<workgroup> rowL: array<f32, BR>;
var<workgroup> rowAlpha: array<f32, BR>;
var<workgroup> tileLo: u32;
var<workgroup> tileHi: u32;

// Keys visible to query i before the key mask: [lo, hi), clamped to skv.
fn keyRange(i: u32) -> vec2<u32> {
  let skv = params.skv;
  switch (params.mode) {
    case 0u: { return vec2<u32>(0u, min(params.past + i + 1u, skv)); }
    case 2u: { return vec2<u32>(0u, skv); }
    case 3u: { return vec2<u32>(min(rows[2u * i], skv), min(rows[2u * i + 1u], skv)); }
    default: {
      let n = params.numSegments;
      if (n == 0u || i >= rows[n]) { return vec2<u32>(0u, 0u); }
      // Largest s < n with cu[s] <= i.
      var a = 0u;
      var b = n - 1u;
      while (a < b) {
        let m = (a + b + 1u) / 2u;
        if (rows[m] <= i) { a = m; } else { b = m - 1u; }
      }
      return vec2<u32>(min(rows[a], skv), min(rows[a + 1u], skv));
    }
  }
}

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

@compute @workgroup_size(BR * TPR)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let wg = BR * TPR;
  let group = params.group;
  let kvh = wid.y;
  let pair0 = wid.x * BR;
  let pairs = params.sq * group;

  for (var e = t; e < BR * D4; e += wg) {
    let r = e / D4;
    let d4 = e % D4;
    let p = pair0 + r;
    var val = vec4<f32>(0.0);
    if (p < pairs) {
      let h = kvh * group + p % group;
      val = loadQ((p / group) * params.qStride + params.qOff + h * D, d4 * 4u) * params.scale;
    }
    qs[r * RS + d4] = val;
  }
  if (t < BR) {
    let p = pair0 + t;
    var range = vec2<u32>(0u, 0u);
    var masked = 0u;
    if (p < pairs) {
      let i = p / group;
      range = keyRange(i);
      if (params.maskMode == 1u || (params.maskMode == 2u && keep[i] == 0u)) { masked = 1u; }
      if (range.x >= range.y && params.emptyAll != 0u) {
        range = vec2<u32>(0u, params.skv);
        masked = 0u;
      }
    }
    rowLo[t] = range.x;
    rowHi[t] = range.y;
    rowMasked[t] = masked;
    rowM[t] = NEG;
    rowL[t] = 0.0;
  }
  workgroupBarrier();
  // The tile's key range: the union hull of its non-empty rows (ranges need not be monotone).
  if (t == 0u) {
    var lo = 0xffffffffu;
    var hi = 0u;
    for (var r = 0u; r < BR; r++) {
      if (rowLo[r] < rowHi[r]) {
        lo = min(lo, rowLo[r]);
        hi = max(hi, rowHi[r]);
      }
    }
    tileLo = select(0u, lo, lo < hi);
    tileHi = hi;
  }
  // Uniform loop bounds (the loop holds barriers).
  let kvLo = workgroupUniformLoad(&tileLo);
  let kvHi = workgroupUniformLoad(&tileHi);

  let r = t / TPR;
  let j = t % TPR;
  var acc = array<vec4<f32>, MAXC>();

  for (var kt = kvLo; kt < kvHi; kt += BC) {
    workgroupBarrier(); // previous tile's P.V is done with kv and ps
    for (var e = t; e < BC * D4; e += wg) {
      let c = e / D4;
      let d4 = e % D4;
      let key = kt + c;
      var val = vec4<f32>(0.0);
      if (key < kvHi) { val = loadK(key * params.kStride + params.kOff + kvh * D, d4 * 4u); }
      kv[c * RS + d4] = val;
    }
    if (params.maskMode != 0u) {
      for (var c = t; c < BC; c += wg) {
        let key = kt + c;
        var m = 0u;
        if (key < kvHi) { m = keep[key]; }
        kmask[c] = m;
      }
    }
    workgroupBarrier();

    // Scores: thread (r, j) takes keys j, j + TPR, j + 2 TPR, ...
    // Explicit initializer: Dawn + SwiftShader zero an uninitialized loop-local var only once.
    var s = array<f32, MAXS>();
    for (var d4 = 0u; d4 < D4; d4++) {
      let qd = qs[r * RS + d4];
      for (var m = 0u; m < NS; m++) {
        s[m] += dot(qd, kv[(j + m * TPR) * RS + d4]);
      }
    }
    for (var m = 0u; m < NS; m++) {
      ps[r * (BC + 1u) + j + m * TPR] = s[m];
    }
    workgroupBarrier();

    // One thread per row: online-softmax update. Meanwhile everyone loads the V tile.
    if (t < BR) {
      let lo = rowLo[t];
      let hi = rowHi[t];
      let masked = rowMasked[t] != 0u;
      let mOld = rowM[t];
      var mx = mOld;
      for (var c = 0u; c < BC; c++) {
        let key = kt + c;
        if (key >= lo && key < hi && (!masked || kmask[c] != 0u)) { mx = max(mx, ps[t * (BC + 1u) + c]); }
      }
      var sum = 0.0;
      for (var c = 0u; c < BC; c++) {
        let key = kt + c;
        var pr = 0.0;
        if (key >= lo && key < hi && (!masked || kmask[c] != 0u)) { pr = exp(ps[t * (BC + 1u) + c] - mx); }
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
      if (key < kvHi) { val = loadV(key * params.vStride + params.vOff + kvh * D, d4 * 4u); }
      kv[c * RS + d4] = val;
    }
    workgroupBarrier();

    // P.V: thread (r, j) owns vec4 columns j, j + TPR, ... of row r (those < D4).
    let alpha = rowAlpha[r];
    for (var c2 = 0u; c2 < NCOL; c2++) { acc[c2] *= alpha; }
    for (var c = 0u; c < BC; c++) {
      let pr = ps[r * (BC + 1u) + c];
      for (var c2 = 0u; c2 < NCOL; c2++) {
        let col = j + c2 * TPR;
        if (EVEN || col < D4) { acc[c2] += pr * kv[c * RS + col]; }
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
    for (var c2 = 0u; c2 < NCOL; c2++) {
      let col = j + c2 * TPR;
      if (EVEN || col < D4) {
        let o = base + col * 4u;
        let val = acc[c2] * inv;
        if (!TAIL || col * 4u + 4u <= D) {
          out[o] = val.x;
          out[o + 1u] = val.y;
          out[o + 2u] = val.z;
          out[o + 3u] = val.w;
        } else {
          for (var e = 0u; col * 4u + e < D; e++) { out[o + e] = val[e]; }
        }
      }
    }
  }
}
