// Helpers for the primitives' fixtures that scripts/make_vision_fixtures.py
// writes: a JSON index plus one .bin of arrays back to back.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures", "vision");

/** Where one array lies in a .bin, as the script's Blob.add records it. */
export interface BlobEntry {
  offset: number;
  length: number;
  dtype: "uint8" | "float32";
  shape: number[];
}

export function readFixtureJson<T>(name: string): T {
  return JSON.parse(readFileSync(join(FIXTURES, name), "utf8")) as T;
}

export function readBlob(name: string): Uint8Array {
  return new Uint8Array(readFileSync(join(FIXTURES, name)));
}

export function u8At(blob: Uint8Array, e: BlobEntry): Uint8Array {
  if (e.dtype !== "uint8") throw new Error(`expected uint8, got ${e.dtype}`);
  return blob.subarray(e.offset, e.offset + e.length);
}

export function f32At(blob: Uint8Array, e: BlobEntry): Float32Array {
  if (e.dtype !== "float32") throw new Error(`expected float32, got ${e.dtype}`);
  // Copy: the entry is 4-aligned within the file, not necessarily within Node's pooled buffer.
  return new Float32Array(blob.slice(e.offset, e.offset + e.length).buffer);
}

/**
 * The script's lcg_image, HWC uint8: "noise" is an LCG with ~1/6 zeros and
 * ~1/6 255s; "ramp" is (x*5 + y*3 + c*60 + seed) mod 256.
 */
export function lcgImage(w: number, h: number, c: number, seed: number, kind: "noise" | "ramp"): Uint8Array {
  const out = new Uint8Array(w * h * c);
  if (kind === "ramp") {
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let ch = 0; ch < c; ch++) {
      out[(y * w + x) * c + ch] = (x * 5 + y * 3 + ch * 60 + seed) % 256;
    }
    return out;
  }
  let s = seed >>> 0;
  const step = (): number => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  for (let i = 0; i < out.length; i++) {
    const a = step() >>> 24;
    out[i] = a < 40 ? 0 : a >= 216 ? 255 : step() >>> 24;
  }
  return out;
}

/** Positions and count of differing values, for messages that say where. */
export function diffSummary(a: ArrayLike<number>, b: ArrayLike<number>): string | null {
  if (a.length !== b.length) return `length ${a.length} != ${b.length}`;
  let n = 0;
  let first = -1;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) {
      if (first < 0) first = i;
      n++;
      max = Math.max(max, Math.abs(a[i] - b[i]));
    }
  }
  return n === 0 ? null : `${n} of ${a.length} differ (first at ${first}: ${a[first]} vs ${b[first]}, max |d| ${max})`;
}
