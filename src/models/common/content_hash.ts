// Content keys for prepared media: equal keys mean equal embeddings, so the KV cache prefix that
// holds an image is reused only for the same pixels. Not cryptographic: a collision needs
// deliberately crafted pixels and costs only a wrong cache reuse within one user's own chat.

/** Two independent 32-bit FNV-1a-style hashes over the parts' bytes, in order: a 64-bit hex key. */
export function contentHash(parts: readonly ArrayBufferView[]): string {
  let h1 = 0x811c9dc5;
  let h2 = 0x01000193;
  for (const part of parts) {
    const b = new Uint8Array(part.buffer, part.byteOffset, part.byteLength);
    h2 ^= b.length;
    for (let i = 0; i < b.length; i++) {
      h1 = Math.imul(h1 ^ b[i], 0x01000193);
      h2 = Math.imul(h2 ^ b[i], 0x5bd1e995) ^ (h2 >>> 15);
    }
  }
  return `${(h1 >>> 0).toString(16)}${(h2 >>> 0).toString(16)}`;
}
