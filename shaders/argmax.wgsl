// Argmax along the last dim: out[r] = the first index of the maximum of x[r, :]
// (ties -> lowest index, as torch.argmax). Values are compared as order-preserving u32 keys
// built from the f32 bits, so the result does not depend on float fast-math: -0 == +0,
// -inf is the lowest value, and any NaN counts as the maximum (torch.argmax returns the first
// NaN's index too). x is bound as array<u32> (the f32 bits).
// @binding(0) uniform Params { rows: u32, n: u32, parts: u32, chunk: u32 }
// @binding(1) src: array<u32>; @binding(2) dst: array<u32>
// Entry points (all use both bindings):
//   single: src = x [rows, n], dst = out [rows]; one workgroup per row (grid2d:
//           row = wg.y * nwg.x + wg.x).
//   stage1: src = x [rows, n], dst = partials [rows, parts, 2] (key, index); workgroups
//           (parts, rows): part p scans [p * chunk, min(n, (p + 1) * chunk)).
//   stage2: src = partials, dst = out [rows]; one workgroup per row (workgroups (rows)).
struct Params { rows: u32, n: u32, parts: u32, chunk: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

const WG: u32 = 256u;
const NO_INDEX: u32 = 0xffffffffu;
var<workgroup> red_k: array<u32, WG>;
var<workgroup> red_i: array<u32, WG>;

// Monotone map f32 bits -> u32: negatives reversed below positives; NaN above +inf.
fn key_of(bits: u32) -> u32 {
  if ((bits & 0x7fffffffu) > 0x7f800000u) { return 0xffffffffu; }
  let b = select(bits, 0u, bits == 0x80000000u); // -0 -> +0
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Whether (k2, i2) beats (k1, i1): larger key, or the same key at a lower index.
fn better(k1: u32, i1: u32, k2: u32, i2: u32) -> bool {
  return k2 > k1 || (k2 == k1 && i2 < i1);
}

// Tree-reduces every invocation's (key, index); returns the winner's index to all.
fn reduce_best(lid: u32, k: u32, i: u32) -> u32 {
  red_k[lid] = k;
  red_i[lid] = i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let k2 = red_k[lid + s];
      let i2 = red_i[lid + s];
      if (better(red_k[lid], red_i[lid], k2, i2)) {
        red_k[lid] = k2;
        red_i[lid] = i2;
      }
    }
    workgroupBarrier();
  }
  return red_i[0];
}

// Scans x[row, start..end) with stride WG; ascending indices, so strict > keeps the first.
fn scan(row: u32, start: u32, end: u32, lid: u32) -> vec2<u32> {
  var bk = 0u;
  var bi = NO_INDEX;
  let base = row * params.n;
  for (var i = start + lid; i < end; i += WG) {
    let k = key_of(src[base + i]);
    if (k > bk || bi == NO_INDEX) {
      bk = k;
      bi = i;
    }
  }
  return vec2<u32>(bk, bi);
}

@compute @workgroup_size(WG)
fn single(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= params.rows) { return; }
  let best = scan(row, 0u, params.n, lid);
  let winner = reduce_best(lid, best.x, best.y);
  if (lid == 0u) { dst[row] = winner; }
}

@compute @workgroup_size(WG)
fn stage1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let part = wg.x;
  let row = wg.y;
  let start = part * params.chunk;
  let end = min(params.n, start + params.chunk);
  let best = scan(row, start, end, lid);
  let winner = reduce_best(lid, best.x, best.y);
  if (lid == 0u) {
    let o = (row * params.parts + part) * 2u;
    dst[o] = red_k[0];
    dst[o + 1u] = winner;
  }
}

@compute @workgroup_size(WG)
fn stage2(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wg.x;
  var bk = 0u;
  var bi = NO_INDEX;
  for (var p = lid; p < params.parts; p += WG) {
    let o = (row * params.parts + p) * 2u;
    let k = src[o];
    let i = src[o + 1u];
    if (bi == NO_INDEX || better(bk, bi, k, i)) {
      bk = k;
      bi = i;
    }
  }
  let winner = reduce_best(lid, bk, bi);
  if (lid == 0u) { dst[row] = winner; }
}
