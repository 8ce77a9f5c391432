// Bandwidth probe: dst[i] = src[i] over vec4<u32>, one element per thread.
// @binding(0) src: array<vec4<u32>>, (1) dst: array<vec4<u32>>
// Dispatch: (ceil(n / 256) split over x/y); n = arrayLength(&dst).
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i < arrayLength(&dst)) { dst[i] = src[i]; }
}
