// Stop-string matcher: text split at every possible boundary against the
// plain answer text.slice(0, earliest match), and hold-back invariants.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import { StopStringMatcher, normalizeStop, stopTokenSet } from "../../src/generate/stop.ts";
import { randomArray } from "../util/compare.ts";

/** Reference: earliest occurrence of any stop (first listed on equal starts). */
function refCut(text: string, stops: string[]): { text: string; stop: string | null } {
  let at = -1, which: string | null = null;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) { at = i; which = s; }
  }
  return which === null ? { text, stop: null } : { text: text.slice(0, at), stop: which };
}

function run(pieces: string[], stops: string[]): { out: string; stop: string | null; emittedAfterStop: boolean } {
  const m = new StopStringMatcher(stops);
  let out = "", stop: string | null = null, emittedAfterStop = false;
  for (const p of pieces) {
    const r = m.push(p);
    if (stop !== null && r.text.length > 0) emittedAfterStop = true;
    out += r.text;
    if (r.stopped !== null) stop = r.stopped;
    if (stop === null) {
      // Held text is a proper prefix of a stop string, and out + held is everything so far.
      assert.ok(m.pending === "" || stops.some((s) => s.startsWith(m.pending) && s !== m.pending));
    }
  }
  if (stop === null) out += m.flush();
  else assert.equal(m.flush(), "");
  return { out, stop, emittedAfterStop };
}

test("a stop string split over pieces is cut exactly; nothing after it is emitted", () => {
  const text = "The answer is 42.\nObservation: done\nmore text";
  const stops = ["Observation:", "\n\n"];
  // Every split of the text into two, and into single characters.
  for (let i = 0; i <= text.length; i++) {
    const r = run([text.slice(0, i), text.slice(i)], stops);
    assert.deepEqual({ out: r.out, stop: r.stop }, { out: "The answer is 42.\n", stop: "Observation:" }, `split at ${i}`);
  }
  const r = run([...text], stops);
  assert.equal(r.out, "The answer is 42.\n");
  assert.equal(r.emittedAfterStop, false);
});

test("partial matches that fail are released; overlapping candidates", () => {
  assert.deepEqual(run(["ab", "ab", "abc", "x"], ["abcd"]), { out: "abababcx", stop: null, emittedAfterStop: false });
  assert.deepEqual(run(["aaa", "ab"], ["aab"]), { out: "aa", stop: "aab", emittedAfterStop: false });
  assert.deepEqual(run(["xab", "d"], ["abc", "bd"]), { out: "xa", stop: "bd", emittedAfterStop: false });
  // Earliest start wins; on equal starts the first listed.
  assert.deepEqual(run(["hello world"], ["world", "lo w"]), { out: "hel", stop: "lo w", emittedAfterStop: false });
  assert.deepEqual(run(["hello world"], ["lo", "lo w"]), { out: "hel", stop: "lo", emittedAfterStop: false });
  // Emoji stop string arriving in pieces.
  assert.deepEqual(run(["ok 👋", "🏽 bye"], ["👋🏽"]), { out: "ok ", stop: "👋🏽", emittedAfterStop: false });
  // A stop string at the very start.
  assert.deepEqual(run(["STOP", "x"], ["STOP"]), { out: "", stop: "STOP", emittedAfterStop: false });
});

test("hold-back: text that may begin a stop string is not streamed until disambiguated", () => {
  const m = new StopStringMatcher(["</answer>"]);
  assert.deepEqual(m.push("result </an"), { text: "result ", stopped: null });
  assert.equal(m.pending, "</an");
  assert.deepEqual(m.push("swer"), { text: "", stopped: null });
  assert.deepEqual(m.push("s>"), { text: "</answers>", stopped: null });
  assert.deepEqual(new StopStringMatcher([]).push("anything"), { text: "anything", stopped: null });
});

test("random texts and splits agree with the reference cut", () => {
  const alphabet = "ab c\n你😀";
  const chars = [...alphabet];
  const r = randomArray(20000, 5, 0, 1);
  let k = 0;
  const rnd = (n: number): number => Math.floor(r[k++ % r.length] * n);
  for (let trial = 0; trial < 300; trial++) {
    const text = Array.from({ length: 5 + rnd(30) }, () => chars[rnd(chars.length)]).join("");
    const stops = Array.from({ length: 1 + rnd(4) }, () => Array.from({ length: 1 + rnd(3) }, () => chars[rnd(chars.length)]).join(""));
    const pieces: string[] = [];
    const cs = [...text];
    for (let i = 0; i < cs.length; ) {
      const n = 1 + rnd(4);
      pieces.push(cs.slice(i, i + n).join(""));
      i += n;
    }
    const want = refCut(text, stops);
    const got = run(pieces, stops);
    assert.deepEqual({ text: got.out, stop: got.stop }, want, `${JSON.stringify(pieces)} stops ${JSON.stringify(stops)}`);
    assert.equal(got.emittedAfterStop, false);
  }
});

test("stop validation: at most 4 non-empty strings; stop ids", () => {
  assert.deepEqual(normalizeStop(undefined), []);
  assert.deepEqual(normalizeStop("x"), ["x"]);
  assert.deepEqual(normalizeStop(["a", "b", "c", "d"]), ["a", "b", "c", "d"]);
  const isBad = (e: unknown): boolean => e instanceof WebvlmError && e.code === "bad_request";
  assert.throws(() => normalizeStop(["a", "b", "c", "d", "e"]), isBad);
  assert.throws(() => normalizeStop([""]), isBad);
  assert.deepEqual([...stopTokenSet([151645, 151643], [7])].sort(), [151643, 151645, 7].sort());
  assert.throws(() => stopTokenSet([1], [-1]), isBad);
});
