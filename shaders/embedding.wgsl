// Embedding gather: out[s, :] = table[ids[s], :] as f32, from one row shard of the table
// (rows [row_start, row_start + row_count) of the full [vocab, h] table).
// The override FORMAT picks the table format (layouts in src/quant/formats.ts):
//   0 f32 (bits as u32), 1 f16 (pairs in u32, unpack2x16float), 2 q8, 3 q4 (+ f16 scales).
// Ids outside this shard are skipped (another shard's dispatch writes them). Ids >= vocab
// (or negative i32 ids, which read as huge u32) never index the table: the dispatch with
// zero_oob = 1 writes a row of zeros for them, so the output is never left undefined.
// @binding(0) uniform Params { count, h, row_start, row_count, vocab, zero_oob, words_per_row, groups_per_row }
// @binding(1) ids: array<u32> [count]
// @binding(2) table: array<u32> (this shard's data)
// @binding(3) scales: array<u32> (q8/q4: this shard's f16 scales [row_count, groups_per_row];
//   f32/f16 bind table again, since every declared binding must be statically used)
// @binding(4) out: array<f32> [count, h]
// Dispatch: one 256-invocation workgroup per id, split over x and y (grid2d):
//   s = wg.y * nwg.x + wg.x.
struct Params {
  count: u32, h: u32, row_start: u32, row_count: u32,
  vocab: u32, zero_oob: u32, words_per_row: u32, groups_per_row: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

override FORMAT: u32 = 0u;
const WG: u32 = 256u;

fn f16_at(index: u32) -> f32 {
  return unpack2x16float(scales[index >> 1u])[index & 1u];
}

// Element (r, c) of this shard, r < row_count, c < h.
fn load(r: u32, c: u32) -> f32 {
  if (FORMAT == 0u) {
    return bitcast<f32>(table[r * params.h + c]);
  } else if (FORMAT == 1u) {
    let e = r * params.h + c;
    return unpack2x16float(table[e >> 1u])[e & 1u];
  } else if (FORMAT == 2u) {
    let word = table[r * params.words_per_row + (c >> 2u)];
    let q = extractBits(bitcast<i32>(word), (c & 3u) * 8u, 8u); // sign-extended int8
    return f32(q) * f16_at(r * params.groups_per_row + (c >> 5u));
  } else {
    let word = table[r * params.words_per_row + (c >> 3u)];
    let q = i32(extractBits(word, (c & 7u) * 4u, 4u)) - 8;
    return f32(q) * f16_at(r * params.groups_per_row + (c >> 5u));
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let s = wg.y * nwg.x + wg.x;
  if (s >= params.count) { return; }
  let id = ids[s];
  let h = params.h;
  let base = s * h;
  if (id >= params.row_start && id - params.row_start < params.row_count) {
    let r = id - params.row_start;
    for (var c = lid; c < h; c += WG) { out[base + c] = load(r, c); }
  } else if (params.zero_oob != 0u && id >= params.vocab) {
    for (var c = lid; c < h; c += WG) { out[base + c] = 0.0; }
  }
}
