// Comparison helpers shared by every kernel test: NMSE as in ggml's test-backend-ops.

/** sum((a-b)^2) / sum(b^2); b is the reference. */
export function nmse(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != reference ${expected.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const b = expected[i];
    if (!Number.isFinite(a)) throw new Error(`non-finite value ${a} at index ${i}`);
    num += (a - b) * (a - b);
    den += b * b;
  }
  return den === 0 ? num : num / den;
}

/** Throws unless NMSE <= tol; returns the NMSE so tests can report it. */
export function expectClose(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number): number {
  const e = nmse(actual, expected);
  if (!(e <= tol)) throw new Error(`${label}: NMSE ${e.toExponential(3)} > tolerance ${tol.toExponential(1)}`);
  return e;
}

export function expectEqual(label: string, actual: ArrayLike<number>, expected: ArrayLike<number>): void {
  if (actual.length !== expected.length) throw new Error(`${label}: length ${actual.length} != ${expected.length}`);
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) throw new Error(`${label}: index ${i}: ${actual[i]} != ${expected[i]}`);
  }
}

/** Deterministic uniform values in [lo, hi) (mulberry32), so failures reproduce. */
export function randomArray(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const r = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    out[i] = lo + (hi - lo) * r;
  }
  return out;
}

/** Asserts two f32 arrays hold the same bits (bit-identical, -0 and NaN payloads included). */
export function assertSameBits(got: Float32Array, want: Float32Array, what: string): void {
  if (got.length !== want.length) throw new Error(`${what}: ${got.length} values, expected ${want.length}`);
  const a = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const b = new Uint32Array(want.buffer, want.byteOffset, want.length);
  let diff = 0;
  let first = -1;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      diff++;
      if (first < 0) first = i;
    }
  }
  if (diff > 0) throw new Error(`${what}: ${diff} of ${a.length} values differ (first at ${first}: ${got[first]} vs ${want[first]})`);
}
