// What every family's adapter (models/*/family.ts) shares between the engine's contract and its
// model: the cache ownership check, the step options it passes on, and the warm-up's shape (one
// prefill and one decode step on a throwaway cache, so that every pipeline is compiled).
import { WebvlmError } from "../../api/errors.ts";
import type { ModelCache, ModelStepOptions, ReadMode } from "../family.ts";

/** The options a model's own prefill / decode takes from the engine's. */
export interface StepReadOptions {
  read?: ReadMode;
  signal?: AbortSignal;
  /** Called between prefill chunks with the prompt tokens computed so far and the total to compute. */
  onPrefillProgress?: (done: number, total: number) => void;
}

/** The engine's step options as a model's forward takes them (read mode, abort signal, prefill progress). */
export function stepOptions(opts: ModelStepOptions): StepReadOptions {
  return { read: opts.read, signal: opts.signal, onPrefillProgress: opts.onPrefillProgress };
}

/**
 * The engine's cache as the model's own cache class; a cache another model created is an internal
 * error naming `family`.
 */
export function ownCache<C extends ModelCache>(cache: ModelCache, cacheClass: abstract new (...args: never[]) => C, family: string): C {
  if (!(cache instanceof cacheClass)) throw new WebvlmError("internal", `${family}: cache from another model`);
  return cache;
}

/**
 * A warm-up's steps: `prefill` then `decode` on `cache` (disposed after, also on failure),
 * reporting onStep(1, 2) and (2, 2); the caller reports (0, 2) before it builds its inputs.
 */
export async function warmUpPrefillDecode<C extends ModelCache>(
  cache: C,
  prefill: (cache: C) => Promise<unknown>,
  decode: (cache: C) => Promise<unknown>,
  onStep?: (done: number, total: number) => void,
): Promise<void> {
  try {
    await prefill(cache);
    onStep?.(1, 2);
    await decode(cache);
    onStep?.(2, 2);
  } finally {
    cache.dispose();
  }
}
