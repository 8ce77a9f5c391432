// transformers' masked_scatter of image rows into the prompt's placeholder positions, planned on
// the CPU for a prompt whose first `past` positions are already cached: only the rows of positions
// at or past `past` are copied, as runs (one buffer copy each) into each chunk's embeddings.
import { WebvlmError } from "../../api/errors.ts";
import type { Recorder } from "../../gpu/recorder.ts";
import type { Tensor } from "../../gpu/tensor.ts";

/** Consecutive prompt positions that take consecutive rows of one image. */
export interface ImageRowRun<Item> {
  item: Item;
  /** First row within the item's rows. */
  srcRow: number;
  /** First prompt position. */
  pos: number;
  rows: number;
}

/**
 * The k-th placeholder position (`slots`, ascending) takes row k of the images' rows (images
 * concatenated in order); a count mismatch is bad_request with `mismatchMessage`'s text. Returns
 * the runs of positions at or past `past`.
 */
export function planImageRuns<Item>(
  slots: readonly number[],
  images: readonly Item[],
  rowsOf: (item: Item) => number,
  past: number,
  mismatchMessage: (tokens: number, rows: number) => string,
): ImageRowRun<Item>[] {
  const counts = images.map(rowsOf);
  const need = counts.reduce((a, b) => a + b, 0);
  if (slots.length !== need) {
    throw new WebvlmError("bad_request", mismatchMessage(slots.length, need), { tokens: slots.length, embeddings: need });
  }
  const runs: ImageRowRun<Item>[] = [];
  let k = 0;
  images.forEach((item, j) => {
    for (let r = 0; r < counts[j]; r++, k++) {
      const pos = slots[k];
      if (pos < past) continue;
      const prev = runs[runs.length - 1];
      if (prev && prev.item === item && prev.pos + prev.rows === pos && prev.srcRow + prev.rows === r) prev.rows++;
      else runs.push({ item, srcRow: r, pos, rows: 1 });
    }
  });
  return runs;
}

/** The images the runs need, in order, and each one's first row in their encoded (concatenated) rows. */
export function imagesToEncode<Item>(runs: readonly ImageRowRun<Item>[], rowsOf: (item: Item) => number): { items: Item[]; firstRow: Map<Item, number> } {
  const items = [...new Set(runs.map((r) => r.item))];
  const firstRow = new Map<Item, number>();
  let rows = 0;
  for (const it of items) {
    firstRow.set(it, rows);
    rows += rowsOf(it);
  }
  return { items, firstRow };
}

/**
 * Records the copies of the runs' rows inside the chunk [start, start + x's rows) from `features`
 * (rows of `rowBytes`, laid out as `firstRow` says) into the chunk's embeddings `x`.
 */
export function copyImageRows<Item>(
  rec: Recorder,
  runs: readonly ImageRowRun<Item>[],
  features: Tensor | null,
  firstRow: ReadonlyMap<Item, number>,
  x: Tensor,
  start: number,
  chunkRows: number,
  rowBytes: number,
  family: string,
): void {
  for (const run of runs) {
    // The part of the run inside [start, start + chunkRows).
    const lo = Math.max(run.pos, start);
    const hi = Math.min(run.pos + run.rows, start + chunkRows);
    if (lo >= hi) continue;
    if (!features) throw new WebvlmError("internal", `${family}: image rows needed but none encoded`);
    const src = firstRow.get(run.item)! + run.srcRow + (lo - run.pos);
    rec.copy(
      { buffer: features.buffer, offset: features.offset + src * rowBytes, size: (hi - lo) * rowBytes },
      { buffer: x.buffer, offset: x.offset + (lo - start) * rowBytes, size: (hi - lo) * rowBytes },
    );
  }
}
