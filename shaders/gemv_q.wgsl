// Small-M linear with a q4/q8 weight: y[m, out_col + n] = sum_k x[m, k] * W[n, k] (+ bias[out_col + n]) (+ y, with accumulate).
// W layout (src/quant/formats.ts): groups of 32 along K; q4 = one vec4<u32> per group (nibble i at
// bits 4*(i%8) of word i/8, value (q - 8) * scale), q8 = two vec4<u32> per group (signed byte i%4 of
// word i/4, value q * scale). Scales: f16 pairs in u32, [N, groups]. Requires K % 4 == 0 (x rows
// are read as vec4); other K go to matmul_q.wgsl.
// Entry points: main (symmetric groups, as above) and main_zeros (asymmetric groups, with the
// override ZEROS = true): codes are unsigned (q4 0..15, q8 0..255), value = (q - zero) * scale,
// zero byte g % 4 of word g / 4 of the row-major [N, groups] list (binding 7). The zeros binding
// is only referenced from main_zeros, so main's auto layout (and bind group) does not have it.
// With NORM (override): y = rmsnorm(x) W^T: x is scaled by norm_weight as it is staged and the row's
// sum of squares is reduced beside the dot products; the result is multiplied by inverseSqrt(mean + eps).
// @binding(0) uniform Params { M, N, K, out_col, out_stride, has_bias, accumulate, eps }   (N = rows of this weight/shard)
// (1) x: array<vec4<f32>> [M, K / 4]
// (2) w: array<vec4<u32>> [N, groups * BITS / 4]
// (3) scales: array<u32> (f16 pairs) [N, groups]
// (4) bias: array<f32>, indexed out_col + n (bind any read-only buffer when has_bias is 0)
// (5) y: array<f32>, element (m, out_col + n) at m * out_stride + out_col + n
// (6) norm_weight: array<vec4<f32>> [K / 4] (bind any read-only buffer without NORM)
// (7) zeros: array<u32> [ceil(N * groups / 4)] (main_zeros only)
// Workgroup (LANES, TEAMS). A team owns R consecutive output rows; its lanes walk K one group at a
// time (lane l takes groups l, l + LANES, ...), so a team reads LANES consecutive 16/32-byte groups
// of each row per step (coalesced). x is staged in workgroup memory, XC vec4s (a multiple of 8, one
// group) of each of the MROWS rows at a time, by the whole workgroup: every x value is read from
// global memory once per workgroup instead of once per team (for q4, a team's x bytes exceeded its
// weight bytes). Per-lane partials are tree-reduced in shared memory at the end.
// Dispatch: (tiles_x, tiles_y, ceil(M / MROWS)), tiles_x * tiles_y >= ceil(N / (TEAMS * R)) (grid2d).

struct Params { M: u32, N: u32, K: u32, out_col: u32, out_stride: u32, has_bias: u32, accumulate: u32, eps: f32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> norm_weight: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> zeros: array<u32>;

override BITS: u32 = 4u;        // 4 or 8
override NORM: bool = false;  // fused RMSNorm (a pipeline constant: no per-element branch without it)
override ZEROS: bool = false;   // unsigned codes with zero points (set for main_zeros)
override LANES: u32 = 32u;      // threads along K per team; power of two, >= R * MROWS
override TEAMS: u32 = 8u;       // teams per workgroup
override R: u32 = 1u;           // output rows per team, R * MROWS <= MAX_RM
override MROWS: u32 = 1u;       // x rows per workgroup
override VPG: u32 = BITS / 4u;  // vec4<u32> per group
override RM: u32 = R * MROWS;
override XC: u32 = 256u;        // x vec4s per row staged at a time (multiple of 8)

const MAX_R = 8u;
const MAX_RM = 8u;
const MAX_MROWS = 4u;

override SLOTS: u32 = RM + MROWS;  // RM dot products, then MROWS sums of squares (norm)
var<workgroup> partial: array<f32, SLOTS * TEAMS * LANES>;  // [slot][team][lane]
var<workgroup> xs: array<vec4<f32>, XC * MROWS>;               // [m][chunk vec4] (normed when NORM)

// Stages x[m0 .. m0 + MROWS, c0 .. c0 + XC): each element once, by the whole workgroup (with
// NORM, also adds this thread's staged elements' squares into ss).
fn stage_x(tid: u32, m0: u32, c0: u32, K4: u32, ss: ptr<function, array<f32, MAX_MROWS>>) {
  workgroupBarrier();  // the previous chunk's reads are done
  for (var e = tid; e < XC * MROWS; e += LANES * TEAMS) {
    let m = e / XC;
    let k4 = c0 + e % XC;
    var xv = vec4<f32>(0.0);
    // Past K only padding follows; x there is never read (staged as zero), nor counted in ss.
    if (k4 < K4 && m0 + m < params.M) {
      xv = x[(m0 + m) * K4 + k4];
      if (NORM) {
        (*ss)[m] += dot(xv, xv);
        xv *= norm_weight[k4];
      }
    }
    xs[e] = xv;
  }
  workgroupBarrier();
}

// Adds group g of the team's R rows (words q, scales s, zero points z (ZEROS only)) times the
// staged x into acc, one u32 word at a time: 8 (q4) or 4 (q8) weights per row.
fn group_dots(
  g: u32, c0: u32, q: ptr<function, array<vec4<u32>, MAX_R * 2u>>, s: ptr<function, array<f32, MAX_R>>,
  z: ptr<function, array<f32, MAX_R>>, acc: ptr<function, array<f32, MAX_RM>>,
) {
  for (var wd = 0u; wd < 4u * VPG; wd++) {
    let xi = g * 8u + wd * (8u / BITS) - c0;  // first staged x vec4 of this word
    var xa: array<vec4<f32>, MAX_MROWS>;
    var xb: array<vec4<f32>, MAX_MROWS>;
    for (var m = 0u; m < MROWS; m++) {
      xa[m] = xs[m * XC + xi];
      if (BITS == 4u) { xb[m] = xs[m * XC + xi + 1u]; }
    }
    for (var r = 0u; r < R; r++) {
      let word = vec4<u32>((*q)[r * VPG + wd / 4u][wd % 4u]);
      let sv = vec4<f32>((*s)[r]);
      if (BITS == 4u) {
        // (q - 8) * s (or (q - zero) * s) as one exact fma: q*s - 8s.
        let off = vec4<f32>(-select(8.0, (*z)[r], ZEROS) * (*s)[r]);
        let lo = fma(vec4<f32>((word >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)), sv, off);
        let hi = fma(vec4<f32>((word >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u)), sv, off);
        for (var m = 0u; m < MROWS; m++) { (*acc)[r * MROWS + m] += dot(lo, xa[m]) + dot(hi, xb[m]); }
      } else if (ZEROS) {
        // Unsigned bytes: (q - zero) * s as one exact fma.
        let b = (word >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
        let wv = fma(vec4<f32>(b), sv, vec4<f32>(-(*z)[r] * (*s)[r]));
        for (var m = 0u; m < MROWS; m++) { (*acc)[r * MROWS + m] += dot(wv, xa[m]); }
      } else {
        // Sign-extend each byte: move it to the top, then arithmetic shift right.
        let b = bitcast<vec4<i32>>(word << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
        let wv = vec4<f32>(b) * sv;
        for (var m = 0u; m < MROWS; m++) { (*acc)[r * MROWS + m] += dot(wv, xa[m]); }
      }
    }
  }
}

// Tree reduction over the lanes of each team (with norm, also the sums of squares), then the
// epilogue (norm factor, bias, accumulate) and the store.
fn reduce_store(
  lane: u32, team: u32, n0: u32, m0: u32, acc: ptr<function, array<f32, MAX_RM>>, ss: ptr<function, array<f32, MAX_MROWS>>,
) {
  let slots = select(RM, RM + MROWS, NORM);
  for (var i = 0u; i < RM; i++) { partial[(i * TEAMS + team) * LANES + lane] = (*acc)[i]; }
  if (NORM) {
    for (var m = 0u; m < MROWS; m++) { partial[((RM + m) * TEAMS + team) * LANES + lane] = (*ss)[m]; }
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
        // Every thread of the workgroup staged part of x: sum the teams' lane-reduced sums.
        var sum_sq = 0.0;
        for (var tm = 0u; tm < TEAMS; tm++) { sum_sq += partial[((RM + lane % MROWS) * TEAMS + tm) * LANES]; }
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

// The two entry points differ only in reading each group's zero point.

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
  let groups = (params.K + 31u) / 32u;

  var acc: array<f32, MAX_RM>;
  var ss: array<f32, MAX_MROWS>;
  for (var c0 = 0u; c0 < K4; c0 += XC) {
    stage_x(team * LANES + lane, m0, c0, K4, &ss);
    let gEnd = min(groups, (c0 + XC) / 8u);
    for (var g = c0 / 8u + lane; g < gEnd; g += LANES) {
      // This group of each of the team's rows; rows past N read as zero weights with zero scale.
      var q: array<vec4<u32>, MAX_R * 2u>;
      var s: array<f32, MAX_R>;
      var z: array<f32, MAX_R>;  // unused without ZEROS
      for (var r = 0u; r < R; r++) {
        let n = n0 + r;
        if (n < params.N) {
          let si = n * groups + g;
          s[r] = unpack2x16float(scales[si >> 1u])[si & 1u];
          for (var v = 0u; v < VPG; v++) { q[r * VPG + v] = w[si * VPG + v]; }
        }
      }
      group_dots(g, c0, &q, &s, &z, &acc);
    }
  }
  reduce_store(lane, team, n0, m0, &acc, &ss);
}

@compute @workgroup_size(LANES, TEAMS)
fn main_zeros(
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
  let groups = (params.K + 31u) / 32u;

  var acc: array<f32, MAX_RM>;
  var ss: array<f32, MAX_MROWS>;
  for (var c0 = 0u; c0 < K4; c0 += XC) {
    stage_x(team * LANES + lane, m0, c0, K4, &ss);
    let gEnd = min(groups, (c0 + XC) / 8u);
    for (var g = c0 / 8u + lane; g < gEnd; g += LANES) {
      var q: array<vec4<u32>, MAX_R * 2u>;
      var s: array<f32, MAX_R>;
      var z: array<f32, MAX_R>;
      for (var r = 0u; r < R; r++) {
        let n = n0 + r;
        if (n < params.N) {
          let si = n * groups + g;
          s[r] = unpack2x16float(scales[si >> 1u])[si & 1u];
          z[r] = f32((zeros[si >> 2u] >> ((si & 3u) * 8u)) & 255u);
          for (var v = 0u; v < VPG; v++) { q[r * VPG + v] = w[si * VPG + v]; }
        }
      }
      group_dots(g, c0, &q, &s, &z, &acc);
    }
  }
  reduce_store(lane, team, n0, m0, &acc, &ss);
}
