// webvlm's own pre-quantized format (config.json quantization_config.quant_method "webvlm"):
// written by `webvlm quantize --model M --dtype q4|q8 --out DIR` (quantizeCheckpoint below), read
// by webvlmQuantWeights (through loader/prequantized.ts). The packed blocks are stored exactly as
// the GPU reads them (quant/formats.ts), so a load uploads them as they arrive: no repacking, no
// f32 copy, no quantizing, and nothing to redo when the files come from IndexedDB.
//
// A normal Hugging Face directory, loadable from a local path, a static host, the hub or IndexedDB:
//   config.json          the source's config.json plus
//                        "quantization_config": {"quant_method": "webvlm", "format": "q4" | "q8",
//                        "group_size": 32, "version": 1[, "cols": {"X.weight": in_features, ...}]}
//                        ("cols" lists only matrices whose in_features is not a multiple of 32;
//                        every other quantized matrix has in_features = paddedCols)
//   model.safetensors, or model-0000N-of-0000M.safetensors + model.safetensors.index.json
//                        (a new shard starts before one would pass 2 GB); every tensor of the
//                        source checkpoint, in its order, stored as it was (same name, dtype,
//                        shape, bytes), EXCEPT each quantized matrix X.weight [rows, cols], which
//                        becomes (in place of X.weight, which is absent):
//     X.weight.qdata    U32 [rows, paddedCols * bits / 32]  PackedQuant.data: per row, groups of 32
//                        values along cols; q4: 4 words per group, value i at bits 4*(i%8) of
//                        word i/8, code q unsigned 0..15, value = (q - 8) * scale; q8: 8 words per
//                        group, byte i%4 of word i/4, signed int8, value = q * scale
//     X.weight.scales   F16 [rows, paddedCols / 32]  PackedQuant.scales, one per group
//     X.weight.zeros    U8  [rows, paddedCols / 32]  PackedQuant.zeros (only for a matrix with zero
//                        points; then codes are unsigned, value = (q - zero) * scale). `quantize`
//                        itself never writes them (webvlm's q4/q8 are symmetric).
//                        paddedCols = cols rounded up to a multiple of 32; padding values are exactly 0.
//                        bits = 4 (q4) or 8 (q8).
//   tokenizer.json, tokenizer_config.json, generation_config.json, preprocessor_config.json,
//   processor_config.json, chat_template.json, chat_template.jinja, special_tokens_map.json
//                        copied byte for byte when the source has them.
// Which matrices are quantized: exactly those the runtime quantizes in-situ for the family at that
// format (the decoder's linear layers; embeddings, lm_head, the vision tower and norms stay as
// stored). quantizeCheckpoint learns them by loading the model through the family's own load path
// with a WeightLoadOptions.packedCache that records every PackedQuant the loader puts into it;
// a fused matrix's key names its parts joined by "+" and is split back per part (packedRows), so
// every stored tensor keeps its checkpoint name. Loading the result therefore gives logits
// identical to an in-situ quantized load of the source.
// (A matrix too large for one GPU binding is quantized by the loader shard by shard and never
// offered to the cache: it stays stored as it was and is quantized in-situ at load, with the same
// result. No decoder linear of a supported model comes near that size.)
// Read side (webvlmQuantWeights): X.weight is listed with shape [rows, cols], dtype "Q4"/"Q8",
// byteSize = the bytes of its stored parts, and readQuantized("X.weight") returns the PackedQuant
// over the stored bytes as they are (read() dequantizes, for references); the parts' own names
// are hidden. config errors: unsupported_feature (format, group_size, version), bad_request (layout).
// A source that is already pre-quantized (any quantization_config) is refused (unsupported_feature).
// Streaming: the recording load holds the model on the GPU (as any load does); each recorded
// PackedQuant is appended to a spool (DIR/.webvlm-quantize.spool in the CLI, deleted after) and
// dropped, so JS never holds more than one packed matrix; the shards are then written tensor by
// tensor (header first, then each tensor's bytes from the spool or the source), never a whole file.
import { WebvlmError } from "../api/errors.ts";
import type { GpuContext } from "../gpu/device.ts";
import type { OpenedFamily } from "../models/family.ts";
import { GROUP_SIZE, paddedCols as padCols } from "../quant/formats.ts";
import type { PackedWeightCache } from "../quant/packed_cache.ts";
import { dequantize, packedRows, type PackedQuant } from "../quant/pack.ts";
import type { CheckpointWeights } from "./checkpoint.ts";
import type { QuantizationConfig } from "./prequantized.ts";

export const WEBVLM_QUANT_VERSION = 1;
/** Suffixes of the stored parts of a quantized matrix X.weight. */
export const QDATA = ".qdata";
export const SCALES = ".scales";
export const ZEROS = ".zeros";
/** A shard is closed before it would pass this many bytes of tensor data. */
export const DEFAULT_SHARD_BYTES = 2_000_000_000;
/** The small files copied from the source (config.json is rewritten). */
export const COPIED_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "preprocessor_config.json",
  "processor_config.json",
  "chat_template.json",
  "chat_template.jinja",
  "special_tokens_map.json",
] as const;

const bad = (msg: string, details?: Record<string, unknown>): WebvlmError =>
  new WebvlmError("bad_request", `webvlm quantized checkpoint: ${msg}`, details);

/** The validated quantization_config of a webvlm checkpoint. */
export interface WebvlmQuantConfig {
  format: "q4" | "q8";
  /** in_features of quantized matrices whose in_features is not a multiple of 32. */
  cols: Record<string, number>;
}

/** Checks quantization_config: quant_method "webvlm", format q4|q8, group_size 32, version 1. */
export function parseWebvlmQuantConfig(qc: QuantizationConfig): WebvlmQuantConfig {
  if (qc.quant_method !== "webvlm") throw bad(`quant_method is ${JSON.stringify(qc.quant_method)}, not "webvlm"`);
  if (qc.version !== WEBVLM_QUANT_VERSION) {
    throw new WebvlmError("unsupported_feature", `webvlm quantized checkpoint: version ${JSON.stringify(qc.version)} is not supported (only ${WEBVLM_QUANT_VERSION})`, { version: String(qc.version) });
  }
  if (qc.format !== "q4" && qc.format !== "q8") {
    throw new WebvlmError("unsupported_feature", `webvlm quantized checkpoint: format ${JSON.stringify(qc.format)} is not supported (q4 and q8 are)`, { format: String(qc.format) });
  }
  if (qc.group_size !== GROUP_SIZE) {
    throw new WebvlmError("unsupported_feature", `webvlm quantized checkpoint: group_size ${JSON.stringify(qc.group_size)} is not supported (only ${GROUP_SIZE})`, { group_size: String(qc.group_size) });
  }
  const cols: Record<string, number> = {};
  if (qc.cols !== undefined) {
    if (qc.cols === null || typeof qc.cols !== "object" || Array.isArray(qc.cols)) throw bad("quantization_config.cols must be an object");
    for (const [k, v] of Object.entries(qc.cols as Record<string, unknown>)) {
      if (!Number.isSafeInteger(v) || (v as number) < 1) throw bad(`quantization_config.cols[${JSON.stringify(k)}] must be a positive integer, got ${JSON.stringify(v)}`);
      cols[k] = v as number;
    }
  }
  return { format: qc.format, cols };
}

/** quantization_config for a checkpoint written in `format` (cols: the non-multiple-of-32 widths). */
export function webvlmQuantizationConfig(format: "q4" | "q8", cols: Record<string, number> = {}): Record<string, unknown> {
  const qc: Record<string, unknown> = { quant_method: "webvlm", format, group_size: GROUP_SIZE, version: WEBVLM_QUANT_VERSION };
  if (Object.keys(cols).length > 0) qc.cols = cols;
  return qc;
}

interface QuantEntry {
  rows: number;
  cols: number;
  paddedCols: number;
  zeros: boolean;
  bytes: number;
}

/** u32 words per row of a packed matrix. */
const wordsPerRow = (format: "q4" | "q8", pc: number): number => (pc / GROUP_SIZE) * (format === "q4" ? 4 : 8);

/** A typed array of `bytes` without copying when aligned (a copy otherwise). */
function view<T>(bytes: Uint8Array, width: number, make: (b: ArrayBuffer, o: number, n: number) => T): T {
  if (bytes.byteOffset % width === 0 && bytes.buffer instanceof ArrayBuffer) return make(bytes.buffer, bytes.byteOffset, bytes.byteLength / width);
  return make(bytes.slice().buffer, 0, bytes.byteLength / width);
}

/**
 * The weights of a webvlm quantized checkpoint: each X.weight.qdata/.scales(/.zeros) group shows as
 * X.weight with its logical [rows, cols] shape, byteSize = its stored parts, and readQuantized
 * returns the PackedQuant straight from the stored bytes. Everything else passes through.
 */
export function webvlmQuantWeights(weights: CheckpointWeights, qc: QuantizationConfig): CheckpointWeights {
  const { format, cols: colsOf } = parseWebvlmQuantConfig(qc);
  const quant = new Map<string, QuantEntry>();
  const hidden = new Set<string>();
  for (const n of weights.names()) {
    if (!n.endsWith(QDATA)) continue;
    const name = n.slice(0, -QDATA.length);
    const sc = name + SCALES;
    const zn = name + ZEROS;
    if (weights.has(name)) throw bad(`"${name}" is stored both plain and quantized`, { tensor: name });
    if (!weights.has(sc)) throw bad(`"${n}" has no "${sc}"`, { tensor: name });
    const qs = weights.shape(n);
    const ss = weights.shape(sc);
    if (weights.dtype(n) !== "U32" || qs.length !== 2) throw bad(`"${n}" must be U32 [rows, words], got ${weights.dtype(n)} [${qs.join(", ")}]`, { tensor: n });
    if (weights.dtype(sc) !== "F16" || ss.length !== 2) throw bad(`"${sc}" must be F16 [rows, groups], got ${weights.dtype(sc)} [${ss.join(", ")}]`, { tensor: sc });
    const [rows, groups] = ss;
    const pc = groups * GROUP_SIZE;
    if (qs[0] !== rows || qs[1] !== wordsPerRow(format, pc)) {
      throw bad(`"${n}" [${qs.join(", ")}] does not match ${format} with scales [${ss.join(", ")}] (expected [${rows}, ${wordsPerRow(format, pc)}])`, { tensor: n });
    }
    const zeros = weights.has(zn);
    if (zeros) {
      const zs = weights.shape(zn);
      if (weights.dtype(zn) !== "U8" || zs.length !== 2 || zs[0] !== rows || zs[1] !== groups) {
        throw bad(`"${zn}" must be U8 [${rows}, ${groups}], got ${weights.dtype(zn)} [${zs.join(", ")}]`, { tensor: zn });
      }
      hidden.add(zn);
    }
    const cols = colsOf[name] ?? pc;
    if (padCols(cols) !== pc) throw bad(`"${name}": ${cols} columns do not pad to the stored ${pc}`, { tensor: name });
    hidden.add(n).add(sc);
    let bytes = weights.byteSize(n) + weights.byteSize(sc);
    if (zeros) bytes += weights.byteSize(zn);
    quant.set(name, { rows, cols, paddedCols: pc, zeros, bytes });
  }
  for (const n of weights.names()) {
    if ((n.endsWith(".weight" + SCALES) || n.endsWith(".weight" + ZEROS)) && !hidden.has(n)) {
      throw bad(`"${n}" has no "${n.replace(/\.(scales|zeros)$/, QDATA)}"`, { tensor: n });
    }
  }
  const names = [...quant.keys(), ...weights.names().filter((n) => !hidden.has(n))];
  const readQuantized = async (name: string): Promise<PackedQuant | undefined> => {
    const q = quant.get(name);
    if (!q) return undefined;
    const [d, s, z] = await Promise.all([
      weights.readBytes(name + QDATA),
      weights.readBytes(name + SCALES),
      q.zeros ? weights.readBytes(name + ZEROS) : undefined,
    ]);
    return {
      format, rows: q.rows, cols: q.cols, paddedCols: q.paddedCols,
      data: view(d, 4, (b, o, n) => new Uint32Array(b, o, n)),
      scales: view(s, 2, (b, o, n) => new Uint16Array(b, o, n)),
      ...(z ? { zeros: z } : {}),
    };
  };
  const dequantized = async (name: string): Promise<Float32Array> => dequantize((await readQuantized(name))!);
  return {
    names: () => names.slice(),
    has: (n) => quant.has(n) || (weights.has(n) && !hidden.has(n)),
    shape: (n) => {
      const q = quant.get(n);
      return q ? [q.rows, q.cols] : weights.shape(n);
    },
    dtype: (n) => (quant.has(n) ? format.toUpperCase() : weights.dtype(n)),
    byteSize: (n) => quant.get(n)?.bytes ?? weights.byteSize(n),
    file: (n) => weights.file(quant.has(n) ? n + QDATA : n),
    // A quantized matrix reads as the values it stands for (the CPU reference); the loader uses readQuantized.
    read: (n) => (quant.has(n) ? dequantized(n) : weights.read(n)),
    readBytes: (n) => {
      if (quant.has(n)) {
        return Promise.reject(new WebvlmError("unsupported_feature", `"${n}" is stored quantized (${format}); read its packed form with readQuantized`, { tensor: n }));
      }
      return weights.readBytes(n);
    },
    readRows: async (n, start, count) => {
      const q = quant.get(n);
      if (!q) return weights.readRows(n, start, count);
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 || start + count > q.rows) {
        throw new WebvlmError("bad_request", `rows [${start}, ${start + count}) out of range for "${n}" [${q.rows}, ${q.cols}]`, { tensor: n });
      }
      return dequantize(packedRows((await readQuantized(n))!, start, count));
    },
    totalBytes: weights.totalBytes,
    readQuantized,
  };
}

// ---------------------------------------------------------------- writing

/** Where recorded packed matrices wait until the shards are written (a temp file, or memory). */
export interface PackedSpool {
  /** Appends bytes; returns their offset. */
  append(bytes: Uint8Array): Promise<number>;
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** A PackedSpool in memory (tests, small models). */
export function memorySpool(): PackedSpool {
  const chunks: Uint8Array[] = [];
  const offsets: number[] = [];
  let size = 0;
  return {
    async append(bytes) {
      offsets.push(size);
      chunks.push(bytes.slice());
      size += bytes.length;
      return size - bytes.length;
    },
    async read(offset, length) {
      const i = offsets.indexOf(offset);
      if (i < 0 || chunks[i].length !== length) throw new Error(`memorySpool: no chunk at ${offset}+${length}`);
      return chunks[i];
    },
  };
}

/** The output directory: whole small files and streamed large ones. */
export interface QuantizeSink {
  writeFile(file: string, bytes: Uint8Array): Promise<void>;
  /** A file written front to back in parts. */
  create(file: string): Promise<{ write(bytes: Uint8Array): Promise<void>; close(): Promise<void> }>;
}

interface SpooledPart {
  offset: number;
  length: number;
  dtype: "U32" | "F16" | "U8";
  shape: number[];
}

interface SpooledMatrix {
  cols: number;
  parts: [string, SpooledPart][];
}

const asBytes = (a: Uint32Array | Uint16Array | Uint8Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * A PackedWeightCache that never hits (so the loader quantizes every matrix it quantizes) and
 * spools what the loader puts, split back into its named parts. `rowsOf` gives a part's rows.
 */
export function recordingPackedCache(
  spool: PackedSpool,
  rowsOf: (name: string) => number,
): { cache: PackedWeightCache; recorded: Map<string, SpooledMatrix>; format(): "q4" | "q8" | undefined } {
  const recorded = new Map<string, SpooledMatrix>();
  let fmt: "q4" | "q8" | undefined;
  const cache: PackedWeightCache = {
    get: async () => undefined,
    async put(key, packed) {
      const names = key.split("|")[0].split("+");
      if (fmt && fmt !== packed.format) throw new WebvlmError("unsupported_feature", `quantize: the loader quantized matrices both ${fmt} and ${packed.format}; one format per checkpoint`);
      fmt = packed.format;
      let row = 0;
      for (const name of names) {
        const rows = rowsOf(name);
        const p = names.length === 1 ? packed : packedRows(packed, row, rows);
        row += rows;
        if (recorded.has(name)) throw new WebvlmError("bad_request", `quantize: "${name}" was quantized twice`, { tensor: name });
        const groups = p.paddedCols / GROUP_SIZE;
        const parts: [string, SpooledPart][] = [];
        const add = async (suffix: string, a: Uint32Array | Uint16Array | Uint8Array, dtype: SpooledPart["dtype"], shape: number[]): Promise<void> => {
          const bytes = asBytes(a);
          parts.push([name + suffix, { offset: await spool.append(bytes), length: bytes.length, dtype, shape }]);
        };
        await add(QDATA, p.data, "U32", [p.rows, p.data.length / p.rows]);
        await add(SCALES, p.scales, "F16", [p.rows, groups]);
        if (p.zeros) await add(ZEROS, p.zeros, "U8", [p.rows, groups]);
        recorded.set(name, { cols: p.cols, parts });
      }
      if (row !== packed.rows) throw new WebvlmError("shape_mismatch", `quantize: the parts of ${key} have ${row} rows, the packed matrix ${packed.rows}`);
    },
  };
  return { cache, recorded, format: () => fmt };
}

/** Header bytes (u64 length + JSON padded with spaces to 8) of a safetensors file. */
function safetensorsHeader(entries: { name: string; dtype: string; shape: number[]; length: number }[], metadata: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.length] };
    offset += e.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(out.buffer).setUint32(0, padded, true);
  out.set(json, 8);
  return out;
}

export interface QuantizeOptions {
  gpu: GpuContext;
  /** The source checkpoint's weights (opened without IndexedDB) and parsed config.json. */
  weights: CheckpointWeights;
  config: Record<string, unknown>;
  /** The family opened on that config (models/registry.ts resolveFamily(config).open(config)). */
  family: OpenedFamily;
  format: "q4" | "q8";
  /** A source file's bytes, or undefined when it does not exist (the checkpoint store's readFile). */
  readFile(file: string): Promise<Uint8Array | undefined>;
  sink: QuantizeSink;
  spool: PackedSpool;
  shardBytes?: number;
  /** Progress lines (which step, which file). */
  log?: (line: string) => void;
}

export interface QuantizeResult {
  files: string[];
  /** Names of the matrices stored quantized. */
  quantized: string[];
  /** Tensor bytes written (all shards, headers excluded). */
  tensorBytes: number;
}

/**
 * Writes the webvlm quantized form of a checkpoint (layout at the top of this file): loads it
 * once through the family's own load path at `format` to record the packed matrices, then writes
 * config.json, the copied files and the shards.
 */
export async function quantizeCheckpoint(o: QuantizeOptions): Promise<QuantizeResult> {
  const { weights, sink } = o;
  if (o.format !== "q4" && o.format !== "q8") throw new WebvlmError("bad_request", `quantize: format must be q4 or q8, got ${JSON.stringify(o.format)}`);
  const existing = (o.config.quantization_config ?? (o.config.text_config as Record<string, unknown> | undefined)?.quantization_config) as Record<string, unknown> | undefined;
  if (existing || weights.readQuantized) {
    throw new WebvlmError("unsupported_feature", `quantize: the source is already quantized (quant_method ${JSON.stringify(existing?.quant_method)}); start from an unquantized checkpoint`);
  }
  const rec = recordingPackedCache(o.spool, (n) => weights.shape(n)[0]);
  o.log?.(`quantizing the decoder's linear layers to ${o.format}`);
  const model = await o.family.load(o.gpu, weights, { textLinear: o.format, embedding: "f16", vision: "f16", packedCache: rec.cache });
  model.dispose();
  o.gpu.pool.trim();
  if (rec.recorded.size === 0) throw new WebvlmError("unsupported_feature", `quantize: the ${o.family.family} loader quantized no matrix at ${o.format}`);

  // The stored tensors, in the source's order, each quantized matrix replaced by its parts.
  interface Out { name: string; dtype: string; shape: number[]; length: number; bytes(): Promise<Uint8Array> }
  const outs: Out[] = [];
  const cols: Record<string, number> = {};
  for (const name of weights.names()) {
    const q = rec.recorded.get(name);
    if (!q) {
      outs.push({ name, dtype: weights.dtype(name), shape: weights.shape(name), length: weights.byteSize(name), bytes: () => weights.readBytes(name) });
      continue;
    }
    if (q.cols % GROUP_SIZE !== 0) cols[name] = q.cols;
    for (const [pn, p] of q.parts) outs.push({ name: pn, dtype: p.dtype, shape: p.shape, length: p.length, bytes: () => o.spool.read(p.offset, p.length) });
  }
  for (const n of rec.recorded.keys()) if (!weights.has(n)) throw new WebvlmError("missing_tensor", `quantize: recorded "${n}" is not in the checkpoint`, { tensor: n });

  // Shards: a new one before one would pass shardBytes.
  const limit = o.shardBytes ?? DEFAULT_SHARD_BYTES;
  const groups: Out[][] = [[]];
  let size = 0;
  for (const t of outs) {
    const cur = groups[groups.length - 1];
    if (cur.length > 0 && size + t.length > limit) {
      groups.push([t]);
      size = t.length;
    } else {
      cur.push(t);
      size += t.length;
    }
  }
  const fileNames = groups.length === 1
    ? ["model.safetensors"]
    : groups.map((_, i) => `model-${String(i + 1).padStart(5, "0")}-of-${String(groups.length).padStart(5, "0")}.safetensors`);
  const files: string[] = [];
  let tensorBytes = 0;
  for (let i = 0; i < groups.length; i++) {
    o.log?.(`writing ${fileNames[i]}`);
    const w = await sink.create(fileNames[i]);
    try {
      await w.write(safetensorsHeader(groups[i], { format: "pt" }));
      for (const t of groups[i]) {
        const b = await t.bytes();
        if (b.length !== t.length) throw new WebvlmError("integrity_failed", `quantize: "${t.name}" gave ${b.length} bytes, expected ${t.length}`, { tensor: t.name });
        await w.write(b);
        tensorBytes += b.length;
      }
    } finally {
      await w.close();
    }
    files.push(fileNames[i]);
  }
  const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v, null, 2) + "\n");
  if (groups.length > 1) {
    const weightMap: Record<string, string> = {};
    groups.forEach((g, i) => { for (const t of g) weightMap[t.name] = fileNames[i]; });
    await sink.writeFile("model.safetensors.index.json", enc({ metadata: { total_size: tensorBytes }, weight_map: weightMap }));
    files.push("model.safetensors.index.json");
  }
  for (const f of COPIED_FILES) {
    const b = await o.readFile(f);
    if (b === undefined) continue;
    await sink.writeFile(f, b);
    files.push(f);
  }
  await sink.writeFile("config.json", enc({ ...o.config, quantization_config: webvlmQuantizationConfig(o.format, cols) }));
  files.push("config.json");
  return { files, quantized: [...rec.recorded.keys()], tensorBytes };
}
