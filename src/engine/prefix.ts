// Which part of a new prompt the KV cache already holds. Token ids alone are
// not enough: two different images with the same grid give identical pad
// ids, so pad positions are keyed by the image's content hash instead.

export interface KeyedMedia {
  kind: "image" | "video";
  /** content hash of the preprocessed pixels */
  hash: string;
  /** LLM tokens this item occupies */
  tokens: number;
}

/**
 * Prompt ids with each placeholder run replaced by its media item's content keys. Placeholders
 * (the family's pad token per kind, from its processor) are filled by the items of that kind in
 * prompt order, `tokens` positions each.
 */
export function mediaKeyedIds(ids: readonly number[], media: readonly KeyedMedia[], placeholders: readonly { tokenId: number; kind?: string }[]): (number | string)[] {
  const kindOf = new Map<number, "image" | "video">();
  for (const p of placeholders) if (p.kind === "image" || p.kind === "video") kindOf.set(p.tokenId, p.kind);
  const queues = { image: media.filter((m) => m.kind === "image"), video: media.filter((m) => m.kind === "video") };
  const used = { image: 0, video: 0 };
  const left = { image: 0, video: 0 };
  const keys: (number | string)[] = [];
  for (const id of ids) {
    const kind = kindOf.get(id);
    if (!kind) {
      keys.push(id);
      continue;
    }
    if (left[kind] === 0) {
      const item = queues[kind][used[kind]++];
      if (item && item.tokens === 0) {
        // A one-token marker for media read by cross-attention (no run of pads): keyed alone.
        keys.push(`${kind}:${item.hash}`);
        continue;
      }
      left[kind] = item ? item.tokens : Number.POSITIVE_INFINITY;
      keys.push(item ? `${kind}:${item.hash}:0` : id);
    } else {
      const item = queues[kind][used[kind] - 1];
      keys.push(item ? `${kind}:${item.hash}:${item.tokens - left[kind]}` : id);
    }
    left[kind]--;
  }
  return keys;
}

export function commonPrefix(a: readonly (number | string)[], b: readonly (number | string)[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
