// KV-cache append: copies S new rows of K and V (width = numKvHeads * headDim elements each)
// into cache rows [position, position + S). Sources may be column ranges of a fused qkv row.
// @binding(0) uniform Params (below)
// @binding(1) kSrc: array<f32>  element (s, c) at s * kStride + kOff + c
// @binding(2) vSrc: array<f32>  element (s, c) at s * vStride + vOff + c (may be kSrc's buffer)
// @binding(3) kCache: array<f32> [maxSeq, width], (4) vCache: array<f32> [maxSeq, width]
// Dispatch: ceil(S * width / 256) workgroups, split over x and y (row width = num_workgroups.x * 256).
struct Params {
  rows: u32,       // S
  width: u32,
  kStride: u32, kOff: u32,
  vStride: u32, vOff: u32,
  position: u32,   // first cache row written
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> kSrc: array<f32>;
@group(0) @binding(2) var<storage, read> vSrc: array<f32>;
@group(0) @binding(3) var<storage, read_write> kCache: array<f32>;
@group(0) @binding(4) var<storage, read_write> vCache: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.rows * params.width) { return; }
  let s = i / params.width;
  let c = i % params.width;
  let dst = (params.position + s) * params.width + c;
  kCache[dst] = kSrc[s * params.kStride + params.kOff + c];
  vCache[dst] = vSrc[s * params.vStride + params.vOff + c];
}
