// Embedding gather vs a CPU gather of the values each format stands for (roundTripValues:
// f16-rounded / dequantized), whole tables and row-sharded ones. Exact in principle (a gather
// and q * scale are exact in f32); tolerance NMSE <= 1e-12. q4/q8 also report NMSE against the
// unquantized table as information. Ids >= vocab must come back as zero rows.
import { embedding } from "../../src/ops/embedding.ts";
import { Recorder } from "../../src/gpu/recorder.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { readF32, uploadTensor } from "../../src/gpu/transfer.ts";
import type { ShardedWeight, Weight, WeightFormat } from "../../src/quant/formats.ts";
import { roundTripValues, uploadWeight, weightTensors } from "../../src/quant/pack.ts";
import type { KernelCase } from "../util/cases.ts";
import { expectClose, nmse, randomArray } from "../util/compare.ts";

/** out[s] = table[ids[s]] for ids < vocab, else zeros. */
export function embeddingReference(table: Float32Array, vocab: number, h: number, ids: Uint32Array): Float32Array {
  const out = new Float32Array(ids.length * h);
  ids.forEach((id, s) => {
    if (id < vocab) out.set(table.subarray(id * h, (id + 1) * h), s * h);
  });
  return out;
}

/** Splits [vocab, h] rows at the given boundaries and uploads each range as its own weight. */
function uploadSharded(gpu: GpuContext, values: Float32Array, vocab: number, h: number, format: WeightFormat, cuts: number[]): ShardedWeight {
  const bounds = [0, ...cuts, vocab];
  const shards = bounds.slice(0, -1).map((start, i) => {
    const rows = bounds[i + 1] - start;
    return { rowStart: start, weight: uploadWeight(gpu, values.subarray(start * h, (start + rows) * h), rows, h, format, `emb.shard${i}`) };
  });
  return { format, rows: vocab, cols: h, shards };
}

interface EmbCase {
  format: WeightFormat;
  vocab: number;
  h: number;
  /** row boundaries of shards; none = one whole table */
  cuts?: number[];
}

const specs: EmbCase[] = [
  { format: "f32", vocab: 1000, h: 1536 },
  { format: "f16", vocab: 1000, h: 1536 },
  { format: "f16", vocab: 1000, h: 81 }, // odd H: rows start mid-word
  { format: "q8", vocab: 1000, h: 1536 },
  { format: "q8", vocab: 999, h: 100 }, // H not a multiple of 32
  { format: "q4", vocab: 1000, h: 1536 },
  { format: "q4", vocab: 1000, h: 80 },
  { format: "f32", vocab: 1000, h: 80, cuts: [300, 650] },
  { format: "f16", vocab: 1000, h: 81, cuts: [1, 999] },
  { format: "q8", vocab: 1000, h: 100, cuts: [500] },
  { format: "q4", vocab: 1000, h: 1536, cuts: [300, 650] },
];

export const cases: KernelCase[] = specs.map(({ format, vocab, h, cuts }) => ({
  name: `embedding ${format} vocab=${vocab} H=${h}${cuts ? ` sharded at [${cuts}]` : ""}`,
  async run(gpu) {
    const values = randomArray(vocab * h, 101 + h + vocab, -0.1, 0.1);
    const ids = Uint32Array.from([0, vocab - 1, 5, 5, vocab, 299, 300, 649, 650, 0xffffffff, 123, vocab - 2, 1, 998, 999, 2 ** 31, 17]);
    const table: Weight | ShardedWeight = cuts
      ? uploadSharded(gpu, values, vocab, h, format, cuts)
      : uploadWeight(gpu, values, vocab, h, format, "emb");
    const tids = uploadTensor(gpu, ids, [ids.length], "u32");
    // Pre-filled output: every row, out-of-range ones included, must be overwritten.
    const out = uploadTensor(gpu, new Float32Array(ids.length * h).fill(1234.5), [ids.length, h], "f32");
    const rec = new Recorder(gpu);
    embedding(rec, tids, table, out);
    rec.submit();
    const got = await readF32(gpu, out);
    const weights = "shards" in table ? table.shards.map((s) => s.weight) : [table];
    for (const t of [tids, out, ...weights.flatMap(weightTensors)]) gpu.pool.release(t.buffer);
    const e = expectClose("embedding", got, embeddingReference(roundTripValues(values, vocab, h, format), vocab, h, ids), 1e-12);
    const info = format === "q4" || format === "q8" ? ` (vs unquantized: ${nmse(got, embeddingReference(values, vocab, h, ids)).toExponential(2)})` : "";
    return `nmse=${e.toExponential(2)}${info}`;
  },
}));

/** i32 ids (negative ones read as huge u32 -> zeros) and a 1-token gather. */
cases.push({
  name: "embedding f16 i32 ids incl. -1, and S=1",
  async run(gpu) {
    const [vocab, h] = [50, 64];
    const values = randomArray(vocab * h, 111);
    const w = uploadWeight(gpu, values, vocab, h, "f16", "emb");
    const ids = Int32Array.from([3, -1, 49, 0]);
    const tids = uploadTensor(gpu, ids, [ids.length], "i32");
    const one = uploadTensor(gpu, Uint32Array.from([7]), [1], "u32");
    const rec = new Recorder(gpu);
    const out = embedding(rec, tids, w);
    const out1 = embedding(rec, one, w);
    rec.submit();
    const got = await readF32(gpu, out);
    const got1 = await readF32(gpu, out1);
    for (const t of [tids, one, out, out1, ...weightTensors(w)]) gpu.pool.release(t.buffer);
    const ref = roundTripValues(values, vocab, h, "f16");
    const e = expectClose("embedding i32", got, embeddingReference(ref, vocab, h, Uint32Array.from(ids, (v) => v >>> 0)), 1e-12);
    const e1 = expectClose("embedding S=1", got1, embeddingReference(ref, vocab, h, Uint32Array.from([7])), 1e-12);
    return `nmse=${e.toExponential(2)} / ${e1.toExponential(2)}`;
  },
});
