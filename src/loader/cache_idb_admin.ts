// The weight cache's management API (list, delete, clear, storage estimate) and the store of
// quantized matrices derived from cached weights, with their checksums and source identity.
import { del, get, promisifyRequest, set } from "idb-keyval";
import type { PackedQuant } from "../quant/pack.ts";
import type { PackedWeightCache } from "../quant/packed_cache.ts";
import { sha256Hex, sha256HexOf } from "./sha256.ts";
import { db, info, isQuotaError, mKey, qKey, under, type CachedModelInfo, type Manifest } from "./cache_idb_db.ts";

// ---------------------------------------------------------------- management API

/** Every cached model, with its stored bytes. */
export async function listCachedModels(opts: { dbName?: string } = {}): Promise<CachedModelInfo[]> {
  const all = await db(opts.dbName)("readonly", (s) => promisifyRequest(s.getAll(under("m"))) as Promise<Manifest[]>);
  return all.map(info);
}

/** Removes one model's files and manifest; false when it was not cached. */
export async function deleteCachedModel(key: string, opts: { dbName?: string } = {}): Promise<boolean> {
  return db(opts.dbName)("readwrite", async (s) => {
    const had = (await promisifyRequest(s.count(mKey(key)))) > 0;
    s.delete(under("c", key));
    s.delete(under("f", key));
    s.delete(under("q", key));
    s.delete(mKey(key));
    await promisifyRequest(s.transaction);
    return had;
  });
}

/** Removes every cached model. */
export async function clearCache(opts: { dbName?: string } = {}): Promise<void> {
  await db(opts.dbName)("readwrite", (s) => {
    s.clear();
    return promisifyRequest(s.transaction);
  });
}

/** navigator.storage's usage/quota (bytes) and whether storage is persistent; {} where unknown. */
export async function storageEstimate(): Promise<{ usage?: number; quota?: number; persisted?: boolean }> {
  const st = typeof navigator !== "undefined" ? navigator.storage : undefined;
  if (!st?.estimate) return {};
  const e = await st.estimate();
  const persisted = st.persisted ? await st.persisted().catch(() => undefined) : undefined;
  return { usage: e.usage, quota: e.quota, persisted };
}

/**
 * Quantized weights of one cached model (kept beside its files, deleted with it), so a second
 * load skips quantizing. A failed write (quota) only means the next load quantizes again.
 */
export function packedWeightCache(modelKey: string, opts: { dbName?: string } = {}): PackedWeightCache {
  const use = db(opts.dbName);
  let source: Promise<string> | undefined;
  // The raw files as the manifest knows them now: an entry derived from other bytes is stale.
  const fingerprint = (): Promise<string> =>
    (source ??= use("readonly", (s) => promisifyRequest(s.get(mKey(modelKey))) as Promise<Manifest | undefined>)
      .catch(() => undefined)
      .then((m) => sourceFingerprint(m)));
  return {
    async get(key) {
      let rec: PackedRecord | undefined;
      try {
        rec = await get<PackedRecord>(qKey(modelKey, key), use);
      } catch {
        return undefined;
      }
      if (rec === undefined) return undefined;
      const ok = isPackedRecord(rec) && rec.source === (await fingerprint()) && rec.sum === (await packedSum(rec.packed));
      if (ok) return rec.packed;
      // Damaged, stale or from an older cache: drop it, the caller quantizes again.
      await del(qKey(modelKey, key), use).catch(() => undefined);
      return undefined;
    },
    async put(key, packed) {
      try {
        const rec: PackedRecord = { v: 2, source: await fingerprint(), sum: await packedSum(packed), packed };
        await set(qKey(modelKey, key), rec, use);
      } catch (e) {
        if (!isQuotaError(e)) throw e;
      }
    },
  };
}

interface PackedRecord {
  v: 2;
  /** sourceFingerprint() of the manifest when it was derived. */
  source: string;
  /** packedSum() of `packed`. */
  sum: string;
  packed: PackedQuant;
}

function isPackedRecord(r: unknown): r is PackedRecord {
  const x = r as PackedRecord | null;
  return !!x && x.v === 2 && typeof x.source === "string" && typeof x.sum === "string" && !!x.packed && x.packed.data instanceof Uint32Array && x.packed.scales instanceof Uint16Array;
}

/** SHA-256 over a quantized matrix: its shape fields, codes and scales. */
function packedSum(p: PackedQuant): Promise<string> {
  const head = new TextEncoder().encode(JSON.stringify([p.format, p.rows, p.cols, p.paddedCols]));
  return sha256HexOf([head, p.data, p.scales]);
}

/** Identity of a model's large (weight) files: name, size, ETag, Last-Modified, published SHA-256. */
function sourceFingerprint(m: Manifest | undefined): Promise<string> {
  const files = Object.entries(m?.files ?? {})
    .filter(([, e]) => e.kind === "chunked")
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([f, e]) => [f, e.size, e.etag ?? null, e.lastModified ?? null, e.sha256 ?? null]);
  return sha256Hex(new TextEncoder().encode(JSON.stringify(files)));
}
