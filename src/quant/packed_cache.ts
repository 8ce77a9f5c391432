import type { PackedQuant } from "./pack.ts";

/**
 * Where quantized weights are kept between loads (the browser keeps them in IndexedDB), so a
 * second load uploads the packed q4/q8 bytes and skips reading and quantizing the originals.
 * Keys name the tensor(s), format and shape.
 */
export interface PackedWeightCache {
  get(key: string): Promise<PackedQuant | undefined>;
  put(key: string, packed: PackedQuant): Promise<void>;
}
