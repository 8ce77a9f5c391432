// Elementwise activations in f32; the override ACT picks one:
//   0 siluMul   out = silu(a) * b = a / (1 + exp(-a)) * b   (SwiGLU: a = gate, b = up)
//   1 quickGelu out = a * sigmoid(1.702 a)                  (Qwen2-VL vision MLP)
//   2 gelu      out = 0.5 a (1 + erf(a / sqrt(2)))          (erf form, as torch; merger MLP)
//   3 erf       out = erf(a)                                (exposes the approximation to tests)
//   4 geluTanh  out = 0.5 a (1 + tanh(sqrt(2/pi) (a + 0.044715 a^3)))  (torch's approximate="tanh",
//               transformers' gelu_pytorch_tanh: SigLIP / idefics2 vision)
//   5 geluTanhMul out = geluTanh(a) * b                      (GeGLU with the tanh GELU)
// The output is [rows, cols], row-major and contiguous; inputs are column windows
// of row-strided tensors, so gate|up may be the two halves of one fused [rows, 2*cols]:
//   r = i / cols, c = i % cols: a[r * a_stride + a_offset + c], b[r * b_stride + b_offset + c].
// @binding(0) uniform Params { n, cols, a_stride, a_offset, b_stride, b_offset } (n = rows * cols)
// @binding(1) a: array<f32>; @binding(2) b: array<f32> (unary ops bind a here too: every
//   declared binding must be statically used, and b is only read when ACT is 0 or 5)
// @binding(3) out: array<f32> [rows, cols] (a separate buffer from a and b)
// Dispatch: ceil(n / 256) workgroups split over x and y (grid2d); i = gid.y * nwg.x * 256 + gid.x.
struct Params { n: u32, cols: u32, a_stride: u32, a_offset: u32, b_stride: u32, b_offset: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

override ACT: u32 = 0u;

// 1 / (1 + exp(-z)); the exponent is clamped so exp stays finite (WGSL may assume no inf).
fn sigmoid(z: f32) -> f32 {
  return 1.0 / (1.0 + exp(min(-z, 88.0)));
}

// erfc(t) for t >= 1 with relative accuracy (no 1 - erf cancellation).
// 1 <= t < 4: exp(R(t - 1) - t^2), R a degree-8 near-minimax fit of log(erfc(t)) + t^2
// (approximation error 1.2e-8 relative). t >= 4: the asymptotic series
// exp(-t^2) / (t sqrt(pi)) * (1 - 1/(2t^2) + 3/(4t^4) - 15/(8t^6) + 105/(16t^8) - 945/(32t^10)),
// truncation error <= 1e-5 relative at t = 4, falling fast; t is clamped to 10 (erfc(10) ~ 2e-45).
fn erfc_tail(t_in: f32) -> f32 {
  if (t_in < 4.0) {
    let u = t_in - 1.0;
    var r = 1.5998297e-06;
    r = fma(r, u, -3.2499673e-05);
    r = fma(r, u, 3.1791217e-04);
    r = fma(r, u, -2.0481409e-03);
    r = fma(r, u, 1.0068687e-02);
    r = fma(r, u, -4.15683e-02);
    r = fma(r, u, 1.5689221e-01);
    r = fma(r, u, -6.389672e-01);
    r = fma(r, u, -8.496055e-01);
    return exp(r - t_in * t_in);
  }
  let t = min(t_in, 10.0);
  let z = 1.0 / (t * t);
  var s = -29.53125;
  s = fma(s, z, 6.5625);
  s = fma(s, z, -1.875);
  s = fma(s, z, 0.75);
  s = fma(s, z, -0.5);
  s = fma(s, z, 1.0);
  return exp(-t * t) * s / (t * 1.7724538509055159);
}

// erf in f32. |x| < 1: erf = x + x * P(x^2), P a degree-6 near-minimax fit of erf(x)/x - 1
// (approximation error 1.2e-9 relative); |x| >= 1: sign(x) * (1 - erfc_tail(|x|)).
// Simulated in f32 without fused ops the total error is <= 1.15 ulp (6.8e-8 absolute) on a
// dense sweep against mpmath; the device's exp adds its own error for |x| >= 1.
fn erf_f32(x: f32) -> f32 {
  let t = abs(x);
  if (t < 1.0) {
    let s = x * x;
    var p = 7.853847e-05;
    p = fma(p, s, -8.010189e-04);
    p = fma(p, s, 5.1883273e-03);
    p = fma(p, s, -2.6853811e-02);
    p = fma(p, s, 1.12835854e-01);
    p = fma(p, s, -3.7612626e-01);
    p = fma(p, s, 1.2837917e-01);
    return fma(x, p, x);
  }
  let r = 1.0 - erfc_tail(t);
  return select(r, -r, x < 0.0);
}

// GELU, erf form. For x/sqrt2 < -1, 1 + erf(x/sqrt2) = erfc(-x/sqrt2) is taken directly, so
// the negative tail keeps ~1e-5 relative accuracy (torch's 1 + erf form cancels there;
// both agree to ~1e-7 absolute). Elsewhere relative error <= 4e-7 (f32 simulation).
fn gelu_f32(x: f32) -> f32 {
  let u = x * 0.70710678118654752;
  if (u < -1.0) { return 0.5 * x * erfc_tail(-u); }
  return 0.5 * x * (1.0 + erf_f32(u));
}

// GELU, tanh form, as x * sigmoid(2u): 0.5 (1 + tanh(u)) = sigmoid(2u) exactly, and the sigmoid
// form does not cancel in the negative tail (torch's 1 + tanh does, to ~6e-8 absolute; both agree
// to that). x is clamped to +-20 inside u only: beyond it the result is x or ~0 in f32, and the
// cube would overflow for huge |x|.
fn gelu_tanh_f32(x: f32) -> f32 {
  let xc = clamp(x, -20.0, 20.0);
  let u = 0.7978845608028654 * fma(0.044715 * xc * xc, xc, xc);
  return x * sigmoid(2.0 * u);
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * 256u + gid.x;
  if (i >= params.n) { return; }
  let r = i / params.cols;
  let c = i - r * params.cols;
  let v = a[r * params.a_stride + params.a_offset + c];
  var y: f32;
  if (ACT == 0u) {
    y = v * sigmoid(v) * b[r * params.b_stride + params.b_offset + c];
  } else if (ACT == 1u) {
    y = v * sigmoid(1.702 * v);
  } else if (ACT == 2u) {
    y = gelu_f32(v);
  } else if (ACT == 3u) {
    y = erf_f32(v);
  } else if (ACT == 4u) {
    y = gelu_tanh_f32(v);
  } else {
    y = gelu_tanh_f32(v) * b[r * params.b_stride + params.b_offset + c];
  }
  out[i] = y;
}
