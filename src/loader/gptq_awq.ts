// GPTQ and AWQ checkpoints (quantization_config.quant_method "gptq" / "awq"): every module X with
// X.qweight / X.qzeros / X.scales (/ X.g_idx) is presented as one matrix X.weight of logical shape
// [out_features, in_features], and readQuantized("X.weight") repacks its parts, read one tensor at
// a time, into the GPU layout (quant/formats.ts: groups of 32 along in_features, f16 scales, one
// zero-point byte per group, unsigned codes, value = (q - zero) * scale). A group of 64, 128 or a
// whole row (-1) becomes a run of 32-wide groups with the same scale and zero (exact).
//
// Stored layouts (scripts/make_quantized_fixtures.py cites the code each follows):
//   GPTQ (AutoGPTQ QuantLinear.pack; dequantized in QuantLinear.forward):
//     qweight I32 [in * bits / 32, out]: input k of output n at bits bits*(k % (32/bits)) of
//       qweight[k / (32/bits), n]. Per output column that is exactly our word order, so the words
//       are copied transposed, untouched.
//     qzeros I32 [groups, out * bits / 32]: zero of (group g, output n) at bits bits*(n % (32/bits))
//       of qzeros[g, n / (32/bits)]. checkpoint_format "gptq" (v1, AutoGPTQ) stores zero - 1, so
//       zero = stored + 1 (also a 4-bit stored 15 -> 16, as AutoGPTQ computes it); "gptq_v2"
//       (GPTQModel) stores the zero itself.
//     scales F16 [groups, out]; g_idx I32 [in]: the group of input k. Without act order (or with
//       static groups) g_idx[k] = floor(k / group_size). desc_act checkpoints quantized columns in
//       a permuted order and their g_idx sends neighbouring inputs to different groups: our groups
//       are contiguous runs along in_features, so those are refused (unsupported_feature).
//     w[n, k] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])
//   AWQ GEMM (AutoAWQ WQLinear_GEMM.from_linear; packing_utils.dequantize_gemm):
//     qweight I32 [in, out / 8]: output n = 8c + AWQ_ORDER[i] of input k at bits 4*i of
//       qweight[k, c], AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7] (so output n is at nibble
//       AWQ_REVERSE_ORDER[n % 8] = [0, 4, 1, 5, 2, 6, 3, 7][n % 8]); qzeros I32 [groups, out / 8]
//       the same way (zeros stored as they are); scales F16 [groups, out].
//     w[n, k] = (q[k, n] - zero[k / group, n]) * scales[k / group, n]
// A matrix whose zeros are all the symmetric midpoint (8 for 4 bits, 128 for 8: every GPTQ
// sym=true matrix) loads without zero points in the plain symmetric layout (q4 codes as they are;
// q8 codes recentred to signed bytes), which is the same values.
import { WebvlmError } from "../api/errors.ts";
import { GROUP_SIZE } from "../quant/formats.ts";
import { dequantize, packedRows, type PackedQuant } from "../quant/pack.ts";
import type { CheckpointWeights } from "./checkpoint.ts";
import type { QuantizationConfig } from "./prequantized.ts";

/** The quantization_config, validated and reduced to what the layouts depend on. */
export interface GptqAwqSpec {
  method: "gptq" | "awq";
  bits: 4 | 8;
  /** Inputs per group; -1: one group per row. */
  groupSize: number;
  /** GPTQ v1 (checkpoint_format "gptq"): qzeros hold zero - 1. */
  zerosMinusOne: boolean;
}

const AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7];

// Fields that describe how a checkpoint was made (calibration, kernels to pick, model metadata) and
// not how its tensors are laid out: accepted and ignored. Any other field is refused by name.
const GPTQ_INFO = new Set([
  "quant_method", "bits", "group_size", "sym", "desc_act", "static_groups", "checkpoint_format", "format",
  "damp_percent", "damp_auto_increment", "true_sequential", "mse", "model_name_or_path", "model_file_base_name",
  "tokenizer", "dataset", "use_cuda_fp16", "model_seqlen", "block_name_to_quantize", "module_name_preceding_first_block",
  "batch_size", "pad_token_id", "use_exllama", "disable_exllama", "exllama_config", "max_input_length",
  "cache_block_outputs", "modules_in_block_to_quantize", "inside_layer_modules", "meta", "backend", "quantizer",
  "is_marlin_format", "pack_dtype", "lm_head", "dynamic", "modules_to_not_convert", "v2", "v2_alpha", "v2_memory_device",
  "act_group_aware", "hyb_act", "rotation", "device", "parallel_packing", "buffered_fwd", "mock_quantization",
]);
const AWQ_INFO = new Set([
  "quant_method", "bits", "w_bit", "group_size", "q_group_size", "zero_point", "version", "backend",
  "modules_to_not_convert", "do_fuse", "fuse_max_seq_len", "modules_to_fuse", "exllama_config", "modules_to_preserve",
]);

function unsupported(message: string, details?: Record<string, unknown>): WebvlmError {
  return new WebvlmError("unsupported_feature", message, details);
}
function bad(message: string, details?: Record<string, unknown>): WebvlmError {
  return new WebvlmError("bad_request", message, details);
}

/** Validates a GPTQ / AWQ quantization_config (typed errors that name the field). */
export function parseGptqAwqConfig(qc: QuantizationConfig): GptqAwqSpec {
  const method = qc.quant_method;
  if (method !== "gptq" && method !== "awq") throw unsupported(`quantization_config.quant_method ${JSON.stringify(method)} is not gptq or awq`, { field: "quant_method" });
  const field = (k: string): string => `quantization_config.${k}`;
  for (const k of Object.keys(qc)) {
    if (!(method === "gptq" ? GPTQ_INFO : AWQ_INFO).has(k)) {
      throw unsupported(`${field(k)} (${JSON.stringify(qc[k])}) is not understood for ${method} checkpoints`, { field: k });
    }
  }
  const bool = (k: string, dflt: boolean): boolean => {
    const v = qc[k];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "boolean") throw bad(`${field(k)} must be true or false, got ${JSON.stringify(v)}`, { field: k });
    return v;
  };
  const int = (k: string): number | undefined => {
    const v = qc[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v)) throw bad(`${field(k)} must be an integer, got ${JSON.stringify(v)}`, { field: k });
    return v;
  };
  const bitsKey = method === "awq" && qc.bits === undefined && qc.w_bit !== undefined ? "w_bit" : "bits";
  const bits = int(bitsKey);
  if (bits === undefined) throw bad(`${field(bitsKey)} is missing`, { field: bitsKey });
  if (method === "gptq" ? bits !== 4 && bits !== 8 : bits !== 4) {
    throw unsupported(`${field(bitsKey)} ${bits} is not supported for ${method} checkpoints (${method === "gptq" ? "4 and 8" : "4"} are)`, { field: bitsKey, bits });
  }
  const groupKey = method === "awq" && qc.group_size === undefined && qc.q_group_size !== undefined ? "q_group_size" : "group_size";
  const groupSize = int(groupKey) ?? (method === "gptq" ? 128 : undefined);
  if (groupSize === undefined) throw bad(`${field(groupKey)} is missing`, { field: groupKey });
  if (groupSize !== -1 && (groupSize <= 0 || groupSize % GROUP_SIZE !== 0)) {
    throw unsupported(`${field(groupKey)} ${groupSize} is not supported: groups must be a multiple of ${GROUP_SIZE} inputs, or -1 (a whole row)`, { field: groupKey, group_size: groupSize });
  }

  if (method === "awq") {
    const version = qc.version ?? "gemm";
    if (typeof version !== "string" || version.toLowerCase() !== "gemm") {
      throw unsupported(`${field("version")} ${JSON.stringify(version)} is not supported: only AutoAWQ's GEMM packing is (GEMV, GEMV_fast, exllama, ipex and marlin pack differently)`, { field: "version" });
    }
    const backend = qc.backend;
    if (backend !== undefined && backend !== null && backend !== "autoawq") {
      throw unsupported(`${field("backend")} ${JSON.stringify(backend)} is not supported (only "autoawq" checkpoints, GEMM packing, are)`, { field: "backend" });
    }
    if (!bool("zero_point", true)) throw unsupported(`${field("zero_point")} false is not supported: AutoAWQ's GEMM layout stores zero points`, { field: "zero_point" });
    return { method, bits: 4, groupSize, zerosMinusOne: false };
  }

  bool("sym", true);
  bool("desc_act", false); // act order is judged from each matrix's g_idx (static groups keep it trivial)
  bool("static_groups", false);
  if (bool("is_marlin_format", false)) throw unsupported(`${field("is_marlin_format")} true is not supported (Marlin repacks the weights)`, { field: "is_marlin_format" });
  bool("lm_head", false); // a quantized lm_head is one more module with a qweight
  const dynamic = qc.dynamic;
  if (dynamic !== undefined && dynamic !== null && !(typeof dynamic === "object" && Object.keys(dynamic).length === 0)) {
    throw unsupported(`${field("dynamic")} (per-module bits / group sizes) is not supported`, { field: "dynamic" });
  }
  const pack = qc.pack_dtype;
  if (pack !== undefined && pack !== null && pack !== "int32" && pack !== "torch.int32") {
    throw unsupported(`${field("pack_dtype")} ${JSON.stringify(pack)} is not supported (int32 is)`, { field: "pack_dtype" });
  }
  let fmt = qc.checkpoint_format ?? qc.format ?? "gptq";
  const fmtKey = qc.checkpoint_format !== undefined ? "checkpoint_format" : "format";
  if (typeof fmt === "string") fmt = fmt.toLowerCase();
  if (fmt !== "gptq" && fmt !== "gptq_v2") {
    throw unsupported(`${field(fmtKey)} ${JSON.stringify(fmt)} is not supported ("gptq", zeros stored minus one, and "gptq_v2" are)`, { field: fmtKey });
  }
  return { method, bits: bits as 4 | 8, groupSize, zerosMinusOne: fmt === "gptq" };
}

interface QuantModule {
  rows: number;
  cols: number;
  groups: number;
  gIdx: boolean;
  bytes: number;
}

const PARTS = [".qweight", ".qzeros", ".scales", ".g_idx"] as const;

/** The checkpoint's weights with its GPTQ / AWQ matrices under their plain names (see the top). */
export function gptqAwqWeights(weights: CheckpointWeights, qc: QuantizationConfig): CheckpointWeights {
  const spec = parseGptqAwqConfig(qc);
  const { method, bits } = spec;
  const per = 32 / bits;
  const modules = new Map<string, QuantModule>();
  const hidden = new Set<string>();
  for (const n of weights.names()) {
    if (!n.endsWith(".qweight")) continue;
    const x = n.slice(0, -".qweight".length);
    const name = x + ".weight";
    const need = (suffix: string): string => {
      if (!weights.has(x + suffix)) throw new WebvlmError("missing_tensor", `tensor "${x + suffix}" not found: ${method} module ${x} has a qweight`, { tensor: x + suffix });
      return x + suffix;
    };
    const check = (t: string, dtype: string, shape: number[]): void => {
      const s = weights.shape(t);
      if (weights.dtype(t) !== dtype) {
        throw new WebvlmError("dtype_mismatch", `"${t}" must be ${dtype}, got ${weights.dtype(t)} (${method} ${t.slice(x.length + 1)})`, { tensor: t });
      }
      if (s.length !== shape.length || s.some((d, i) => d !== shape[i])) {
        throw new WebvlmError("shape_mismatch", `"${t}" must be ${dtype} [${shape.join(", ")}], got ${weights.dtype(t)} [${s.join(", ")}]`, { tensor: t });
      }
    };
    if (weights.has(name)) throw bad(`"${name}" and "${n}" are both in the checkpoint`, { tensor: name });
    const qs = weights.shape(n);
    if (qs.length !== 2) throw new WebvlmError("shape_mismatch", `"${n}" must be 2-D, got [${qs.join(", ")}]`, { tensor: n });
    const rows = method === "gptq" ? qs[1] : qs[1] * 8;
    const cols = method === "gptq" ? qs[0] * per : qs[0];
    if (cols % GROUP_SIZE !== 0) throw unsupported(`${x}: in_features ${cols} is not a multiple of ${GROUP_SIZE}`, { tensor: n });
    if (rows % per !== 0) throw unsupported(`${x}: out_features ${rows} is not a multiple of ${per}`, { tensor: n });
    const group = spec.groupSize === -1 ? cols : spec.groupSize;
    if (cols % group !== 0) {
      throw unsupported(`${x}: quantization_config.group_size ${spec.groupSize} does not divide in_features ${cols}`, { tensor: n, field: "group_size" });
    }
    const groups = cols / group;
    check(n, "I32", qs);
    check(need(".scales"), "F16", [groups, rows]);
    check(need(".qzeros"), "I32", [groups, rows / per]);
    const gIdx = weights.has(x + ".g_idx");
    if (gIdx) {
      if (method === "awq") throw bad(`"${x}.g_idx" in an AWQ checkpoint`, { tensor: x + ".g_idx" });
      check(x + ".g_idx", "I32", [cols]);
    }
    let bytes = 0;
    for (const p of PARTS) {
      if (weights.has(x + p)) {
        hidden.add(x + p);
        bytes += weights.byteSize(x + p);
      }
    }
    modules.set(name, { rows, cols, groups, gIdx, bytes });
  }
  for (const n of weights.names()) {
    if ((n.endsWith(".qzeros") || n.endsWith(".g_idx")) && !hidden.has(n)) {
      throw new WebvlmError("missing_tensor", `tensor "${n.replace(/\.(qzeros|g_idx)$/, ".qweight")}" not found: "${n}" has no qweight`, { tensor: n });
    }
  }

  const int32s = async (t: string): Promise<Int32Array> => {
    const b = await weights.readBytes(t);
    const own = b.byteOffset % 4 === 0 ? b : b.slice();
    return new Int32Array(own.buffer, own.byteOffset, own.byteLength / 4);
  };
  const readQuantized = async (name: string): Promise<PackedQuant | undefined> => {
    const m = modules.get(name);
    if (!m) return undefined;
    const x = name.slice(0, -".weight".length);
    const { rows, cols, groups } = m;
    const group = cols / groups;
    const g32 = cols / GROUP_SIZE;
    const maxq = (1 << bits) - 1;
    // One stored tensor at a time: g_idx, scales, zeros, then the codes.
    if (m.gIdx) {
      const g = await int32s(x + ".g_idx");
      for (let k = 0; k < cols; k++) {
        if (g[k] !== Math.floor(k / group)) {
          throw unsupported(
            `${x}: act-order GPTQ checkpoints (desc_act with a permuted g_idx) are not supported: input ${k} belongs to group ${g[k]}, not ${Math.floor(k / group)}, ` +
            `and the GPU layout needs each group to be a contiguous run of inputs (quantize with desc_act false, or static_groups true)`,
            { tensor: x + ".g_idx", field: "desc_act" },
          );
        }
      }
    }
    const scales = new Uint16Array(rows * g32);
    {
      const b = await weights.readBytes(x + ".scales");
      const s = new DataView(b.buffer, b.byteOffset, b.byteLength);
      for (let n = 0; n < rows; n++) {
        for (let j = 0; j < g32; j++) scales[n * g32 + j] = s.getUint16((Math.floor((j * GROUP_SIZE) / group) * rows + n) * 2, true);
      }
    }
    const zeros = new Uint8Array(rows * g32);
    let symmetric = true;
    {
      const qz = await int32s(x + ".qzeros");
      const zw = rows / per;
      const add = spec.zerosMinusOne ? 1 : 0;
      const mid = 1 << (bits - 1);
      for (let g = 0; g < groups; g++) {
        for (let n = 0; n < rows; n++) {
          const word = qz[g * zw + Math.floor(n / per)];
          const shift = method === "gptq" ? bits * (n % per) : 4 * AWQ_REVERSE_ORDER[n & 7];
          const z = ((word >>> shift) & maxq) + add;
          if (z > 255) {
            throw unsupported(`${x}: zero point ${z} (stored ${z - add}, GPTQ v1 stores zero - 1) does not fit the 8-bit zero points (a zero of 0 written as -1?)`, { tensor: x + ".qzeros" });
          }
          if (z !== mid) symmetric = false;
          for (let j = (g * group) / GROUP_SIZE; j < ((g + 1) * group) / GROUP_SIZE; j++) zeros[n * g32 + j] = z;
        }
      }
    }
    const wordsPerRow = (cols * bits) / 32;
    const data = new Uint32Array(rows * wordsPerRow);
    {
      const q = await int32s(x + ".qweight");
      if (method === "gptq") {
        // qweight[kk, n] holds inputs kk*per .. kk*per + per - 1 of output n in our order: transpose.
        for (let kk = 0; kk < wordsPerRow; kk++) {
          const src = kk * rows;
          for (let n = 0; n < rows; n++) data[n * wordsPerRow + kk] = q[src + n];
        }
      } else {
        const qw = rows / 8;
        for (let k = 0; k < cols; k++) {
          const src = k * qw;
          const dstWord = k >> 3;
          const dstShift = (k & 7) * 4;
          for (let n = 0; n < rows; n++) {
            const code = (q[src + (n >> 3)] >>> (4 * AWQ_REVERSE_ORDER[n & 7])) & 15;
            data[n * wordsPerRow + dstWord] |= code << dstShift;
          }
        }
      }
    }
    const format = bits === 4 ? "q4" : "q8";
    if (symmetric) {
      // Zeros all 8 / 128: the symmetric layout (q4 value = (q - 8) * s; q8 signed byte = q - 128).
      if (bits === 8) for (let i = 0; i < data.length; i++) data[i] ^= 0x80808080;
      return { format, rows, cols, paddedCols: cols, data, scales };
    }
    return { format, rows, cols, paddedCols: cols, data, scales, zeros };
  };

  const names = [...modules.keys(), ...weights.names().filter((n) => !hidden.has(n))];
  const dequantized = async (name: string): Promise<Float32Array> => dequantize((await readQuantized(name))!);
  return {
    names: () => names.slice(),
    has: (n) => modules.has(n) || (weights.has(n) && !hidden.has(n)),
    shape: (n) => {
      const m = modules.get(n);
      return m ? [m.rows, m.cols] : weights.shape(n);
    },
    dtype: (n) => (modules.has(n) ? `${method.toUpperCase()}_Q${bits}` : weights.dtype(n)),
    byteSize: (n) => modules.get(n)?.bytes ?? weights.byteSize(n),
    file: (n) => weights.file(modules.has(n) ? n.slice(0, -".weight".length) + ".qweight" : n),
    // A quantized matrix reads as the values it stands for (the CPU reference); the loader uses readQuantized.
    read: (n) => (modules.has(n) ? dequantized(n) : weights.read(n)),
    readBytes: (n) => {
      if (modules.has(n)) {
        return Promise.reject(new WebvlmError("unsupported_feature", `"${n}" is stored ${method}-quantized; read its packed form with readQuantized`, { tensor: n }));
      }
      return weights.readBytes(n);
    },
    readRows: async (n, start, count) => {
      const m = modules.get(n);
      if (!m) return weights.readRows(n, start, count);
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 || start + count > m.rows) {
        throw new WebvlmError("bad_request", `rows [${start}, ${start + count}) out of range for "${n}" [${m.rows}, ${m.cols}]`, { tensor: n });
      }
      return dequantize(packedRows((await readQuantized(n))!, start, count));
    },
    totalBytes: weights.totalBytes,
    readQuantized,
  };
}
