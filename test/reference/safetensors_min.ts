// Minimal, standalone safetensors reader for the CPU reference (test/reference/).
// It deliberately shares no code with the runtime's loader (src/): the reference
// must stay independent. Format (https://github.com/huggingface/safetensors):
//   u64 little-endian N | N bytes of JSON header | raw tensor bytes.
// The header maps each tensor name to {dtype, shape, data_offsets: [begin, end]}
// with offsets relative to the first byte after the header; "__metadata__" is
// an optional string map. Only F32, F16 and BF16 are converted (to Float32Array).

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface RefTensor {
  /** dtype as stored in the file ("F32", "F16", "BF16"). */
  dtype: string;
  shape: number[];
  /** Values widened to f32, row-major. */
  data: Float32Array;
}

/** IEEE 754 binary16 bit pattern -> number (exact). */
export function halfBitsToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24; // zero / subnormal
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 bit pattern -> number (exact: bf16 is the top half of an f32). */
const scratchWord = new Uint32Array(1);
const scratchFloat = new Float32Array(scratchWord.buffer);
export function bf16BitsToNumber(bits: number): number {
  scratchWord[0] = (bits & 0xffff) << 16;
  return scratchFloat[0];
}

const BYTES_PER_ELEMENT: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

/** Reads every tensor of one .safetensors file. */
export function readSafetensorsFile(path: string): Map<string, RefTensor> {
  const file = readFileSync(path);
  if (file.length < 8) throw new Error(`${path}: too short for a safetensors file`);
  const headerLength = Number(file.readBigUInt64LE(0));
  if (8 + headerLength > file.length) throw new Error(`${path}: header length ${headerLength} past end of file`);
  const header = JSON.parse(file.toString("utf8", 8, 8 + headerLength)) as Record<string, unknown>;
  const dataStart = 8 + headerLength;
  const tensors = new Map<string, RefTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const size = BYTES_PER_ELEMENT[dtype];
    if (size === undefined) throw new Error(`${path}: tensor ${name}: unsupported dtype ${dtype}`);
    const count = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = data_offsets;
    if (end - begin !== count * size) {
      throw new Error(`${path}: tensor ${name}: ${end - begin} bytes for shape [${shape}] of ${dtype}`);
    }
    if (dataStart + end > file.length) throw new Error(`${path}: tensor ${name} runs past end of file`);
    const view = new DataView(file.buffer, file.byteOffset + dataStart + begin, end - begin);
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      if (dtype === "F32") data[i] = view.getFloat32(4 * i, true);
      else if (dtype === "F16") data[i] = halfBitsToNumber(view.getUint16(2 * i, true));
      else data[i] = bf16BitsToNumber(view.getUint16(2 * i, true));
    }
    tensors.set(name, { dtype, shape: [...shape], data });
  }
  return tensors;
}

/**
 * Reads a Hugging Face checkpoint directory: `model.safetensors`, or
 * `model.safetensors.index.json` plus the shards its weight_map names.
 */
export function readSafetensorsDir(dir: string): Map<string, RefTensor> {
  const single = join(dir, "model.safetensors");
  if (existsSync(single)) return readSafetensorsFile(single);
  const indexPath = join(dir, "model.safetensors.index.json");
  if (!existsSync(indexPath)) throw new Error(`${dir}: neither model.safetensors nor model.safetensors.index.json`);
  const index = JSON.parse(readFileSync(indexPath, "utf8")) as { weight_map: Record<string, string> };
  const all = new Map<string, RefTensor>();
  for (const shard of new Set(Object.values(index.weight_map))) {
    for (const [name, tensor] of readSafetensorsFile(join(dir, shard))) {
      if (index.weight_map[name] !== shard) throw new Error(`${shard}: tensor ${name} not mapped to this shard by the index`);
      all.set(name, tensor);
    }
  }
  for (const name of Object.keys(index.weight_map)) {
    if (!all.has(name)) throw new Error(`${dir}: index names ${name} but its shard lacks it`);
  }
  return all;
}
