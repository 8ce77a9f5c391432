// RGBA over an opaque background colour, bit-exact with Pillow's Image.alpha_composite onto
// Image.new("RGBA", size, background) then convert("RGB") (libImaging/AlphaComposite.c; the CPU
// port is vision/alpha.ts): 7 extra bits, divisions by 255 as shift-adds with rounding.
// Reads a 4-channel GpuImage, writes RGBX (one u32 per pixel).
// @binding(0) uniform Params, (1) src: array<u32> (RGBA bytes, row_bytes apart), (2) dst: array<u32>
// Dispatch: ceil(w * h / 256) workgroups over x and y (grid2d).
struct Params {
  width: u32,
  height: u32,
  row_bytes: u32,
  background: u32, // R | G << 8 | B << 16
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn shift_div255(x: u32) -> u32 {
  return ((x >> 8u) + x) >> 8u;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.width * params.height) { return; }
  let x = i % params.width;
  let y = i / params.width;
  // row_bytes is a multiple of 4 for 4-channel images, so one word is one pixel.
  let px = src[(y * params.row_bytes) / 4u + x];
  let a = px >> 24u;
  if (a == 0u) {
    dst[i] = (params.background & 0xffffffu) | (255u << 24u);
    return;
  }
  let one = 1u << 7u;
  let blend = 255u * (255u - a);
  let out_a255 = a * 255u + blend;
  let coef1 = (a * 255u * 255u * one) / out_a255;
  let coef2 = 255u * one - coef1;
  var rgb = 255u << 24u;
  for (var c = 0u; c < 3u; c++) {
    let s = (px >> (8u * c)) & 255u;
    let b = (params.background >> (8u * c)) & 255u;
    let tmp = s * coef1 + b * coef2;
    rgb |= (shift_div255(tmp + (0x80u << 7u)) >> 7u) << (8u * c);
  }
  dst[i] = rgb;
}
