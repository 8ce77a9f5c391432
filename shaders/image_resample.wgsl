// One pass of Pillow's 8-bit resampling (libImaging/Resample.c ImagingResampleHorizontal_8bpc /
// ImagingResampleVertical_8bpc) over a GpuImage (src/vision/gpu_image.ts): every output channel is
// the C `int` sum  (1 << 21) + sum_k src * kk[k]  of fixed-point taps computed on the CPU
// (vision/resample.ts precomputeCoeffs), shifted right by 22 and clipped to 0..255, so the bytes
// are Pillow's. Writes RGBX (one u32 per pixel, X = 255).
// @binding(0) uniform Params
// @binding(1) coeffs: array<i32>: [outSize * 2] (first input index, tap count), then [outSize * ksize] taps
// @binding(2) src: array<u32>, the source image's bytes
// @binding(3) dst: array<u32>, outW * rows RGBX pixels
// Dispatch: ceil(outW * rows / 256) workgroups, split over x and y (grid2d).
struct Params {
  out_w: u32,        // output pixels per row
  rows: u32,         // output rows
  row0: u32,         // horizontal: first source row read (Pillow skips rows the vertical pass never reads)
  src_channels: u32, // 3 or 4 bytes per source pixel
  src_row_bytes: u32,
  ksize: u32,
  vertical: u32,     // 0: taps run along x (per output column); 1: along y (per output row)
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> coeffs: array<i32>;
@group(0) @binding(2) var<storage, read> src: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

const HALF: i32 = 1 << 21u;

fn src_byte(i: u32) -> i32 {
  return i32((src[i >> 2u] >> ((i & 3u) * 8u)) & 255u);
}

fn clip8(ss: i32) -> u32 {
  return u32(clamp(ss >> 22u, 0, 255));
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.out_w * params.rows) { return; }
  let x = i % params.out_w;
  let y = i / params.out_w;
  // The axis the taps run along: output column x (horizontal) or row y (vertical).
  let o = select(x, y, params.vertical == 1u);
  let first = u32(coeffs[2u * o]);
  let taps = u32(coeffs[2u * o + 1u]);
  let kk0 = 2u * select(params.out_w, params.rows, params.vertical == 1u) + o * params.ksize;
  var s0 = HALF;
  var s1 = HALF;
  var s2 = HALF;
  for (var k = 0u; k < taps; k++) {
    var p: u32;
    if (params.vertical == 1u) {
      p = (first + k) * params.src_row_bytes + x * params.src_channels;
    } else {
      p = (y + params.row0) * params.src_row_bytes + (first + k) * params.src_channels;
    }
    let w = coeffs[kk0 + k];
    s0 += src_byte(p) * w;
    s1 += src_byte(p + 1u) * w;
    s2 += src_byte(p + 2u) * w;
  }
  dst[i] = clip8(s0) | (clip8(s1) << 8u) | (clip8(s2) << 16u) | (255u << 24u);
}
