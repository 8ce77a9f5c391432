/**
 * Turns a producer that pushes items while `run` is pending into an async iterator: items are
 * yielded as they arrive, `run`'s rejection is rethrown after the items pushed before it.
 * Leaving the loop early (break / return() / throw) calls `cancel` (the engine aborts the
 * generation there) and then still waits for `run`, so the engine's queue stays in order.
 */
export async function* pump<T>(run: (push: (...items: T[]) => void) => Promise<void>, cancel?: () => void): AsyncGenerator<T> {
  const pending: T[] = [];
  let wake: (() => void) | null = null;
  let done = false;
  let failure: unknown = null;
  const job = run((...items) => {
    pending.push(...items);
    wake?.();
  }).then(
    () => { done = true; },
    (e: unknown) => { failure = e; done = true; },
  ).finally(() => wake?.());
  try {
    for (;;) {
      while (pending.length > 0) yield pending.shift()!;
      if (done) break;
      await new Promise<void>((r) => (wake = r));
      wake = null;
    }
    if (failure) throw failure;
  } finally {
    if (!done) cancel?.();
    await job;
  }
}
