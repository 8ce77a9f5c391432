// Rotary position embedding, in place, half-rotation (rotate_half): pairs (j, j + half).
// Covers 1-D RoPE, Qwen2-VL M-RoPE (sections t/h/w) and the vision 2-D rotary: the CPU
// precomputes inv_freq[j] (restart-per-section or not, or any rope spec's table: llama3, longrope)
// and passes it in the uniform block, with a cos/sin scaling (longrope's attention factor);
// frequency j takes its position from row 0/1/2 depending on the section bounds.
// @binding(0) uniform Params (below)
// @binding(1) x: array<f32> (read_write) — element (s, col) at s * rowStride + col
// @binding(2) pos: array<i32> — [numPosRows, posStride]; u32 positions < 2^31 read the same
// Dispatch: ceil(S * numHeads * half / 256) workgroups, split over x and y
//   (row width = num_workgroups.x * 256); one invocation rotates one pair.
// Entry main_kv (a decoder layer's RoPE + KV append in one dispatch): x is a fused q|k|v row
// with numHeads = Hq + Hkv rotated heads followed by Hkv v heads; pairs of k heads (head >= qHeads)
// are also written, rotated, to kCache row position + s, and the v pair at the same place to vCache.
// @binding(3) kCache, (4) vCache: array<f32> [maxSeq, Hkv * headDim].
struct Params {
  rows: u32,        // S
  rowStride: u32,   // elements per row of x
  colOffset: u32,   // element column of head 0
  numHeads: u32,
  half: u32,        // headDim / 2
  bound0: u32,      // first frequency of section 1 (half when absent)
  bound1: u32,      // first frequency of section 2 (half when absent)
  posStride: u32,   // elements per row of pos (>= S)
  opaque: u32,      // always 0: hides the angle's f32 rounding from the compiler (no fma contraction)
  qHeads: u32,      // main_kv: heads before k's first head
  position: u32,    // main_kv: cache row of the chunk's first token
  scaling: f32,     // cos and sin multiplied by this (attention_scaling; 1 = plain rope)
  invFreq: array<vec4<f32>, 32>,  // inv_freq[j] = invFreq[j / 4][j % 4], j < half <= 128
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;

// pi/2 split for Cody-Waite: P1 and P2 have 9 significant bits, so k * P1 and k * P2 are exact
// for |k| < 2^15 (angles up to ~51000 rad); P3 is the f32 rest.
const P1: f32 = 1.5703125;
const P2: f32 = 4.8351287841796875e-4;
const P3: f32 = 3.1391647326017846e-7;
const TWO_OVER_PI: f32 = 0.63661977236758134;

// sin and cos of an f32 angle to ~1 ulp (builtin sin/cos are only specified to 2^-11 absolute
// on [-pi, pi] and degrade for large arguments). Cephes sinf/cosf polynomials on [-pi/4, pi/4].
fn sincos(a: f32) -> vec2<f32> {
  let k = round(a * TWO_OVER_PI);
  var r = a - k * P1;
  r = r - k * P2;
  r = r - k * P3;
  let z = r * r;
  let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
  let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
    - 0.5 * z + 1.0;
  let q = u32(i32(k) & 3);
  switch q {
    case 0u: { return vec2<f32>(s, c); }
    case 1u: { return vec2<f32>(c, -s); }
    case 2u: { return vec2<f32>(-s, -c); }
    default: { return vec2<f32>(-c, s); }
  }
}

/** Rotates pair j of head `head` in row s; returns the rotated (x0, x1) and the pair's base index. */
fn rotate(idx: u32) -> vec4<u32> {
  let half = params.half;
  let perRow = params.numHeads * half;
  let s = idx / perRow;
  let rem = idx % perRow;
  let head = rem / half;
  let j = rem % half;

  let row = select(0u, 1u, j >= params.bound0) + select(0u, 1u, j >= params.bound1);
  let p = f32(pos[row * params.posStride + s]);
  let inv = params.invFreq[j / 4u][j % 4u];
  // torch rounds the angle to f32 before cos/sin; keep that rounding (no fused multiply-add).
  let angle = bitcast<f32>(bitcast<u32>(p * inv) ^ params.opaque);
  let sc = sincos(angle) * params.scaling;

  let base = s * params.rowStride + params.colOffset + head * 2u * half + j;
  let x0 = x[base];
  let x1 = x[base + half];
  let y0 = x0 * sc.y - x1 * sc.x;
  let y1 = x1 * sc.y + x0 * sc.x;
  x[base] = y0;
  x[base + half] = y1;
  return vec4<u32>(bitcast<u32>(y0), bitcast<u32>(y1), s, head);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = gid.y * nwg.x * 256u + gid.x;
  if (idx >= params.rows * params.numHeads * params.half) { return; }
  _ = rotate(idx);
}

@group(0) @binding(3) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(4) var<storage, read_write> vCache: array<f32>;

@compute @workgroup_size(256)
fn main_kv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = gid.y * nwg.x * 256u + gid.x;
  let half = params.half;
  if (idx >= params.rows * params.numHeads * half) { return; }
  let r = rotate(idx);
  let head = r.w;
  if (head < params.qHeads) { return; }
  let s = r.z;
  let kvHead = head - params.qHeads;
  let j = idx % half;
  let kvWidth = (params.numHeads - params.qHeads) * 2u * half;
  let dst = (params.position + s) * kvWidth + kvHead * 2u * half + j;
  kCache[dst] = bitcast<f32>(r.x);
  kCache[dst + half] = bitcast<f32>(r.y);
  // v's heads follow the rotated heads in the fused row.
  let v = s * params.rowStride + params.colOffset + params.numHeads * 2u * half + kvHead * 2u * half + j;
  vCache[dst] = x[v];
  vCache[dst + half] = x[v + half];
}
