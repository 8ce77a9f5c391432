import code from "../../shaders/embedding.wgsl?raw";
import { WebvlmError } from "../api/errors.ts";
import { grid2d, packUniforms, type Recorder } from "../gpu/recorder.ts";
import { expectDtype, expectShape, type Tensor } from "../gpu/tensor.ts";
import { allocTensor } from "../gpu/transfer.ts";
import type { ShardedWeight, Weight, WeightFormat } from "../quant/formats.ts";

/** Values of the shader's FORMAT override. */
const FORMAT: Record<WeightFormat, number> = { f32: 0, f16: 1, q8: 2, q4: 3 };

function isSharded(t: Weight | ShardedWeight): t is ShardedWeight {
  return (t as ShardedWeight).shards !== undefined;
}

/**
 * Gathers table rows: out[s, :] = table[ids[s], :] as f32 [S, H]. ids are u32 (or i32) [S];
 * the table is [vocab, H] in any weight format, whole or split into row shards (one dispatch
 * per shard, each writing only the ids in its row range). The CPU cannot see the ids, so an
 * id >= vocab (or a negative i32 id) is not an error: the kernel never reads out of bounds and
 * writes a row of zeros for it.
 */
export function embedding(rec: Recorder, ids: Tensor, table: Weight | ShardedWeight, out?: Tensor): Tensor {
  expectDtype("embedding.ids", ids, ["u32", "i32"]);
  expectShape("embedding.ids", ids, [null]);
  const count = ids.shape[0];
  const vocab = table.rows;
  const h = table.cols;
  const shards = isSharded(table) ? table.shards : [{ rowStart: 0, weight: table }];
  const y = out ?? allocTensor(rec.ctx, [count, h], "f32", "embedding");
  expectShape("embedding.out", y, [count, h]);
  expectDtype("embedding.out", y, ["f32"]);
  if (shards.length === 0) throw new WebvlmError("shape_mismatch", "embedding: table has no shards");
  const workgroups = grid2d(count, rec.ctx.limits.maxComputeWorkgroupsPerDimension);
  shards.forEach(({ rowStart, weight: w }, i) => {
    if (w.format !== table.format || w.cols !== h || rowStart < 0 || rowStart + w.rows > vocab) {
      throw new WebvlmError(
        "shape_mismatch",
        `embedding: shard ${i} (${w.format}, rows [${rowStart}, ${rowStart + w.rows}) x ${w.cols}) ` +
          `does not fit the ${table.format} [${vocab}, ${h}] table`,
      );
    }
    let wordsPerRow = 0;
    let groupsPerRow = 0;
    let scales = w.data;
    if (w.format === "q4" || w.format === "q8") {
      wordsPerRow = (w.paddedCols * (w.format === "q4" ? 4 : 8)) / 32;
      groupsPerRow = w.paddedCols / 32;
      expectDtype(`embedding.shard${i}.data`, w.data, ["u32"]);
      expectShape(`embedding.shard${i}.data`, w.data, [w.rows, wordsPerRow]);
      expectDtype(`embedding.shard${i}.scales`, w.scales, ["f16"]);
      expectShape(`embedding.shard${i}.scales`, w.scales, [w.rows, groupsPerRow]);
      scales = w.scales;
      if (w.zeros) throw new WebvlmError("unsupported_feature", `embedding.shard${i}: zero points (asymmetric groups) are not supported for embedding tables`);
    } else {
      expectDtype(`embedding.shard${i}.data`, w.data, [w.format]);
      expectShape(`embedding.shard${i}.data`, w.data, [w.rows, h]);
    }
    rec.dispatch({
      code,
      constants: { FORMAT: FORMAT[w.format] },
      uniforms: packUniforms("uuuuuuuu", count, h, rowStart, w.rows, vocab, i === 0 ? 1 : 0, wordsPerRow, groupsPerRow),
      bindings: [ids, w.data, scales, y],
      workgroups,
      label: `embedding.shard${i}`,
    });
  });
  return y;
}
