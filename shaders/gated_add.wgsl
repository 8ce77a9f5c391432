// Scalar-gated residual add, f32: out[r, c] = residual[r, c] + f(gate[gateIndex]) * x[xr, c],
// f = tanh (form 0) or 1 - tanh (form 1); the gate is one element of a weight buffer, read on
// the GPU. mllama: cross-attention layers' attn/MLP gates, the gated vision layers, the gated
// position and tile embeddings (x broadcast over rows: xr = (r / xDiv) % xRows).
// With useRowMask, rows r with rowMask[r] == 0 add nothing (mllama zeroes the cross-attention
// MLP of text rows that see no image).
// @binding(0) uniform Params (below)
// @binding(1) x: array<f32> [xRows, cols]; (2) gate: array<f32>; (3) rowMask: array<u32> [rows]
//   (any buffer when useRowMask = 0, not read)
// entry main:    @binding(4) res: array<f32> [rows, cols], (5) out: array<f32> (read_write)
// entry inplace: @binding(4) acc: array<f32> (read_write): residual and out in one buffer
// Dispatch: ceil(n / 256) workgroups split over x and y (grid2d); i = gid.y * nwg.x * 256 + gid.x.
struct Params {
  n: u32,          // rows * cols
  cols: u32,
  xRows: u32,
  xDiv: u32,
  gateIndex: u32,
  form: u32,       // 0: tanh(g), 1: 1 - tanh(g)
  useRowMask: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> rowMask: array<u32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// tanh without overflow or cancellation: an odd series for |g| < 0.125 (truncation < 1e-9
// relative), else sign(g) (1 - e) / (1 + e) with e = exp(-2|g|) <= 0.78.
fn tanh_f32(g: f32) -> f32 {
  let a = abs(g);
  if (a < 0.125) {
    let s = g * g;
    return g * (1.0 + s * (-0.33333333 + s * (0.13333333 - s * 0.053968254)));
  }
  let e = exp(-2.0 * min(a, 20.0));
  let t = (1.0 - e) / (1.0 + e);
  return select(t, -t, g < 0.0);
}

fn factor() -> f32 {
  let t = tanh_f32(gate[params.gateIndex]);
  return select(t, 1.0 - t, params.form == 1u);
}

// The gated term for element i, or 0 for a masked row.
fn term(i: u32) -> f32 {
  let r = i / params.cols;
  let c = i - r * params.cols;
  if (params.useRowMask != 0u && rowMask[r] == 0u) { return 0.0; }
  let xr = (r / params.xDiv) % params.xRows;
  return factor() * x[xr * params.cols + c];
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.n) { return; }
  out[i] = res[i] + term(i);
}

@group(0) @binding(4) var<storage, read_write> acc: array<f32>;

@compute @workgroup_size(256)
fn inplace(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.n) { return; }
  acc[i] = acc[i] + term(i);
}
