// Elementwise out = a + b (f32), e.g. the residual add.
// @binding(0) uniform Params { n }
// @binding(1) a: array<f32>, (2) b: array<f32>, (3) out: array<f32> (may alias neither input)
// Dispatch: ceil(n / 256) workgroups, split over x and y (row width = num_workgroups.x * 256).
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.n) { return; }
  out[i] = a[i] + b[i];
}
