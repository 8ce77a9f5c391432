// A content key of a GPU tensor's words (ops/content_hash.ts folds the per-block results on the
// CPU): so media preprocessed on the GPU get a KV-prefix key without reading their pixels back.
// Each workgroup hashes one block of 4096 words: invocation t mixes words [16 t, 16 t + 16) of
// the block into two 32-bit lanes, then invocation 0 folds the 256 pairs in order.
// Not cryptographic (see models/common/content_hash.ts). Words past n are not read.
// @binding(0) uniform Params { n }, (1) words: array<u32>, (2) out: array<u32> (2 per block)
// Dispatch: ceil(n / 4096) workgroups over x and y (grid2d).
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> lanes: array<vec2<u32>, 256>;

fn mix(h: vec2<u32>, w: u32) -> vec2<u32> {
  let a = (h.x ^ w) * 0x01000193u;
  let b = ((h.y ^ w) * 0x5bd1e995u) ^ (h.y >> 15u);
  return vec2<u32>(a, b);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let block = wid.y * nwg.x + wid.x;
  let start = block * 4096u + t * 16u;
  var h = vec2<u32>(0x811c9dc5u, 0x01000193u);
  for (var k = 0u; k < 16u; k++) {
    if (start + k < params.n) { h = mix(h, words[start + k]); }
  }
  lanes[t] = h;
  workgroupBarrier();
  if (t == 0u) {
    var f = vec2<u32>(0x811c9dc5u ^ block, 0x01000193u);
    for (var i = 0u; i < 256u; i++) {
      f = mix(f, lanes[i].x);
      f = mix(f, lanes[i].y);
    }
    if (block * 4096u < params.n) {
      out[2u * block] = f.x;
      out[2u * block + 1u] = f.y;
    }
  }
}
