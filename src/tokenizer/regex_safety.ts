// Load-time check of the regular expressions a tokenizer.json carries
// (Split / Replace pre-tokenizers, Replace normalizers and decoders), which
// @huggingface/tokenizers compiles into JavaScript RegExps: a backtracking
// engine, so a pattern such as `(a+)+$` takes exponential time on a string of
// a few dozen characters and hangs encode.
//
// Why a static check (and not a time bound): a JS RegExp cannot be
// interrupted (no timeout; only a worker could be terminated, and encode runs
// inside the engine's worker), and splitting long inputs into pieces does not
// help: the blow-up happens within one piece of 30 characters, and any split
// the pre-tokenizer's regex itself would not make changes the tokenization.
// The regexes are fixed by the checkpoint, so checking them once at load
// costs nothing per request. The check is conservative: it refuses the
// constructs that make backtracking super-linear in a way no real
// tokenizer's pre-tokenizer needs, and accepts GPT-2's, Llama 3's, Qwen2's
// (the same as Qwen2-VL's and Qwen3's), GPT-4o-style and DeepSeek-style ones:
// - a nested quantifier: a group repeated more than once (*, +, {n,m} with
//   m > 1) whose body contains any quantifier: (a+)+, (a*)*, (?:a?b)+, (a{2})*;
// - an alternation inside such a repeated group: (a|a)*, (?:ab|a)+;
// - more than two repeated atoms in a row, optional atoms between them not
//   counting as a break (\s*\s*\s*x is O(n^3) per attempt); Qwen2's
//   `\s*[\r\n]+` and o200k's `[...]*[...]+` have two;
// - more than MAX_CHOICES optional or alternative parts in one sequence
//   (a?a?...a?aa...a and (?:a|a)(?:a|a)... are exponential in the pattern's
//   length without any nested quantifier);
// - backreferences and subexpression calls (\1, \k<x>, \g<x>).
// What it does not catch: polynomial backtracking (`\s*x` is O(n^2) on a run
// of spaces, as any backtracking engine is, and Qwen2's own `\s*[\r\n]+`
// has that shape, made linear only by the alternatives after it); that is
// bounded only through maxInputChars.
// Inputs are bounded separately (TextTokenizer's maxInputChars), which also
// bounds the linear-but-slow paths (BPE over one long pretoken).

const MAX_DEPTH = 64;

interface Item {
  /** Index of the atom in the pattern. */
  at: number;
  /** Minimum and maximum repetitions of the atom (1,1 when unquantified). */
  min: number;
  max: number;
  /** Group bodies (alternatives), or null for a leaf atom. */
  alternatives: Item[][] | null;
}

export class UnsafeRegexError extends Error {
  constructor(
    readonly reason: string,
    readonly index: number,
  ) {
    super(`${reason} at index ${index}`);
  }
}

/**
 * Parses the Oniguruma-style syntax tokenizer.json uses, only as far as the
 * structure (groups, alternation, quantifiers, classes, escapes) goes.
 */
class Parser {
  private i = 0;
  constructor(private readonly src: string) {}

  parse(): Item[][] {
    const alts = this.alternatives();
    if (this.i < this.src.length) throw new UnsafeRegexError("unbalanced ')'", this.i);
    return alts;
  }

  private alternatives(): Item[][] {
    const alts: Item[][] = [this.sequence()];
    while (this.src[this.i] === "|") {
      this.i++;
      alts.push(this.sequence());
    }
    return alts;
  }

  private sequence(): Item[] {
    const items: Item[] = [];
    while (this.i < this.src.length && this.src[this.i] !== "|" && this.src[this.i] !== ")") {
      const at = this.i;
      const atom = this.atom();
      if (atom === null) continue;
      const [min, max] = this.quantifier();
      items.push({ ...atom, at, min, max });
    }
    return items;
  }

  /** One atom, or null for something that matches nothing (an option setting, a comment). */
  private atom(): Pick<Item, "alternatives"> | null {
    const s = this.src;
    const c = s[this.i];
    if (c === "(") return this.group();
    if (c === "[") {
      this.charClass();
      return { alternatives: null };
    }
    if (c === "\\") {
      this.escape();
      return { alternatives: null };
    }
    this.i += c.codePointAt(0)! > 0xffff ? 2 : 1;
    return { alternatives: null };
  }

  private depth = 0;

  private group(): Pick<Item, "alternatives"> | null {
    const s = this.src;
    const start = this.i;
    if (++this.depth > MAX_DEPTH) throw new UnsafeRegexError(`groups nested more than ${MAX_DEPTH} deep`, start);
    this.i++; // (
    if (s[this.i] === "?") {
      const rest = s.slice(this.i + 1);
      if (rest.startsWith("#")) {
        const end = s.indexOf(")", this.i);
        if (end < 0) throw new UnsafeRegexError("unterminated comment", start);
        this.i = end + 1;
        this.depth--;
        return null;
      }
      const prefix = /^(?::|=|!|<=|<!|>|P?<[A-Za-z_][A-Za-z0-9_]*>|'[A-Za-z_][A-Za-z0-9_]*'|[imxWDSPy-]+:)/.exec(rest);
      if (prefix) {
        this.i += 1 + prefix[0].length;
      } else {
        const flags = /^[imxWDSPy-]*\)/.exec(rest); // (?i) sets options for the rest of the group
        if (!flags) throw new UnsafeRegexError(`unsupported group syntax "(?${rest.slice(0, 3)}"`, start);
        this.i += 1 + flags[0].length;
        this.depth--;
        return null;
      }
    }
    const alternatives = this.alternatives();
    if (s[this.i] !== ")") throw new UnsafeRegexError("unterminated group", start);
    this.i++;
    this.depth--;
    return { alternatives };
  }

  private charClass(): void {
    const s = this.src;
    const start = this.i;
    let depth = 0;
    while (this.i < s.length) {
      const c = s[this.i];
      if (c === "\\") {
        this.i += 2;
        continue;
      }
      if (c === "[") {
        depth++;
        this.i++;
        if (s[this.i] === "^") this.i++;
        if (s[this.i] === "]") this.i++; // a ']' first in a class is literal
        continue;
      }
      this.i++;
      if (c === "]" && --depth === 0) return;
    }
    throw new UnsafeRegexError("unterminated character class", start);
  }

  private escape(): void {
    const s = this.src;
    const start = this.i;
    const c = s[this.i + 1];
    if (c === undefined) throw new UnsafeRegexError("trailing backslash", start);
    if (/[1-9]/.test(c) || c === "k" || c === "g") throw new UnsafeRegexError(c === "g" ? "subexpression call" : "backreference", start);
    const braced = /^\\[pPxuo]\{[^}]*\}/.exec(s.slice(this.i));
    if (braced) {
      this.i += braced[0].length;
      return;
    }
    const fixed = /^\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|c[A-Za-z])/.exec(s.slice(this.i));
    this.i += fixed ? fixed[0].length : 1 + (c.codePointAt(0)! > 0xffff ? 2 : 1);
  }

  /** [min, max] of a quantifier at the cursor ([1, 1] when none); lazy/possessive suffixes skipped. */
  private quantifier(): [number, number] {
    const s = this.src;
    let q: [number, number] | null = null;
    const c = s[this.i];
    if (c === "*") q = [0, Infinity];
    else if (c === "+") q = [1, Infinity];
    else if (c === "?") q = [0, 1];
    if (q) {
      this.i++;
    } else if (c === "{") {
      const m = /^\{(\d*)(?:(,)(\d*))?\}/.exec(s.slice(this.i));
      if (m && (m[1] !== "" || m[3] !== undefined && m[3] !== "")) {
        const min = m[1] === "" ? 0 : Number(m[1]);
        const max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
        q = [min, max];
        this.i += m[0].length;
      }
    }
    if (!q) return [1, 1];
    if (s[this.i] === "?" || s[this.i] === "+") this.i++;
    // A quantifier on a quantifier (a**, a+{2}) is a nested quantifier.
    const [min2, max2] = this.quantifier();
    if (min2 !== 1 || max2 !== 1) {
      if (q[1] > 1 || max2 > 1) throw new UnsafeRegexError("nested quantifier", this.i - 1);
      q = [q[0] * min2, q[1] * max2];
    }
    return q;
  }
}

const repeats = (it: Item): boolean => it.max > 1;

function hasQuantifierOrAlternation(alts: Item[][]): "quantifier" | "alternation" | null {
  if (alts.length > 1) return "alternation";
  for (const seq of alts) {
    for (const it of seq) {
      if (it.min !== 1 || it.max !== 1) return "quantifier";
      if (it.alternatives) {
        const inner = hasQuantifierOrAlternation(it.alternatives);
        if (inner) return inner;
      }
    }
  }
  return null;
}

/** Choice points of a sequence: items that may match in more than one way (min != max, or alternatives), nested ones included. */
function choices(seq: Item[]): number {
  let n = 0;
  for (const it of seq) {
    if (it.min !== it.max) n++;
    if (it.alternatives) n += (it.alternatives.length > 1 ? 1 : 0) + Math.max(...it.alternatives.map(choices));
  }
  return n;
}

/** More choice points than this in one sequence are refused (o200k's longest alternative has 5). */
export const MAX_CHOICES = 6;

function checkTree(alts: Item[][]): void {
  for (const seq of alts) {
    const k = choices(seq);
    if (k > MAX_CHOICES) {
      throw new UnsafeRegexError(`${k} optional or alternative parts in one sequence (at most ${MAX_CHOICES}; backtracking over them is exponential, like a?a?a?...aaa)`, seq[0].at);
    }
    let run = 0;
    for (const it of seq) {
      if (it.alternatives) {
        if (repeats(it)) {
          const bad = hasQuantifierOrAlternation(it.alternatives);
          if (bad === "quantifier") throw new UnsafeRegexError("nested quantifier (a repeated group containing a quantifier, like (a+)+)", it.at);
          if (bad === "alternation") throw new UnsafeRegexError("alternation inside a repeated group (like (a|a)*)", it.at);
        }
        checkTree(it.alternatives);
      }
      if (repeats(it)) {
        if (++run > 2) throw new UnsafeRegexError("more than two repeated atoms in a row (like \\s*\\s*\\s*)", it.at);
      } else if (it.min > 0) {
        run = 0;
      }
    }
  }
}

/** null when the pattern is acceptable, else why not. */
export function unsafeRegexReason(pattern: string): string | null {
  try {
    const tree = new Parser(pattern).parse();
    checkTree(tree);
    return null;
  } catch (e) {
    if (e instanceof UnsafeRegexError) return e.message;
    return `cannot be checked (${(e as Error).message})`; // e.g. a stack overflow on absurd nesting
  }
}

export interface RegexFound {
  /** Where in tokenizer.json, e.g. "pre_tokenizer.pretokenizers[0].pattern.Regex". */
  path: string;
  regex: string;
}

/**
 * Every {"Regex": "..."} pattern under tokenizer.json's normalizer,
 * pre_tokenizer, post_processor and decoder. Throws UnsafeRegexError when
 * those sections nest too deep to be walked (nothing real nests past 3).
 */
export function tokenizerRegexes(json: Record<string, unknown>): RegexFound[] {
  const out: RegexFound[] = [];
  const walk = (v: unknown, path: string, depth: number): void => {
    if (v === null || typeof v !== "object") return;
    if (depth > 64) throw new UnsafeRegexError(`${path} is nested more than 64 levels deep`, -1);
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${path}[${i}]`, depth + 1));
      return;
    }
    for (const [k, x] of Object.entries(v)) {
      if (k === "Regex" && typeof x === "string") out.push({ path: `${path}.Regex`, regex: x });
      else walk(x, `${path}.${k}`, depth + 1);
    }
  };
  for (const key of ["normalizer", "pre_tokenizer", "post_processor", "decoder"]) walk(json[key], key, 0);
  return out;
}
