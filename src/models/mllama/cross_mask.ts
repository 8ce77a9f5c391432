// Llama 3.2 Vision's cross-attention mask from the prompt's token ids (/work/shared/MLLAMA.md §6;
// transformers' processing_mllama get_cross_attention_token_mask and
// convert_sparse_cross_attention_mask_to_dense, modeling_mllama _prepare_cross_attention_mask).
// Pure functions: the GPU model builds its key mask from the compact per-row form.
//
// Key order (the order of cross_states): image i, tile t, patch p -> key (i * maxTiles + t) * P + p.
//
// Cache reuse: rows that see no image (r = 0: all text before the first image, BOS included)
// attend to EVERY image's keys, so their hidden states, and the self-attention K/V built on them,
// depend on the request's whole image set. A KV prefix computed with a different image set, or
// text-only (cross layers skipped), is not valid for them.
import { WebvlmError } from "../../api/errors.ts";

/** The rows [start, end) of the prompt that see one image (its <|image|> token included). */
export interface CrossAttentionSpan {
  start: number;
  end: number;
}

/**
 * Per prompt row s, the images it sees: images imageStart[s] .. imageEnd[s]-1 (always a contiguous
 * range: spans start in image order and their ends never decrease). imageStart[s] == imageEnd[s]
 * means none, i.e. the row mask r[s] = 0: the row attends to ALL vision keys (padded tiles
 * included) and the cross-attention MLP output is zeroed for it (§6.4, §7).
 */
export interface CrossAttentionRows {
  /** [S] first visible image. */
  imageStart: Int32Array;
  /** [S] one past the last visible image. */
  imageEnd: Int32Array;
}

/**
 * Each image's span of rows, in image order (§6.1): image k covers [locs[k], locs[k+1]), the last
 * one [locs[-1], length); then, from the last image backwards, an image whose span is one token
 * (the next token is also <|image|>) takes the end of the following image's span, so a group of
 * adjacent images is visible to all the text after the group. [] when there is no image.
 */
export function crossAttentionSpans(ids: readonly number[], imageTokenId: number): CrossAttentionSpan[] {
  const locs: number[] = [];
  ids.forEach((id, s) => {
    if (id === imageTokenId) locs.push(s);
  });
  const spans = locs.map((start, k) => ({ start, end: k + 1 < locs.length ? locs[k + 1] : ids.length }));
  let lastEnd = ids.length;
  for (let k = spans.length - 1; k >= 0; k--) {
    if (spans[k].start === spans[k].end - 1) spans[k].end = lastEnd;
    lastEnd = spans[k].end;
  }
  return spans;
}

/** The per-row form of the spans over `length` rows (spans as crossAttentionSpans gives them). */
export function crossAttentionRows(spans: readonly CrossAttentionSpan[], length: number): CrossAttentionRows {
  if (!Number.isSafeInteger(length) || length < 0) throw new WebvlmError("bad_request", `cross-attention rows: bad length ${length}`, { length });
  const imageStart = new Int32Array(length);
  const imageEnd = new Int32Array(length);
  for (let s = 0; s < length; s++) {
    let first = -1;
    let end = -1;
    spans.forEach((sp, i) => {
      if (sp.start <= s && s < sp.end) {
        if (first < 0) first = i;
        else if (end !== i) throw new WebvlmError("internal", `cross-attention rows: row ${s} sees images that are not contiguous`, { row: s });
        end = i + 1;
      }
    });
    imageStart[s] = first < 0 ? 0 : first;
    imageEnd[s] = first < 0 ? 0 : end;
  }
  return { imageStart, imageEnd };
}

/** The rows of a prompt's ids: crossAttentionRows(crossAttentionSpans(ids, imageTokenId), ids.length). */
export function crossAttentionRowsFromIds(ids: readonly number[], imageTokenId: number): CrossAttentionRows {
  return crossAttentionRows(crossAttentionSpans(ids, imageTokenId), ids.length);
}

/**
 * The row a token at position s uses (§6.5): its own within the prompt (promptLength rows), else
 * the last prompt row (transformers appends a copy of the last row for every generated token).
 */
export function crossAttentionRowIndex(position: number, promptLength: number): number {
  if (!(promptLength > 0)) throw new WebvlmError("bad_request", "cross-attention mask: the prompt has no rows", { promptLength });
  return Math.min(position, promptLength - 1);
}

/** The row mask r[s] (§6.4): 1 where the row sees at least one image, else 0. [S] */
export function crossAttentionRowMask(rows: CrossAttentionRows): Float32Array {
  const r = new Float32Array(rows.imageStart.length);
  for (let s = 0; s < r.length; s++) r[s] = rows.imageEnd[s] > rows.imageStart[s] ? 1 : 0;
  return r;
}

function checkTiles(numTiles: readonly number[], maxTiles: number): void {
  if (!Number.isSafeInteger(maxTiles) || maxTiles < 1) throw new WebvlmError("bad_request", `cross-attention mask: bad max tiles ${maxTiles}`, { maxTiles });
  numTiles.forEach((n, i) => {
    if (!Number.isSafeInteger(n) || n < 1 || n > maxTiles) {
      throw new WebvlmError("bad_request", `cross-attention mask: image ${i + 1} has ${n} tiles (1..${maxTiles})`, { image: i + 1, numTiles: n, maxTiles });
    }
  });
}

/**
 * The processor's cross_attention_mask for one sample (§6.2): M[s, i, t] = 1 if row s sees image i
 * and t < numTiles[i], else 0. [S, numImages, maxTiles], row-major.
 */
export function crossAttentionTileMask(rows: CrossAttentionRows, numTiles: readonly number[], maxTiles: number): Uint8Array {
  checkTiles(numTiles, maxTiles);
  const S = rows.imageStart.length;
  const I = numTiles.length;
  const m = new Uint8Array(S * I * maxTiles);
  for (let s = 0; s < S; s++) {
    if (rows.imageEnd[s] > I) throw new WebvlmError("bad_request", `cross-attention mask: row ${s} sees image ${rows.imageEnd[s]} of ${I}`, { row: s, images: I });
    for (let i = rows.imageStart[s]; i < rows.imageEnd[s]; i++) m.fill(1, (s * I + i) * maxTiles, (s * I + i) * maxTiles + numTiles[i]);
  }
  return m;
}

/** float32.min, the value transformers fills masked scores with (exp underflows to exactly 0). */
export const F32_MIN = -3.4028234663852886e38;

/**
 * The additive key mask the cross-attention layers add to their scores (§6.3-6.4), for the rows
 * `rowIndices` (default every prompt row): [rows, numImages * maxTiles * patchesPerTile], 0 where
 * visible, F32_MIN where not; rows that see no image are all 0. Keys are in cross_states order.
 */
export function crossAttentionKeyMask(
  rows: CrossAttentionRows,
  numTiles: readonly number[],
  maxTiles: number,
  patchesPerTile: number,
  rowIndices?: readonly number[],
): Float32Array {
  checkTiles(numTiles, maxTiles);
  if (!Number.isSafeInteger(patchesPerTile) || patchesPerTile < 1) throw new WebvlmError("bad_request", `cross-attention mask: bad patches per tile ${patchesPerTile}`, { patchesPerTile });
  const S = rows.imageStart.length;
  const which = rowIndices ?? Array.from({ length: S }, (_, s) => s);
  const keys = numTiles.length * maxTiles * patchesPerTile;
  const a = new Float32Array(which.length * keys);
  which.forEach((s, k) => {
    if (!Number.isSafeInteger(s) || s < 0 || s >= S) throw new WebvlmError("bad_request", `cross-attention mask: no row ${s} (${S} rows)`, { row: s, rows: S });
    const start = rows.imageStart[s];
    const end = rows.imageEnd[s];
    if (end <= start) return; // r = 0: every key visible
    const row = a.subarray(k * keys, (k + 1) * keys);
    row.fill(F32_MIN);
    for (let i = start; i < end; i++) {
      const from = i * maxTiles * patchesPerTile;
      row.fill(0, from, from + numTiles[i] * patchesPerTile);
    }
  });
  return a;
}
