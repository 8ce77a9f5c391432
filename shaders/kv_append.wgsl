// KV-cache append: copies S new rows of K and V (width = numKvHeads * headDim elements each)
// into cache rows [position, position + S). Sources may be column ranges of a fused qkv row.
// @binding(0) uniform Params (below)
// @binding(1) kSrc: array<f32>  element (s, c) at s * kStride + kOff + c
// @binding(2) vSrc: array<f32>  element (s, c) at s * vStride + vOff + c (may be kSrc's buffer)
// @binding(3) kCache: array<u32>, (4) vCache: array<u32>: [maxSeq, dstStride] elements, f32 bits
//   (KV_F16 = false) or f16 pairs packed with pack2x16float (KV_F16 = true: dstStride is even, the
//   columns [width, dstStride) of a row are written as 0; values are clamped to +-65504 first, so
//   the conversion never leaves f16's finite range, where WGSL leaves the result undefined).
// Dispatch: ceil(threads / 256) workgroups, split over x and y (row width = num_workgroups.x * 256);
//   threads = S * width (f32: one per element) or S * dstStride / 2 (f16: one per u32 word).
struct Params {
  rows: u32,       // S
  width: u32,
  kStride: u32, kOff: u32,
  vStride: u32, vOff: u32,
  position: u32,   // first cache row written
  dstStride: u32,  // cache row stride in elements
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> kSrc: array<f32>;
@group(0) @binding(2) var<storage, read> vSrc: array<f32>;
@group(0) @binding(3) var<storage, read_write> kCache: array<u32>;
@group(0) @binding(4) var<storage, read_write> vCache: array<u32>;

override KV_F16: bool = false;
const F16_MAX: f32 = 65504.0;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (KV_F16) {
    let words = params.dstStride / 2u;
    if (i >= params.rows * words) { return; }
    let s = i / words;
    let c = (i % words) * 2u;
    var kp = vec2<f32>(0.0);
    var vp = vec2<f32>(0.0);
    for (var e = 0u; e < 2u; e++) {
      if (c + e < params.width) {
        kp[e] = kSrc[s * params.kStride + params.kOff + c + e];
        vp[e] = vSrc[s * params.vStride + params.vOff + c + e];
      }
    }
    let dst = (params.position + s) * words + i % words;
    kCache[dst] = pack2x16float(clamp(kp, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
    vCache[dst] = pack2x16float(clamp(vp, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
    return;
  }
  if (i >= params.rows * params.width) { return; }
  let s = i / params.width;
  let c = i % params.width;
  let dst = (params.position + s) * params.dstStride + c;
  kCache[dst] = bitcast<u32>(kSrc[s * params.kStride + params.kOff + c]);
  vCache[dst] = bitcast<u32>(vSrc[s * params.vStride + params.vOff + c]);
}
