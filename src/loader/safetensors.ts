// safetensors: header parsing, tensor reads and writing, over a byte-range
// reader so the same code serves HTTP Range requests, Blobs and Node files.
// Format: u64 little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {str: str}}),
// then the data region; offsets are relative to the data region's start.
import { WebvlmError } from "../api/errors.ts";
import { bf16BitsToF32, f32ToF16Bits, fromF16Bits } from "../quant/f16.ts";

/** Random access to some bytes: an HTTP resource, a Blob, a file, memory. */
export interface ByteSource {
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Total length in bytes when known; lets the parser bound-check offsets. */
  size?: number;
  /** Releases an underlying handle (Node files); optional. */
  close?(): Promise<void>;
}

/** Bytes per element of every dtype the safetensors format defines. */
const DTYPE_BYTES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
};

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Absolute byte offsets in the file (data region start already added). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Length of the JSON header in bytes (after the 8-byte prefix). */
  headerLength: number;
  /** Absolute offset of the data region: 8 + headerLength. */
  dataStart: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** The reference implementation refuses headers over 100 MB; so do we. */
const MAX_HEADER_BYTES = 100_000_000;
/** First read when the size is known: most headers fit, saving a round trip. */
const SPECULATIVE_READ = 64 * 1024;

const bad = (msg: string, details?: Record<string, unknown>): WebvlmError =>
  new WebvlmError("bad_request", `safetensors: ${msg}`, details);

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Reads and validates the header of one safetensors file. */
export async function readSafetensorsHeader(src: ByteSource): Promise<SafetensorsHeader> {
  if (src.size !== undefined && src.size < 8) throw bad(`file is ${src.size} bytes, shorter than the 8-byte prefix`);
  const first = src.size !== undefined ? Math.min(src.size, SPECULATIVE_READ) : 8;
  const head = await src.read(0, first);
  if (head.length < 8) throw bad(`file is ${head.length} bytes, shorter than the 8-byte prefix`);
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const lo = dv.getUint32(0, true);
  const hi = dv.getUint32(4, true);
  if (hi !== 0 || lo > MAX_HEADER_BYTES) throw bad(`header length ${hi * 2 ** 32 + lo} is too large`);
  const headerLength = lo;
  if (headerLength < 2) throw bad(`header length ${headerLength} cannot hold a JSON object`);
  if (src.size !== undefined && 8 + headerLength > src.size) {
    throw bad(`header length ${headerLength} runs past the end of the ${src.size}-byte file`);
  }
  let json: Uint8Array;
  if (head.length >= 8 + headerLength) json = head.subarray(8, 8 + headerLength);
  else {
    json = await src.read(8, headerLength);
    if (json.length < headerLength) throw bad(`header truncated: wanted ${headerLength} bytes, got ${json.length}`);
  }
  return parseSafetensorsHeader(json, src.size);
}

/** Parses the JSON header bytes (without the 8-byte prefix). */
export function parseSafetensorsHeader(json: Uint8Array, fileSize?: number): SafetensorsHeader {
  const headerLength = json.length;
  const dataStart = 8 + headerLength;
  let obj: unknown;
  try {
    obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (e) {
    throw bad(`header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw bad("header is not a JSON object");
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  const dataSize = fileSize === undefined ? undefined : fileSize - dataStart;
  for (const [name, raw] of Object.entries(obj as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = parseMetadata(raw);
      continue;
    }
    tensors.set(name, parseEntry(name, raw, dataStart, dataSize));
  }
  return { headerLength, dataStart, tensors, metadata };
}

function parseMetadata(raw: unknown): Record<string, string> {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) throw bad("__metadata__ is not an object");
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof v !== "string") throw bad(`__metadata__.${k} is not a string`);
    out[k] = v;
  }
  return out;
}

function parseEntry(name: string, raw: unknown, dataStart: number, dataSize: number | undefined): TensorInfo {
  if (raw === null || typeof raw !== "object") throw bad(`entry "${name}" is not an object`, { tensor: name });
  const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
  if (typeof dtype !== "string") throw bad(`entry "${name}" has no dtype`, { tensor: name });
  const isDim = (d: unknown): d is number => Number.isSafeInteger(d) && (d as number) >= 0;
  if (!Array.isArray(shape) || !shape.every(isDim)) throw bad(`entry "${name}" has a bad shape`, { tensor: name });
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(isDim) || offs[0] > offs[1]) {
    throw bad(`entry "${name}" has bad data_offsets`, { tensor: name });
  }
  const [b, e] = offs as [number, number];
  const width = DTYPE_BYTES[dtype];
  // Unknown dtypes parse (their size cannot be checked); reading them fails later.
  if (width !== undefined && e - b !== elementCount(shape) * width) {
    throw bad(`entry "${name}": ${e - b} bytes for ${dtype}[${shape.join(",")}]`, { tensor: name });
  }
  if (dataSize !== undefined && e > dataSize) {
    throw bad(`entry "${name}" ends at ${e}, past the ${dataSize}-byte data region`, { tensor: name });
  }
  return { name, dtype, shape: shape.slice(), begin: dataStart + b, end: dataStart + e };
}

/** The raw little-endian bytes of one tensor. */
export async function readTensorBytes(src: ByteSource, info: TensorInfo): Promise<Uint8Array> {
  const n = info.end - info.begin;
  const bytes = n === 0 ? new Uint8Array(0) : await src.read(info.begin, n);
  if (bytes.length !== n) throw bad(`tensor "${info.name}" truncated: wanted ${n} bytes, got ${bytes.length}`, { tensor: info.name });
  return bytes;
}

/** Converts F32/F16/BF16 bytes to f32 values (copying, so alignment never matters). */
export function decodeToF32(bytes: Uint8Array, dtype: string, name = "tensor"): Float32Array {
  // Copy into a fresh aligned buffer; WebGPU hosts are all little-endian.
  const aligned = bytes.slice().buffer;
  switch (dtype) {
    case "F32": return new Float32Array(aligned);
    case "F16": return fromF16Bits(new Uint16Array(aligned));
    case "BF16": return bf16BitsToF32(new Uint16Array(aligned));
    default:
      throw new WebvlmError("unsupported_feature", `safetensors: ${name} has dtype ${dtype}; only F32, F16 and BF16 convert to f32`, { tensor: name, dtype });
  }
}

export async function readTensorF32(src: ByteSource, header: SafetensorsHeader, name: string): Promise<Float32Array> {
  const info = header.tensors.get(name);
  if (!info) throw missingTensor(name);
  return decodeToF32(await readTensorBytes(src, info), info.dtype, name);
}

export function missingTensor(name: string, where?: string): WebvlmError {
  return new WebvlmError("missing_tensor", `tensor "${name}" not found${where ? ` in ${where}` : " in the checkpoint"}`, { tensor: name, file: where });
}

// ---------------------------------------------------------------- sources

/** A ByteSource over bytes already in memory. */
export function bytesSource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    read: async (offset, length) => bytes.subarray(offset, Math.min(bytes.length, offset + length)),
  };
}

/** A ByteSource over a Blob or File (browser file pickers, cached responses). */
export function blobSource(blob: Blob): ByteSource {
  return {
    size: blob.size,
    read: async (offset, length) => new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer()),
  };
}

// ---------------------------------------------------------------- sharded checkpoints

export interface SafetensorsIndex {
  metadata: Record<string, unknown>;
  /** tensor name -> shard file name, as model.safetensors.index.json lists them. */
  weightMap: Map<string, string>;
  /** Distinct shard files, in first-appearance order. */
  files: string[];
}

/** Parses model.safetensors.index.json (already JSON-decoded). */
export function parseSafetensorsIndex(json: unknown): SafetensorsIndex {
  if (json === null || typeof json !== "object") throw bad("index is not a JSON object");
  const { weight_map: wm, metadata } = json as Record<string, unknown>;
  if (wm === null || typeof wm !== "object" || Array.isArray(wm)) throw bad("index has no weight_map object");
  const weightMap = new Map<string, string>();
  const files: string[] = [];
  for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof file !== "string" || file === "" || file.includes("..")) throw bad(`index maps "${name}" to a bad file name`, { tensor: name });
    weightMap.set(name, file);
    if (!files.includes(file)) files.push(file);
  }
  const meta = metadata !== null && typeof metadata === "object" ? (metadata as Record<string, unknown>) : {};
  return { metadata: meta, weightMap, files };
}

export interface CheckpointTensor extends TensorInfo {
  file: string;
}

/** Opens a file of the checkpoint by its name (relative to the checkpoint root). */
export type FileOpener = (file: string) => Promise<ByteSource> | ByteSource;

/**
 * All tensors of a checkpoint, single-file or sharded. Every shard header is
 * read at open (a few KB each), so lookups afterwards are synchronous.
 */
export class SafetensorsCheckpoint {
  private constructor(
    private readonly sources: Map<string, ByteSource>,
    private readonly headers: Map<string, SafetensorsHeader>,
    private readonly table: Map<string, CheckpointTensor>,
  ) {}

  /**
   * `index` is the parsed model.safetensors.index.json for a sharded
   * checkpoint; without it the single file `model.safetensors` is opened.
   */
  static async open(openFile: FileOpener, index?: unknown, singleFile = "model.safetensors"): Promise<SafetensorsCheckpoint> {
    const parsed = index === undefined ? undefined : parseSafetensorsIndex(index);
    const files = parsed ? parsed.files : [singleFile];
    const sources = new Map<string, ByteSource>();
    const headers = new Map<string, SafetensorsHeader>();
    try {
      for (const f of files) {
        const src = await openFile(f);
        sources.set(f, src);
        headers.set(f, await readSafetensorsHeader(src));
      }
    } catch (e) {
      await Promise.all([...sources.values()].map((s) => s.close?.()));
      throw e;
    }
    const table = new Map<string, CheckpointTensor>();
    if (parsed) {
      for (const [name, file] of parsed.weightMap) {
        const info = headers.get(file)!.tensors.get(name);
        // The index promised this tensor; its shard lacking it is a corrupt checkpoint.
        if (!info) throw missingTensor(name, file);
        table.set(name, { ...info, file });
      }
    } else {
      for (const info of headers.get(singleFile)!.tensors.values()) table.set(info.name, { ...info, file: singleFile });
    }
    return new SafetensorsCheckpoint(sources, headers, table);
  }

  get files(): string[] { return [...this.headers.keys()]; }
  names(): string[] { return [...this.table.keys()]; }
  has(name: string): boolean { return this.table.has(name); }
  metadata(file: string): Record<string, string> { return this.headers.get(file)?.metadata ?? {}; }

  info(name: string): CheckpointTensor {
    const t = this.table.get(name);
    if (!t) throw missingTensor(name);
    return t;
  }

  async readBytes(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    return readTensorBytes(this.sources.get(t.file)!, t);
  }

  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    return decodeToF32(await readTensorBytes(this.sources.get(t.file)!, t), t.dtype, name);
  }

  async close(): Promise<void> {
    await Promise.all([...this.sources.values()].map((s) => s.close?.()));
  }
}

// ---------------------------------------------------------------- writing

/** Float dtypes f32 values can be written as. */
export type FloatDtype = "F32" | "F16" | "BF16";
/** Integer dtypes are written from raw bytes only (packed quantized blocks, zero points). */
export type WritableDtype = FloatDtype | "U32" | "U16" | "U8" | "I32";

export interface TensorToWrite {
  name: string;
  dtype: WritableDtype;
  shape: number[];
  /** f32 values (converted to dtype; float dtypes only) or the dtype's raw little-endian bytes. */
  data: Float32Array | Uint8Array;
}

/** f32 -> bf16 bits, round to nearest even (what torch's .to(bfloat16) does). */
export function f32ToBf16Bits(values: Float32Array): Uint16Array {
  const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40; // keep NaN a NaN
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Encodes f32 values as the given dtype's little-endian bytes. */
export function encodeF32As(values: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === "F32") return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const bits = dtype === "BF16" ? f32ToBf16Bits(values) : Uint16Array.from(values, (v) => f32ToF16Bits(v));
  return new Uint8Array(bits.buffer);
}

/**
 * Serializes tensors as [prefix+header, data...] parts, so a caller can write
 * them out without concatenating a large file in memory. The header JSON is
 * padded with spaces to a multiple of 8 bytes, as the reference writer does,
 * so the data region starts 8-byte aligned.
 */
export function serializeSafetensorsParts(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    if (t.name === "__metadata__" || t.name in header) throw bad(`duplicate or reserved tensor name "${t.name}"`, { tensor: t.name });
    if (t.data instanceof Float32Array && t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") {
      throw bad(`tensor "${t.name}": ${t.dtype} is written from raw bytes, not f32 values`, { tensor: t.name });
    }
    const bytes = t.data instanceof Float32Array ? encodeF32As(t.data, t.dtype as FloatDtype) : t.data;
    const want = elementCount(t.shape) * DTYPE_BYTES[t.dtype];
    if (bytes.length !== want) throw bad(`tensor "${t.name}": ${bytes.length} bytes for ${t.dtype}[${t.shape.join(",")}]`, { tensor: t.name });
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const head = new Uint8Array(8 + json.length);
  new DataView(head.buffer).setUint32(0, json.length, true); // high 32 bits stay 0
  head.set(json, 8);
  return [head, ...parts];
}

/** The whole file as one buffer (fine for small checkpoints and tests). */
export function serializeSafetensors(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array<ArrayBuffer> {
  const parts = serializeSafetensorsParts(tensors, metadata);
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
