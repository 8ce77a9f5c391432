// 4-component (CMYK / YCCK) JPEG -> RGB8 in Node.
//
// The mozjpeg build in @jsquash/jpeg only outputs RGBA, and libjpeg has no
// CMYK->RGB conversion ("Unsupported color conversion request"), while browsers
// and PIL both decode such files. This is a small baseline decoder for them that
// follows libjpeg-turbo step by step, so its samples are bit-identical to what
// PIL gets from libjpeg-turbo:
//   Huffman decoding (sequential, restart intervals), dequantization, the ISLOW
//   integer IDCT (jidctint.c, including its range-limit table), YCCK->CMYK with
//   jdcolor.c's tables (Adobe transform 2), and h2v1/h2v2 "fancy" upsampling
//   (jdsample.c) when components are subsampled.
// CMYK->RGB: the file stores Adobe (Photoshop) inverted CMYK, c' = 255 - C. As
//   Pillow's convert("RGB") (Convert.c cmyk2rgb on rawmode "CMYK;I") does:
//   nk = k'; R = nk - MULDIV255(255 - c', nk), which equals round(c' * k' / 255)
//   (R = C*K/255 in the inverted values, the libjpeg-turbo/Chromium rule). Both PIL
//   and Chromium assume the inverted (Adobe) convention for every 4-component JPEG;
//   so does this. Exact against PIL on the test fixtures (4:4:4 and 4:2:0);
//   Chromium's own decode was measured within 1 level of PIL on the same file
//   (test/e2e/image-errors-in-chromium.test.ts), i.e. it rounds slightly differently.
// Progressive and arithmetic-coded 4-component files are refused with a message.
import type { DecodedImage } from "./decode_node.ts";

const ZIGZAG = new Uint8Array([
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
  35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55,
  62, 63,
]);

/** Number of components the first SOF declares, or 0. */
export function jpegComponentCount(b: Uint8Array): number {
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) return 0;
    const m = b[p + 1];
    if (m === 0xff) { p++; continue; }
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) { p += 2; continue; }
    if (m === 0xda || m === 0xd9) return 0;
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) return p + 9 < b.length ? b[p + 9] : 0;
    p += 2 + ((b[p + 2] << 8) | b[p + 3]);
  }
  return 0;
}

interface Huffman {
  maxcode: Int32Array; // [18], per code length
  valptr: Int32Array;
  mincode: Int32Array;
  vals: Uint8Array;
}

function buildHuffman(counts: Uint8Array, vals: Uint8Array): Huffman {
  const maxcode = new Int32Array(18).fill(-1);
  const valptr = new Int32Array(17);
  const mincode = new Int32Array(17);
  let code = 0;
  let k = 0;
  for (let l = 1; l <= 16; l++) {
    const n = counts[l - 1];
    if (n) {
      valptr[l] = k;
      mincode[l] = code;
      code += n;
      k += n;
      maxcode[l] = code - 1;
    }
    code <<= 1;
  }
  maxcode[17] = 0x7fffffff;
  return { maxcode, valptr, mincode, vals };
}

interface Component {
  id: number;
  h: number;
  v: number;
  tq: number;
  bw: number; // blocks per line (padded to the MCU)
  bh: number;
  coefs: Int16Array; // raw coefficients (JCOEF = short, as libjpeg), natural order, 64 per block
  pred: number;
  dc?: Huffman;
  ac?: Huffman;
}

class BitReader {
  private bits = 0;
  private nbits = 0;
  /** Set when the data ended with no marker: the file is cut off. */
  overrun = false;
  constructor(private readonly b: Uint8Array, public p: number) {}
  private fill(): void {
    while (this.nbits <= 24) {
      let byte = 0;
      if (this.p >= this.b.length) this.overrun = true;
      else {
        byte = this.b[this.p];
        if (byte === 0xff) {
          const next = this.b[this.p + 1];
          if (next === 0x00) this.p += 2;
          else byte = 0; // a marker: feed zeros as libjpeg does, stay put
        } else {
          this.p++;
        }
      }
      this.bits = ((this.bits << 8) | byte) >>> 0;
      this.nbits += 8;
    }
  }
  bit(): number {
    if (this.nbits === 0) this.fill();
    this.nbits--;
    return (this.bits >>> this.nbits) & 1;
  }
  get(n: number): number {
    if (n === 0) return 0;
    if (this.nbits < n) this.fill();
    this.nbits -= n;
    return (this.bits >>> this.nbits) & ((1 << n) - 1);
  }
  decode(t: Huffman): number {
    let code = this.bit();
    let l = 1;
    while (code > t.maxcode[l]) {
      code = (code << 1) | this.bit();
      if (++l > 16) throw new Error("corrupt JPEG data: bad Huffman code");
    }
    return t.vals[t.valptr[l] + code - t.mincode[l]];
  }
  /** Byte-align and step over an RSTn marker. */
  restart(): void {
    this.bits = 0;
    this.nbits = 0;
    while (this.p + 1 < this.b.length && !(this.b[this.p] === 0xff && this.b[this.p + 1] >= 0xd0 && this.b[this.p + 1] <= 0xd7)) this.p++;
    this.p += 2;
  }
}

const extend = (v: number, s: number) => (v < 1 << (s - 1) ? v - (1 << s) + 1 : v);

// ---------------------------------------------------------------- ISLOW IDCT (jidctint.c)
const F0_298 = 2446, F0_390 = 3196, F0_541 = 4433, F0_765 = 6270, F0_899 = 7373, F1_175 = 9633;
const F1_501 = 12299, F1_847 = 15137, F1_961 = 16069, F2_053 = 16819, F2_562 = 20995, F3_072 = 25172;
// Arithmetic right shift with rounding; plain numbers so nothing wraps at 32 bits.
const descale = (x: number, n: number) => Math.floor((x + 2 ** (n - 1)) / 2 ** n);
/** jdmaster.c's post-IDCT range limit: index masked to 10 bits, then clamp around 128. */
function rangeLimit(v: number): number {
  let t = v & 1023;
  if (t >= 512) t -= 1024;
  t += 128;
  return t < 0 ? 0 : t > 255 ? 255 : t;
}

const ws = new Float64Array(64);
function idctIslow(inp: Int16Array, off: number, q: Int32Array, out: Uint8Array, outOff: number, stride: number): void {
  for (let c = 0; c < 8; c++) {
    const i = off + c;
    if (inp[i + 8] === 0 && inp[i + 16] === 0 && inp[i + 24] === 0 && inp[i + 32] === 0 && inp[i + 40] === 0 && inp[i + 48] === 0 && inp[i + 56] === 0) {
      const dc = inp[i] * q[c] * 4;
      for (let r = 0; r < 8; r++) ws[r * 8 + c] = dc;
      continue;
    }
    let z2 = inp[i + 16] * q[c + 16];
    let z3 = inp[i + 48] * q[c + 48];
    let z1 = (z2 + z3) * F0_541;
    let tmp2 = z1 - z3 * F1_847;
    let tmp3 = z1 + z2 * F0_765;
    z2 = inp[i] * q[c];
    z3 = inp[i + 32] * q[c + 32];
    let tmp0 = (z2 + z3) * 8192;
    let tmp1 = (z2 - z3) * 8192;
    const tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3, tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
    tmp0 = inp[i + 56] * q[c + 56];
    tmp1 = inp[i + 40] * q[c + 40];
    tmp2 = inp[i + 24] * q[c + 24];
    tmp3 = inp[i + 8] * q[c + 8];
    z1 = tmp0 + tmp3; z2 = tmp1 + tmp2; z3 = tmp0 + tmp2;
    let z4 = tmp1 + tmp3;
    const z5 = (z3 + z4) * F1_175;
    tmp0 *= F0_298; tmp1 *= F2_053; tmp2 *= F3_072; tmp3 *= F1_501;
    z1 *= -F0_899; z2 *= -F2_562; z3 *= -F1_961; z4 *= -F0_390;
    z3 += z5; z4 += z5;
    tmp0 += z1 + z3; tmp1 += z2 + z4; tmp2 += z2 + z3; tmp3 += z1 + z4;
    ws[c] = descale(tmp10 + tmp3, 11); ws[56 + c] = descale(tmp10 - tmp3, 11);
    ws[8 + c] = descale(tmp11 + tmp2, 11); ws[48 + c] = descale(tmp11 - tmp2, 11);
    ws[16 + c] = descale(tmp12 + tmp1, 11); ws[40 + c] = descale(tmp12 - tmp1, 11);
    ws[24 + c] = descale(tmp13 + tmp0, 11); ws[32 + c] = descale(tmp13 - tmp0, 11);
  }
  for (let r = 0; r < 8; r++) {
    const w = r * 8;
    const o = outOff + r * stride;
    if (ws[w + 1] === 0 && ws[w + 2] === 0 && ws[w + 3] === 0 && ws[w + 4] === 0 && ws[w + 5] === 0 && ws[w + 6] === 0 && ws[w + 7] === 0) {
      const v = rangeLimit(descale(ws[w], 5));
      for (let x = 0; x < 8; x++) out[o + x] = v;
      continue;
    }
    let z2 = ws[w + 2], z3 = ws[w + 6];
    let z1 = (z2 + z3) * F0_541;
    let tmp2 = z1 - z3 * F1_847;
    let tmp3 = z1 + z2 * F0_765;
    let tmp0 = (ws[w] + ws[w + 4]) * 8192;
    let tmp1 = (ws[w] - ws[w + 4]) * 8192;
    const tmp10 = tmp0 + tmp3, tmp13 = tmp0 - tmp3, tmp11 = tmp1 + tmp2, tmp12 = tmp1 - tmp2;
    tmp0 = ws[w + 7]; tmp1 = ws[w + 5]; tmp2 = ws[w + 3]; tmp3 = ws[w + 1];
    z1 = tmp0 + tmp3; z2 = tmp1 + tmp2; z3 = tmp0 + tmp2;
    let z4 = tmp1 + tmp3;
    const z5 = (z3 + z4) * F1_175;
    tmp0 *= F0_298; tmp1 *= F2_053; tmp2 *= F3_072; tmp3 *= F1_501;
    z1 *= -F0_899; z2 *= -F2_562; z3 *= -F1_961; z4 *= -F0_390;
    z3 += z5; z4 += z5;
    tmp0 += z1 + z3; tmp1 += z2 + z4; tmp2 += z2 + z3; tmp3 += z1 + z4;
    out[o] = rangeLimit(descale(tmp10 + tmp3, 18)); out[o + 7] = rangeLimit(descale(tmp10 - tmp3, 18));
    out[o + 1] = rangeLimit(descale(tmp11 + tmp2, 18)); out[o + 6] = rangeLimit(descale(tmp11 - tmp2, 18));
    out[o + 2] = rangeLimit(descale(tmp12 + tmp1, 18)); out[o + 5] = rangeLimit(descale(tmp12 - tmp1, 18));
    out[o + 3] = rangeLimit(descale(tmp13 + tmp0, 18)); out[o + 4] = rangeLimit(descale(tmp13 - tmp0, 18));
  }
}

// ---------------------------------------------------------------- upsampling (jdsample.c, fancy)
/** h2v1 fancy upsampling of one row (libjpeg-turbo h2v1_fancy_upsample). */
function upRowH2(src: Uint8Array, so: number, w: number, dst: Uint8Array, doff: number): void {
  if (w === 1) { dst[doff] = dst[doff + 1] = src[so]; return; }
  let v = src[so];
  dst[doff] = v;
  dst[doff + 1] = (v * 3 + src[so + 1] + 2) >> 2;
  for (let i = 1; i < w - 1; i++) {
    v = src[so + i] * 3;
    dst[doff + 2 * i] = (v + src[so + i - 1] + 1) >> 2;
    dst[doff + 2 * i + 1] = (v + src[so + i + 1] + 2) >> 2;
  }
  v = src[so + w - 1];
  dst[doff + 2 * w - 2] = (v * 3 + src[so + w - 2] + 1) >> 2;
  dst[doff + 2 * w - 1] = v;
}

/** Upsample a component plane (pw x ph, padded) by (fx, fy) in {1,2} the way libjpeg-turbo does. */
function upsample(plane: Uint8Array, pw: number, ph: number, fx: number, fy: number): Uint8Array {
  if (fx === 1 && fy === 1) return plane;
  const ow = pw * fx, oh = ph * fy;
  const out = new Uint8Array(ow * oh);
  if (fy === 1) {
    for (let y = 0; y < ph; y++) upRowH2(plane, y * pw, pw, out, y * ow);
    return out;
  }
  if (fx === 2) {
    // h2v2_fancy_upsample: vertical 3:1 with the nearer row (edge rows repeat), then horizontal.
    for (let y = 0; y < ph; y++) {
      const cur = y * pw;
      for (let v = 0; v < 2; v++) {
        const ny = v === 0 ? Math.max(y - 1, 0) : Math.min(y + 1, ph - 1);
        const nb = ny * pw;
        const o = (2 * y + v) * ow;
        let thiscolsum = plane[cur] * 3 + plane[nb];
        if (pw === 1) { out[o] = out[o + 1] = (thiscolsum * 4 + 8) >> 4; continue; }
        let nextcolsum = plane[cur + 1] * 3 + plane[nb + 1];
        out[o] = (thiscolsum * 4 + 8) >> 4;
        out[o + 1] = (thiscolsum * 3 + nextcolsum + 7) >> 4;
        let lastcolsum = thiscolsum;
        thiscolsum = nextcolsum;
        for (let i = 1; i < pw - 1; i++) {
          nextcolsum = plane[cur + i + 1] * 3 + plane[nb + i + 1];
          out[o + 2 * i] = (thiscolsum * 3 + lastcolsum + 8) >> 4;
          out[o + 2 * i + 1] = (thiscolsum * 3 + nextcolsum + 7) >> 4;
          lastcolsum = thiscolsum;
          thiscolsum = nextcolsum;
        }
        out[o + 2 * pw - 2] = (thiscolsum * 3 + lastcolsum + 8) >> 4;
        out[o + 2 * pw - 1] = (thiscolsum * 4 + 7) >> 4;
      }
    }
    return out;
  }
  throw new Error(`unsupported sampling ${fx}x${fy} in a 4-component JPEG`);
}

// ---------------------------------------------------------------- YCCK -> CMYK tables (jdcolor.c)
const FIX = (x: number) => Math.floor(x * 65536 + 0.5);
const CR_R = new Int32Array(256), CB_B = new Int32Array(256), CR_G = new Float64Array(256), CB_G = new Float64Array(256);
for (let i = 0; i < 256; i++) {
  const x = i - 128;
  CR_R[i] = Math.floor((FIX(1.402) * x + 32768) / 65536);
  CB_B[i] = Math.floor((FIX(1.772) * x + 32768) / 65536);
  CR_G[i] = -FIX(0.71414) * x;
  CB_G[i] = -FIX(0.34414) * x + 32768;
}
const clamp255 = (v: number) => (v < 0 ? 0 : v > 255 ? 255 : v);

/** Pillow's MULDIV255: a * b / 255, rounded. */
const mulDiv255 = (a: number, b: number) => { const t = a * b + 128; return ((t >> 8) + t) >> 8; };

/** Decode a baseline 4-component JPEG (Adobe CMYK or YCCK) to RGB8. */
export function decodeJpeg4(b: Uint8Array): DecodedImage {
  const qt: Int32Array[] = [];
  const dcT: Huffman[] = [];
  const acT: Huffman[] = [];
  let comps: Component[] = [];
  let width = 0, height = 0, hmax = 1, vmax = 1, mcux = 0, mcuy = 0;
  let restartInterval = 0;
  let adobeTransform = -1;
  let p = 2;
  let frame = false;
  const u16 = (o: number) => (b[o] << 8) | b[o + 1];
  for (;;) {
    if (p + 2 <= b.length && b[p] === 0xff && b[p + 1] === 0xd9) break;
    if (p + 4 > b.length) throw new Error("image file is truncated");
    if (b[p] !== 0xff) { p++; continue; }
    const m = b[p + 1];
    if (m === 0xff) { p++; continue; }
    if (m === 0x01 || (m >= 0xd0 && m <= 0xd7)) { p += 2; continue; }
    const len = u16(p + 2);
    const s = p + 4, e = p + 2 + len;
    if (e > b.length) throw new Error("image file is truncated");
    if (m === 0xdb) {
      for (let q = s; q < e;) {
        const pq = b[q] >> 4, tq = b[q] & 15;
        q++;
        const t = new Int32Array(64);
        for (let k = 0; k < 64; k++) { t[ZIGZAG[k]] = pq ? u16(q + 2 * k) : b[q + k]; }
        q += pq ? 128 : 64;
        qt[tq] = t;
      }
    } else if (m === 0xc4) {
      for (let q = s; q < e;) {
        const tc = b[q] >> 4, th = b[q] & 15;
        const counts = b.subarray(q + 1, q + 17);
        let n = 0;
        for (let i = 0; i < 16; i++) n += counts[i];
        const t = buildHuffman(counts, b.slice(q + 17, q + 17 + n));
        (tc === 0 ? dcT : acT)[th] = t;
        q += 17 + n;
      }
    } else if (m === 0xc0 || m === 0xc1) {
      if (b[s] !== 8) throw new Error(`${b[s]}-bit JPEG samples are not supported`);
      height = u16(s + 1);
      width = u16(s + 3);
      if (!(width > 0 && height > 0)) throw new Error(`bad size ${width}x${height}`);
      const nc = b[s + 5];
      comps = [];
      for (let i = 0; i < nc; i++) {
        const o = s + 6 + 3 * i;
        comps.push({ id: b[o], h: b[o + 1] >> 4, v: b[o + 1] & 15, tq: b[o + 2], bw: 0, bh: 0, coefs: new Int16Array(0), pred: 0 });
      }
      hmax = Math.max(...comps.map((c) => c.h));
      vmax = Math.max(...comps.map((c) => c.v));
      mcux = Math.ceil(width / (8 * hmax));
      mcuy = Math.ceil(height / (8 * vmax));
      for (const c of comps) {
        if (!(c.h >= 1 && c.v >= 1 && hmax % c.h === 0 && vmax % c.v === 0 && hmax / c.h <= 2 && vmax / c.v <= 2)) {
          throw new Error(`unsupported sampling factors in a ${nc}-component JPEG`);
        }
        c.bw = mcux * c.h;
        c.bh = mcuy * c.v;
        c.coefs = new Int16Array(c.bw * c.bh * 64);
      }
      frame = true;
    } else if (m >= 0xc2 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      throw new Error("progressive or arithmetic-coded CMYK JPEGs are not supported in Node (re-save it as baseline, or as RGB)");
    } else if (m === 0xdd) {
      restartInterval = u16(s);
    } else if (m === 0xee && len >= 14 && String.fromCharCode(...b.subarray(s, s + 5)) === "Adobe") {
      adobeTransform = b[s + 11];
    } else if (m === 0xda) {
      if (!frame) throw new Error("scan before frame header");
      const ns = b[s];
      const sc: Component[] = [];
      for (let i = 0; i < ns; i++) {
        const c = comps.find((x) => x.id === b[s + 1 + 2 * i]);
        if (!c) throw new Error("scan names an unknown component");
        c.dc = dcT[b[s + 2 + 2 * i] >> 4];
        c.ac = acT[b[s + 2 + 2 * i] & 15];
        if (!c.dc || !c.ac) throw new Error("missing Huffman table");
        c.pred = 0;
        sc.push(c);
      }
      const br = new BitReader(b, e);
      decodeScan(br, sc, ns === 1 ? null : { mcux, mcuy }, width, height, hmax, vmax, restartInterval);
      if (br.overrun) throw new Error("image file is truncated"); // PIL's words; libjpeg says "premature end"
      // Move to the next marker after the entropy-coded data.
      p = br.p;
      while (p + 1 < b.length && !(b[p] === 0xff && b[p + 1] !== 0 && !(b[p + 1] >= 0xd0 && b[p + 1] <= 0xd7))) p++;
      if (p + 1 >= b.length) throw new Error("image file is truncated");
      continue;
    }
    p = e;
  }
  if (!frame || comps.length !== 4) throw new Error("not a 4-component JPEG");
  // IDCT every component into a padded plane, then upsample to the MCU grid.
  const planes: Uint8Array[] = [];
  const fullW = mcux * hmax * 8;
  for (const c of comps) {
    const q = qt[c.tq];
    if (!q) throw new Error("missing quantization table");
    const pw = c.bw * 8, ph = c.bh * 8;
    const plane = new Uint8Array(pw * ph);
    for (let by = 0; by < c.bh; by++) {
      for (let bx = 0; bx < c.bw; bx++) idctIslow(c.coefs, (by * c.bw + bx) * 64, q, plane, by * 8 * pw + bx * 8, pw);
    }
    // libjpeg upsamples only the component's real width (ceil(w * h / hmax)), replicating its last column.
    const cw = Math.ceil((width * c.h) / hmax);
    if (hmax / c.h === 2 && cw < pw) for (let y = 0; y < ph; y++) plane[y * pw + cw] = plane[y * pw + cw - 1];
    // ... and its last real row (jdmainct.c set_bottom_pointers) as the context below.
    const ch = Math.ceil((height * c.v) / vmax);
    if (vmax / c.v === 2 && ch < ph) plane.copyWithin(ch * pw, (ch - 1) * pw, ch * pw);
    const up = upsample(plane, pw, ph, hmax / c.h, vmax / c.v);
    planes.push(up);
  }
  const ycck = adobeTransform === 2;
  const n = width * height;
  const rgb = new Uint8Array(n * 3);
  const [p0, p1, p2, p3] = planes;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const si = y * fullW + x;
      let c = p0[si], m = p1[si], yy = p2[si];
      const k = p3[si];
      if (ycck) {
        const Y = c, cb = m, cr = yy;
        c = clamp255(255 - (Y + CR_R[cr]));
        m = clamp255(255 - (Y + Math.floor((CB_G[cb] + CR_G[cr]) / 65536)));
        yy = clamp255(255 - (Y + CB_B[cb]));
      }
      const o = (y * width + x) * 3;
      rgb[o] = k - mulDiv255(255 - c, k);
      rgb[o + 1] = k - mulDiv255(255 - m, k);
      rgb[o + 2] = k - mulDiv255(255 - yy, k);
    }
  }
  return { rgb, width, height };
}

function decodeBlock(br: BitReader, c: Component, off: number): void {
  const t = br.decode(c.dc!);
  const diff = t ? extend(br.get(t), t) : 0;
  c.pred += diff;
  const z = c.coefs;
  z[off] = c.pred;
  for (let k = 1; k < 64; k++) {
    const rs = br.decode(c.ac!);
    const r = rs >> 4, s = rs & 15;
    if (s) {
      k += r;
      if (k > 63) break;
      z[off + ZIGZAG[k]] = extend(br.get(s), s);
    } else {
      if (r !== 15) break;
      k += 15;
    }
  }
}

function decodeScan(
  br: BitReader, sc: Component[], grid: { mcux: number; mcuy: number } | null,
  width: number, height: number, hmax: number, vmax: number, restartInterval: number,
): void {
  let todo = restartInterval;
  const step = () => {
    if (!restartInterval) return;
    if (todo === 0) {
      br.restart();
      for (const c of sc) c.pred = 0;
      todo = restartInterval;
    }
    todo--;
  };
  if (grid) {
    for (let my = 0; my < grid.mcuy; my++) {
      for (let mx = 0; mx < grid.mcux; mx++) {
        step();
        for (const c of sc) {
          for (let v = 0; v < c.v; v++) {
            for (let h = 0; h < c.h; h++) decodeBlock(br, c, ((my * c.v + v) * c.bw + mx * c.h + h) * 64);
          }
        }
      }
    }
    return;
  }
  // Non-interleaved: only the blocks that cover the component's own size.
  const c = sc[0];
  const bw = Math.ceil(Math.ceil((width * c.h) / hmax) / 8);
  const bh = Math.ceil(Math.ceil((height * c.v) / vmax) / 8);
  for (let by = 0; by < bh; by++) {
    for (let bx = 0; bx < bw; bx++) {
      step();
      decodeBlock(br, c, (by * c.bw + bx) * 64);
    }
  }
}
