// Rescale + normalize + patchify of 8-bit GpuImages (src/vision/gpu_image.ts) straight into the
// rows the patch-embedding GEMM reads, so patch rows never exist on the CPU.
// Normalization reads a [3 * 256] f32 table (vision/normalize.ts normalizeTable, the CPU path's
// own values), so each value is bit-identical to the CPU path.
//
// patches_u8: out[base + r * cols + k], cols = 3 * tps * ps * ps, for a grid of gh x gw patches
//   whose top-left pixel is (x0, y0) in the image (negative or past the edge: padding):
//   r walks merge windows of m x m patches row-major, then the patches inside a window row-major
//   (m = 1: plain row-major); k = (channel, frame, py, px). Frame f < tps reads frame_a (f = 0)
//   or frame_b (f = 1). A pixel outside the image reads the pad byte of its channel.
// chw_u8: out[c * h * w + y * w + x] = the normalized pixel (x0 + x, y0 + y), same padding rule.
// Dispatch: ceil(count / 256) workgroups over x and y (grid2d), count = output values.
struct Params {
  count: u32,      // output values this dispatch writes
  base: u32,       // first output index
  ps: u32,
  m: u32,
  tps: u32,
  gw: u32,         // patch grid width (patches_*) / region width (chw_u8)
  gh: u32,         // patch grid height (patches_*) / region height (chw_u8)
  x0: i32,
  y0: i32,
  src_w: u32,
  src_h: u32,
  channels: u32,   // source bytes per pixel (3 or 4), both frames
  row_bytes: u32,  // source bytes per row, both frames
  pad: u32,        // pad bytes, R | G << 8 | B << 16
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> lut: array<f32>;
@group(0) @binding(2) var<storage, read> frame_a: array<u32>;
@group(0) @binding(3) var<storage, read> frame_b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn byte_of(word: u32, i: u32) -> u32 {
  return (word >> ((i & 3u) * 8u)) & 255u;
}

// The byte of channel c at image pixel (x, y) of frame f, or the pad byte outside the image.
fn pixel(f: u32, c: u32, x: i32, y: i32) -> u32 {
  if (x < 0 || y < 0 || u32(x) >= params.src_w || u32(y) >= params.src_h) {
    return (params.pad >> (c * 8u)) & 255u;
  }
  let i = u32(y) * params.row_bytes + u32(x) * params.channels + c;
  if (f == 0u) { return byte_of(frame_a[i >> 2u], i); }
  return byte_of(frame_b[i >> 2u], i);
}

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
  return gid.y * nwg.x * 256u + gid.x;
}

// Patch (grid row, grid column) of output row r, in merge-window order.
fn patch_of_row(r: u32) -> vec2<u32> {
  let mm = params.m * params.m;
  let window = r / mm;
  let inner = r % mm;
  let windows_w = params.gw / params.m;
  return vec2<u32>((window / windows_w) * params.m + inner / params.m, (window % windows_w) * params.m + inner % params.m);
}

@compute @workgroup_size(256)
fn patches_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.count) { return; }
  let pp = params.ps * params.ps;
  let cols = 3u * params.tps * pp;
  let r = i / cols;
  let k = i % cols;
  let c = k / (params.tps * pp);
  let f = (k / pp) % params.tps;
  let py = (k / params.ps) % params.ps;
  let px = k % params.ps;
  let pat = patch_of_row(r);
  let x = params.x0 + i32(pat.y * params.ps + px);
  let y = params.y0 + i32(pat.x * params.ps + py);
  out[params.base + i] = lut[c * 256u + pixel(f, c, x, y)];
}

@compute @workgroup_size(256)
fn chw_u8(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = index(gid, nwg);
  if (i >= params.count) { return; }
  let plane = params.gw * params.gh;
  let c = i / plane;
  let y = (i % plane) / params.gw;
  let x = i % params.gw;
  out[params.base + i] = lut[c * 256u + pixel(0u, c, params.x0 + i32(x), params.y0 + i32(y))];
}
