// Independent dequantizer for GPTQ / AWQ checkpoints (test/fixtures/quant, written by
// scripts/make_quantized_fixtures.py): f32 W[out, in] computed the way the Python code does it,
// straight from the stored tensors. Shares no code with src/ (the runtime repacks into its own
// layout; this reads the original one).
//
// AutoGPTQ, auto_gptq/nn_modules/qlinear/qlinear_cuda.py QuantLinear.forward (torch path), bits 4/8:
//   wf = range(0, 32, bits)
//   zeros  = (qzeros[:, :, None] >> wf) & maxq;  zeros = zeros + 1   (checkpoint_format "gptq", v1;
//            GPTQModel's "gptq_v2" stores the zero itself: no + 1);   zeros.reshape(scales.shape)
//   weight = (qweight[:, None, :] >> wf[:, None]) & maxq;  weight.reshape(in, out)
//   W^T    = scales[g_idx] * (weight - zeros[g_idx])          (g_idx default: k // group_size)
// AutoAWQ, awq/utils/packing_utils.py dequantize_gemm:
//   unpack_awq: iweight[k, 8c + i] = qweight[k, c] >> 4i (same for izeros)
//   reverse_awq_order: columns [8c + j] <- [8c + AWQ_REVERSE_ORDER[j]], AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]
//   & 15; scales / izeros repeat_interleave(group_size) along in;  W^T = (iweight - izeros) * scales
import { readFileSync } from "node:fs";
import { halfBitsToNumber } from "./safetensors_min.ts";

export interface RawTensor {
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** Every tensor of a safetensors file, raw (any dtype). */
export function readRawSafetensors(path: string): Map<string, RawTensor> {
  const file = readFileSync(path);
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.toString("utf8", 8, 8 + n)) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, RawTensor>();
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [b, en] = e.data_offsets;
    out.set(name, { dtype: e.dtype, shape: e.shape, bytes: new Uint8Array(file.buffer, file.byteOffset + 8 + n + b, en - b) });
  }
  return out;
}

function i32(t: RawTensor): (i: number) => number {
  if (t.dtype !== "I32") throw new Error(`expected I32, got ${t.dtype}`);
  const v = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  return (i) => v.getInt32(4 * i, true);
}
function f16(t: RawTensor): (i: number) => number {
  if (t.dtype !== "F16") throw new Error(`expected F16, got ${t.dtype}`);
  const v = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  return (i) => halfBitsToNumber(v.getUint16(2 * i, true));
}

export interface DequantizedLinear {
  rows: number; // out_features
  cols: number; // in_features
  /** f32 [rows, cols] (PyTorch Linear layout) */
  values: Float32Array;
}

/** AutoGPTQ: W[n, k] = scales[g_idx[k], n] * (q[k, n] - (qzeros[g_idx[k], n] (+ 1 for v1))). */
export function dequantizeGptq(t: Map<string, RawTensor>, module: string, bits: number, v1: boolean, groupSize: number): DequantizedLinear {
  const get = (s: string): RawTensor => {
    const x = t.get(`${module}.${s}`);
    if (!x) throw new Error(`${module}.${s} missing`);
    return x;
  };
  const qw = get("qweight");
  const qz = get("qzeros");
  const sc = get("scales");
  const per = 32 / bits;
  const maxq = 2 ** bits - 1;
  const inF = qw.shape[0] * per;
  const outF = qw.shape[1];
  const group = groupSize === -1 ? inF : groupSize;
  const gi = t.has(`${module}.g_idx`) ? i32(get("g_idx")) : (k: number) => Math.floor(k / group);
  const qwAt = i32(qw);
  const qzAt = i32(qz);
  const sAt = f16(sc);
  const zCols = qz.shape[1];
  const values = new Float32Array(outF * inF);
  for (let k = 0; k < inF; k++) {
    const g = gi(k);
    for (let n = 0; n < outF; n++) {
      // weight: row k / per of qweight, shifted by wf[k % per] = bits * (k % per)
      const q = Number((BigInt(qwAt(Math.floor(k / per) * outF + n)) >> BigInt(bits * (k % per))) & BigInt(maxq));
      const z = Number((BigInt(qzAt(g * zCols + Math.floor(n / per))) >> BigInt(bits * (n % per))) & BigInt(maxq)) + (v1 ? 1 : 0);
      values[n * inF + k] = sAt(g * outF + n) * (q - z);
    }
  }
  return { rows: outF, cols: inF, values };
}

const AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7];

/** AutoAWQ dequantize_gemm: W^T[k, n] = (iweight[k, n] - izeros[k / group, n]) * scales[k / group, n]. */
export function dequantizeAwq(t: Map<string, RawTensor>, module: string, groupSize: number): DequantizedLinear {
  const get = (s: string): RawTensor => {
    const x = t.get(`${module}.${s}`);
    if (!x) throw new Error(`${module}.${s} missing`);
    return x;
  };
  const qw = get("qweight");
  const qz = get("qzeros");
  const sc = get("scales");
  const inF = qw.shape[0];
  const packed = qw.shape[1];
  const outF = packed * 8;
  const group = groupSize === -1 ? inF : groupSize;
  const qwAt = i32(qw);
  const qzAt = i32(qz);
  const sAt = f16(sc);
  // unpack_awq + reverse_awq_order: unpacked column n comes from packed slot 8*(n/8) + REV[n % 8].
  const unpacked = (at: (i: number) => number, row: number, n: number): number => {
    const slot = Math.floor(n / 8) * 8 + AWQ_REVERSE_ORDER[n % 8];
    return (at(row * packed + Math.floor(slot / 8)) >> (4 * (slot % 8))) & 15;
  };
  const values = new Float32Array(outF * inF);
  for (let k = 0; k < inF; k++) {
    const g = Math.floor(k / group);
    for (let n = 0; n < outF; n++) {
      values[n * inF + k] = (unpacked(qwAt, k, n) - unpacked(qzAt, g, n)) * sAt(g * outF + n);
    }
  }
  return { rows: outF, cols: inF, values };
}

export interface QuantFixture {
  name: string;
  description: string;
  quantizationConfig: Record<string, unknown>;
  file: string;
}

const FIXTURES = new URL("../fixtures/quant/", import.meta.url);

/** The fixture variants (variants.json). */
export function quantFixtures(): QuantFixture[] {
  const v = JSON.parse(readFileSync(new URL("variants.json", FIXTURES), "utf8")) as {
    variants: Record<string, { description: string; quantization_config: Record<string, unknown> }>;
  };
  return Object.entries(v.variants).map(([name, e]) => ({
    name, description: e.description, quantizationConfig: e.quantization_config,
    file: new URL(`${name}.safetensors`, FIXTURES).pathname,
  }));
}

/** Every quantized module of a fixture ("model.layers.0.self_attn.q_proj" -> W), dequantized. */
export function dequantizeFixture(f: QuantFixture): Map<string, DequantizedLinear> {
  const t = readRawSafetensors(f.file);
  const qc = f.quantizationConfig;
  const out = new Map<string, DequantizedLinear>();
  for (const name of t.keys()) {
    if (!name.endsWith(".qweight")) continue;
    const module = name.slice(0, -".qweight".length);
    const group = qc.group_size as number;
    out.set(module, qc.quant_method === "awq"
      ? dequantizeAwq(t, module, group)
      : dequantizeGptq(t, module, qc.bits as number, (qc.checkpoint_format ?? "gptq") === "gptq", group));
  }
  return out;
}
