// SHA-256 for the weight cache's integrity checks (cache_idb.ts).
//
// Choice: Web Crypto's SHA-256 (crypto.subtle.digest), not a hash from npm. It is in every
// browser, worker and Node >= 15 with no dependency and no WebAssembly to fetch (a strict CSP
// without 'wasm-unsafe-eval' still works); it runs natively (BoringSSL / OpenSSL, SHA-NI where the
// CPU has it), and it is the hash the hub publishes for LFS files (X-Linked-Etag), so one
// function checks chunks, quantized entries and whole files. Measured by
// test/loader/integrity.test.ts (Node) and test/e2e/weight-integrity.test.ts (Chromium), 64 MiB
// in 1 MiB chunks, on this project's shared 2-core CPU machines with other jobs running:
// Node 20 620-940 MB/s, Chromium 100-240 MB/s (the spread is the machines' load): a 32 MiB
// chunk costs ~0.05-0.3 s, small next to
// downloading it and comparable to reading it back from IndexedDB. hash-wasm / xxhash-wasm
// (both on npm, maintained) would be faster (xxh3 several GB/s) but add a dependency and a wasm
// instantiation (a strict CSP needs 'wasm-unsafe-eval'), and a non-cryptographic hash could not
// be compared with the hub's published SHA-256.
//
// crypto.subtle.digest is one-shot, so checking a whole multi-GB file against the hub's SHA-256
// (which must not hold the file in memory) uses the small incremental implementation below
// (60-155 MB/s in Node here): it runs once per file, only where the server published a hash,
// after its download completes.
import { WebvlmError } from "../api/errors.ts";

function subtle(): SubtleCrypto {
  const s = (globalThis as { crypto?: Crypto }).crypto?.subtle;
  if (!s) throw new WebvlmError("unsupported_feature", "crypto.subtle is missing (insecure context?): the weight cache cannot verify what it stores");
  return s;
}

export function toHex(buf: ArrayBuffer | Uint8Array): string {
  const b = buf instanceof Uint8Array ? buf : new Uint8Array(buf);
  let s = "";
  for (let i = 0; i < b.length; i++) s += b[i].toString(16).padStart(2, "0");
  return s;
}

/** Hex SHA-256 of `bytes` (Web Crypto). */
export async function sha256Hex(bytes: Uint8Array | ArrayBuffer): Promise<string> {
  return toHex(await subtle().digest("SHA-256", bytes as BufferSource));
}

/** Hex SHA-256 of several byte arrays taken as one. */
export async function sha256HexOf(parts: (Uint8Array | ArrayBufferView)[]): Promise<string> {
  const digests: string[] = [];
  for (const p of parts) digests.push(await sha256Hex(new Uint8Array(p.buffer, p.byteOffset, p.byteLength)));
  return parts.length === 1 ? digests[0] : sha256Hex(new TextEncoder().encode(digests.join(":")));
}

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** Incremental SHA-256 (FIPS 180-4), for data too large to hash in one piece. */
export class Sha256 {
  private readonly h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  private readonly w = new Uint32Array(64);
  private readonly block = new Uint8Array(64);
  private fill = 0;
  private length = 0;

  update(data: Uint8Array): this {
    let p = 0;
    this.length += data.length;
    if (this.fill > 0) {
      const n = Math.min(64 - this.fill, data.length);
      this.block.set(data.subarray(0, n), this.fill);
      this.fill += n;
      p = n;
      if (this.fill < 64) return this;
      this.compress(this.block, 0);
      this.fill = 0;
    }
    for (; p + 64 <= data.length; p += 64) this.compress(data, p);
    if (p < data.length) {
      this.block.set(data.subarray(p), 0);
      this.fill = data.length - p;
    }
    return this;
  }

  hex(): string {
    const bits = this.length * 8;
    const pad = new Uint8Array(((this.fill < 56 ? 56 : 120) - this.fill) + 8);
    pad[0] = 0x80;
    const hi = Math.floor(bits / 2 ** 32);
    const n = pad.length;
    pad[n - 8] = hi >>> 24; pad[n - 7] = hi >>> 16; pad[n - 6] = hi >>> 8; pad[n - 5] = hi;
    pad[n - 4] = bits >>> 24; pad[n - 3] = bits >>> 16; pad[n - 2] = bits >>> 8; pad[n - 1] = bits;
    const len = this.length;
    this.update(pad);
    this.length = len;
    let s = "";
    for (const v of this.h) s += v.toString(16).padStart(8, "0");
    return s;
  }

  private compress(d: Uint8Array, o: number): void {
    const w = this.w;
    for (let i = 0; i < 16; i++) w[i] = (d[o + 4 * i] << 24) | (d[o + 4 * i + 1] << 16) | (d[o + 4 * i + 2] << 8) | d[o + 4 * i + 3];
    for (let i = 16; i < 64; i++) {
      const a = w[i - 15], b = w[i - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    const h = this.h;
    let a = h[0], b = h[1], c = h[2], e = h[4], f = h[5], g = h[6], dd = h[3], hh = h[7];
    for (let i = 0; i < 64; i++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      hh = g; g = f; f = e; e = (dd + t1) | 0; dd = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += dd; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
}
