// Stop conditions: eos / stop token ids and OpenAI `stop` strings.
//
// Stop strings are matched on the streamed (detokenized, special tokens
// skipped) text. Text that could still be the beginning of a stop string is
// held back until the next text either completes the match or rules it out,
// so a stop string split over several tokens is cut exactly: the text before
// it is emitted, the stop string and everything after it are not. When
// several stop strings match, the one starting earliest wins (equal starts:
// the first in the request's list).
import { WebvlmError } from "../api/errors.ts";

/** OpenAI allows up to 4 stop sequences. */
export const MAX_STOP_STRINGS = 4;

/** Validates OpenAI's `stop` (string | string[] | undefined/null) into a list. */
export function normalizeStop(stop: string | readonly string[] | null | undefined): string[] {
  if (stop === undefined || stop === null) return [];
  const list = typeof stop === "string" ? [stop] : Array.from(stop);
  if (list.length > MAX_STOP_STRINGS) {
    throw new WebvlmError("bad_request", `stop: at most ${MAX_STOP_STRINGS} sequences, got ${list.length}`, { param: "stop" });
  }
  for (const s of list) {
    if (typeof s !== "string" || s.length === 0) throw new WebvlmError("bad_request", "stop: sequences must be non-empty strings", { param: "stop" });
  }
  return list;
}

/** Token-id stop set: the checkpoint's eos ids plus the request's extra ids. */
export function stopTokenSet(eosTokenIds: readonly number[], extra: readonly number[] = []): Set<number> {
  for (const id of extra) {
    if (!Number.isInteger(id) || id < 0) throw new WebvlmError("bad_request", `stop_token_ids: not a token id: ${id}`, { param: "stop_token_ids" });
  }
  return new Set([...eosTokenIds, ...extra]);
}

export interface StopPush {
  /** Text safe to stream now (before any stop string). */
  text: string;
  /** The stop string that matched, or null. */
  stopped: string | null;
}

export class StopStringMatcher {
  private held = "";
  private done = false;
  private readonly stops: string[];
  private readonly maxLen: number;

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
    this.maxLen = this.stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  /** The text currently held back (a possible stop-string prefix). */
  get pending(): string {
    return this.held;
  }

  /** Feeds new text; after a match everything further is swallowed. */
  push(text: string): StopPush {
    if (this.done) return { text: "", stopped: null };
    if (this.stops.length === 0) return { text, stopped: null };
    const buf = this.held + text;
    // held never contains a whole stop string, so a search over buf finds the earliest match.
    let at = -1, which: string | null = null;
    for (const s of this.stops) {
      const i = buf.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) { at = i; which = s; }
    }
    if (which !== null) {
      this.done = true;
      this.held = "";
      return { text: buf.slice(0, at), stopped: which };
    }
    const keep = this.heldSuffix(buf);
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stopped: null };
  }

  /** Releases the held text: no more text is coming, so it cannot become a stop string. */
  flush(): string {
    const t = this.done ? "" : this.held;
    this.held = "";
    return t;
  }

  /** Length of the longest suffix of buf that is a proper prefix of some stop string. */
  private heldSuffix(buf: string): number {
    for (let len = Math.min(buf.length, this.maxLen - 1); len > 0; len--) {
      const tail = buf.slice(buf.length - len);
      if (this.stops.some((s) => s.length > len && s.startsWith(tail))) return len;
    }
    return 0;
  }
}
