// Fills a buffer with pseudo-random words for benchmark weights (same shapes and formats
// as a checkpoint's, no files). Word i = hash(seed, i), a PCG-style integer hash.
// mode 0: raw u32 bits (q4/q8 payload); 1: f32 uniform in [lo, hi);
// mode 2: two f16 halves, each uniform in [lo, hi) (f16 weights, q4/q8 scales).
// @binding(0) uniforms, (1) out: array<u32>. Dispatch: ceil(words / 256) split over x/y.
struct Params { words: u32, seed: u32, mode: u32, _pad: u32, lo: f32, hi: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

fn unit(h: u32) -> f32 {
  return f32(h >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= p.words) { return; }
  let h = pcg(i ^ pcg(p.seed));
  if (p.mode == 0u) {
    out[i] = h;
  } else if (p.mode == 1u) {
    out[i] = bitcast<u32>(mix(p.lo, p.hi, unit(h)));
  } else {
    let h2 = pcg(h);
    out[i] = pack2x16float(vec2<f32>(mix(p.lo, p.hi, unit(h)), mix(p.lo, p.hi, unit(h2))));
  }
}
