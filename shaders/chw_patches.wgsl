// Patch rows of an f32 [3, src_h, src_w] (planar CHW) tensor, e.g. a float-resized view:
// out[base + r * cols + k], cols = 3 * ps * ps, r row-major over a gw x gh patch grid whose
// top-left pixel is (x0, y0), k = (channel, py, px).
// Dispatch: ceil(count / 256) workgroups over x and y (grid2d).
struct Params {
  count: u32,
  base: u32,
  ps: u32,
  gw: u32,
  x0: u32,
  y0: u32,
  src_w: u32,
  src_h: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.count) { return; }
  let pp = params.ps * params.ps;
  let cols = 3u * pp;
  let r = i / cols;
  let k = i % cols;
  let c = k / pp;
  let py = (k / params.ps) % params.ps;
  let px = k % params.ps;
  let x = params.x0 + (r % params.gw) * params.ps + px;
  let y = params.y0 + (r / params.gw) * params.ps + py;
  out[params.base + i] = src[(c * params.src_h + y) * params.src_w + x];
}
