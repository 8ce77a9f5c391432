// Bounded rendering of chat templates. A checkpoint's chat template is code
// from the checkpoint, i.e. untrusted input: `{% for i in range(100000000) %}`
// or a few nested loops would otherwise block the engine for minutes and take
// gigabytes before the process dies, and a template can build values whose
// printed form is exponentially large (`{% set a = [a, a] %}` sixty times,
// then `{{ a }}`).
//
// How it is bounded. @huggingface/jinja's Interpreter evaluates every AST node
// through its public `evaluate(node, env)` (statements, expressions, each
// statement of a loop body, macro bodies: all go back through `this.evaluate`),
// so a subclass that overrides `evaluate` sees every step and every value:
// - steps (limit maxSteps): 1 per node evaluated; +n when a for-loop's iterable
//   of n items is evaluated (the loop then runs n times, even with an empty
//   body); +n for range(n), charged *before* the array exists (the library's
//   range allocates it up front, and its `for` copies it again); +1 per
//   CHARS_PER_STEP characters of each string an evaluation yields (string
//   work is linear in the string, so `'x' in big` in a loop, or `big|upper`,
//   is paid for); +1 per element of each new list/dict (walked once to size
//   it); +n for `x in list` and for a filter over a list/dict of n items
//   other than the constant-time ones (length, first, ...);
// - size (limit maxOutputChars): no value may be larger than this: a string's
//   length, a list's/dict's/namespace's printed size (computed on the shared
//   structure, memoized, so a DAG of shared lists is sized in linear time and
//   a cyclic namespace is infinite) and the rendered prompt itself. The
//   filters and methods whose result can be a product of their inputs' sizes
//   (indent(width), replace, join(sep), tojson(indent)) are estimated from
//   their already evaluated arguments and refused *before* the library builds
//   the string; string * int and list * int do not exist in this jinja.
//   Other builtins grow their input by a small factor at most (tojson's
//   \uXXXX escapes 6x, indent's 4 spaces per line, upper()'s ß -> SS), so
//   one of them builds at most a few times maxOutputChars before its result
//   is refused.
// - compiling (new ChatTemplate): the library's lexer is quadratic in
//   whitespace runs (compileSteps), which are charged against maxSteps before
//   the source is handed to it.
// Memory stays bounded too: every string costs steps in proportion to
// its length and every new list/dict in proportion to its elements, so what
// a render can hold is about maxSteps * CHARS_PER_STEP characters (64M at
// the defaults) plus one value of maxOutputChars.
// Nothing here uses eval or new Function (strict CSP). The private
// Interpreter methods wrapped here (applyFilter, evaluateArguments) are
// checked for at construction; the version is pinned by package-lock.json,
// and test/tokenizer/hostile.test.ts fails if they move.
import { Environment, Interpreter, type Template } from "@huggingface/jinja";

export interface TemplateLimits {
  /** Evaluation steps per render (nodes, loop iterations, range() items, list elements, 1 per 64 chars of strings). */
  maxSteps: number;
  /** Largest value (string, or printed list/dict) a render may build, the rendered prompt included, in UTF-16 units. */
  maxOutputChars: number;
}

/**
 * Generous for real templates: the Qwen2-VL, Qwen3, Llama 3, Mistral and
 * Phi-3 templates render a 200-message conversation (200 KB of text) in
 * under 5% of maxSteps
 * (test/tokenizer/hostile.test.ts); 4M characters is about a million tokens,
 * past every supported context window.
 */
export const DEFAULT_TEMPLATE_LIMITS: Readonly<TemplateLimits> = Object.freeze({ maxSteps: 1_000_000, maxOutputChars: 4_000_000 });

/** Characters of a value touched that cost one step. */
export const CHARS_PER_STEP = 64;

/** Thrown inside the interpreter; ChatTemplate turns it into WebvlmError("limit_exceeded"). */
export class TemplateLimitHit extends Error {
  constructor(
    readonly limit: keyof TemplateLimits,
    readonly value: number,
    message: string,
  ) {
    super(message);
  }
}

type Statement = NonNullable<Parameters<Interpreter["evaluate"]>[0]>;
type RuntimeValue = ReturnType<Interpreter["evaluate"]>;
/** AST nodes as plain records (their classes are not exported). */
type Node = Statement & Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
/** What the private Interpreter methods look like. */
interface Hooks {
  applyFilter(operand: RuntimeValue, filterNode: Node, env: Environment): RuntimeValue;
  evaluateArguments(args: Node[], env: Environment): [RuntimeValue[], Map<string, RuntimeValue>];
}

/** A synthetic AST node that evaluates to a value computed already (so an argument is evaluated once). */
const VALUE_NODE = "WebvlmEvaluatedValue";
const valueNode = (value: RuntimeValue): Node => ({ type: VALUE_NODE, value }) as unknown as Node;

const CONTAINERS = new Set(["ArrayValue", "TupleValue", "ObjectValue", "KeywordArgumentsValue", "NamespaceValue"]);
const GUARDED_FILTERS = new Set(["indent", "replace", "join", "tojson"]);
/** Filters that take constant time on a list or dict; the others (sort, selectattr, map, ...) cost its length. */
const CONSTANT_FILTERS = new Set(["length", "count", "first", "last", "list", "safe", "default", "d", "bool"]);

function elementCount(v: RuntimeValue): number {
  if (Array.isArray(v.value)) return v.value.length;
  return v.value instanceof Map ? v.value.size : 0;
}

/** Printed size of a value, the number of list/dict nodes in its expansion, and its nesting depth. */
interface Size {
  size: number;
  nodes: number;
  depth: number;
  /** Contains a namespace (mutable), so the result cannot be memoized. */
  mutable: boolean;
}

function scalarSize(v: RuntimeValue): number {
  switch (v.type) {
    case "StringValue": return (v.value as string).length + 2;
    case "IntegerValue":
    case "FloatValue": return String(v.value).length;
    case "BooleanValue": return 5;
    default: return 4;
  }
}

const isInt = (v: RuntimeValue | undefined): v is RuntimeValue & { value: number } => v !== undefined && v.type === "IntegerValue";
const isStr = (v: RuntimeValue | undefined): v is RuntimeValue & { value: string } => v !== undefined && v.type === "StringValue";

function occurrences(s: string, sub: string, cap: number): number {
  if (sub.length === 0) return Math.min(s.length + 1, cap);
  let n = 0;
  for (let i = s.indexOf(sub); i !== -1 && n < cap; i = s.indexOf(sub, i + sub.length)) n++;
  return n;
}

export class BoundedInterpreter extends Interpreter {
  steps = 0;
  private readonly sizes = new WeakMap<object, Size>();
  private readonly loopIterables = new WeakSet<object>();
  private readonly hooks: Hooks;

  constructor(
    env: Environment,
    readonly limits: TemplateLimits,
  ) {
    super(env);
    const self = this as unknown as Hooks;
    if (typeof self.applyFilter !== "function" || typeof self.evaluateArguments !== "function") {
      throw new Error("@huggingface/jinja's Interpreter has changed: applyFilter/evaluateArguments are gone");
    }
    const applyFilter = self.applyFilter.bind(this);
    this.hooks = { applyFilter, evaluateArguments: self.evaluateArguments.bind(this) };
    // Every filter application (expression or {% filter %} block) goes through applyFilter.
    self.applyFilter = (operand, filterNode, env2) => this.guardedFilter(operand, filterNode, env2);
  }

  charge(n: number): void {
    this.steps += n;
    if (this.steps > this.limits.maxSteps) {
      throw new TemplateLimitHit("maxSteps", this.steps, `rendering took more than ${this.limits.maxSteps} steps`);
    }
  }

  private tooBig(size: number, what: string): never {
    throw new TemplateLimitHit("maxOutputChars", size, `${what} would be ${Number.isFinite(size) ? `about ${Math.round(size)}` : "unboundedly many"} characters, over ${this.limits.maxOutputChars}`);
  }

  override evaluate(statement: Statement | undefined, environment: Environment): RuntimeValue {
    const node = statement as Node | undefined;
    if (node?.type === VALUE_NODE) return node.value as RuntimeValue;
    this.charge(1);
    let value: RuntimeValue;
    if (node?.type === "For") {
      const it = node.iterable as Node;
      this.loopIterables.add(it.type === "SelectExpression" ? it.lhs : it);
      value = super.evaluate(statement, environment);
    } else if (node?.type === "CallExpression" && this.isReplaceCall(node)) {
      value = this.evaluateReplaceCall(node, environment);
    } else if (node?.type === "BinaryExpression" && (node.operator?.value === "in" || node.operator?.value === "not in")) {
      // Membership in a list is a linear scan with a boolean result: paid by the list's length.
      const left = this.evaluate(node.left, environment);
      const right = this.evaluate(node.right, environment);
      if (Array.isArray(right.value)) this.charge(right.value.length);
      value = super.evaluate({ ...node, left: valueNode(left), right: valueNode(right) } as Node, environment);
    } else {
      value = super.evaluate(statement, environment);
    }
    if (node && this.loopIterables.has(node)) this.charge(elementCount(value));
    return this.check(value);
  }

  /**
   * Size limit on every value an evaluation yields, and the charge for it: a
   * string costs 1 step per CHARS_PER_STEP characters each time it is yielded
   * (string operations are linear in it); a list or dict costs its elements
   * once, when it is first seen (sizeOf), since referring to one again
   * (`messages|length` in a loop) is constant work.
   */
  private check(v: RuntimeValue): RuntimeValue {
    if (v.type === "StringValue") {
      const n = (v.value as string).length;
      if (n > this.limits.maxOutputChars) this.tooBig(n, "a string");
      this.charge(Math.floor(n / CHARS_PER_STEP));
    } else if (CONTAINERS.has(v.type)) {
      const s = this.sizeOf(v);
      if (s.size > this.limits.maxOutputChars) this.tooBig(s.size, `a ${Array.isArray(v.value) ? "list" : "dict"} printed`);
    }
    return v;
  }

  /**
   * Printed size of a value (as toJSON writes it, roughly), on the shared
   * structure: lists and dicts are immutable here, so their sizes are
   * memoized; namespaces are mutable and re-walked (a cycle is infinite).
   * Each element walked costs a step.
   */
  sizeOf(v: RuntimeValue, walking: Set<object> = new Set()): Size {
    if (!CONTAINERS.has(v.type)) return { size: scalarSize(v), nodes: 0, depth: 0, mutable: false };
    const memo = this.sizes.get(v);
    if (memo) return memo;
    if (walking.has(v)) return { size: Infinity, nodes: Infinity, depth: Infinity, mutable: true };
    walking.add(v);
    let size = 2;
    let nodes = 1;
    let depth = 0;
    let mutable = v.type === "NamespaceValue";
    const add = (child: RuntimeValue, extra: number): void => {
      const c = this.sizeOf(child, walking);
      size += c.size + extra;
      nodes += c.nodes;
      depth = Math.max(depth, c.depth);
      mutable ||= c.mutable;
    };
    if (Array.isArray(v.value)) {
      this.charge(v.value.length);
      for (const child of v.value as RuntimeValue[]) add(child, 2);
    } else {
      const map = v.value as Map<string, RuntimeValue>;
      this.charge(map.size);
      for (const [k, child] of map) add(child, k.length + 4);
    }
    walking.delete(v);
    const out = { size, nodes, depth: depth + 1, mutable };
    if (!mutable) this.sizes.set(v, out);
    return out;
  }

  /** Evaluates a call's arguments once, giving back nodes that yield those values (evaluation order as the library's). */
  private preEvaluate(args: Node[], env: Environment): Node[] {
    const out = args.slice();
    args.forEach((a, i) => {
      if (a.type === "SpreadExpression") out[i] = { ...a, argument: valueNode(this.evaluate(a.argument, env)) } as Node;
      else if (a.type !== "KeywordArgumentExpression" && a.type !== "KeywordSpreadExpression") out[i] = valueNode(this.evaluate(a, env));
    });
    args.forEach((a, i) => {
      if (a.type === "KeywordArgumentExpression") out[i] = { ...a, value: valueNode(this.evaluate(a.value, env)) } as Node;
      else if (a.type === "KeywordSpreadExpression") out[i] = { ...a, argument: valueNode(this.evaluate(a.argument, env)) } as Node;
    });
    return out;
  }

  private isReplaceCall(node: Node): boolean {
    const callee = node.callee as Node;
    return callee.type === "MemberExpression" && !callee.computed && callee.property?.type === "Identifier" && callee.property.value === "replace";
  }

  /** `s.replace(old, new[, count])`: refused before the library builds a result larger than maxOutputChars. */
  private evaluateReplaceCall(node: Node, env: Environment): RuntimeValue {
    const callee = node.callee as Node;
    const object = this.evaluate(callee.object, env);
    const args = this.preEvaluate(node.args, env);
    if (isStr(object)) {
      const [pos, kw] = this.hooks.evaluateArguments(args, env);
      this.checkReplace(object.value, pos, kw);
    }
    return super.evaluate({ ...node, callee: { ...callee, object: valueNode(object) }, args } as Node, env);
  }

  private checkReplace(s: string, pos: RuntimeValue[], kw: Map<string, RuntimeValue>): void {
    const [from, to] = pos;
    if (!isStr(from) || !isStr(to)) return; // the library rejects these itself
    const countArg = pos[2] ?? kw.get("count");
    const cap = isInt(countArg) && countArg.value >= 0 ? countArg.value : Infinity;
    // Each match is a callback into JS (an empty pattern matches at every position): a step each.
    const n = occurrences(s, from.value, cap);
    const est = s.length + n * (to.value.length - from.value.length);
    if (est > this.limits.maxOutputChars) this.tooBig(est, "replace()'s result");
    this.charge(n);
  }

  private guardedFilter(operand: RuntimeValue, filterNode: Node, env: Environment): RuntimeValue {
    const name = filterNode.type === "CallExpression" && filterNode.callee?.type === "Identifier"
      ? (filterNode.callee.value as string)
      : filterNode.type === "Identifier" ? (filterNode.value as string) : null;
    if (CONTAINERS.has(operand.type) && (name === null || !CONSTANT_FILTERS.has(name))) this.charge(elementCount(operand));
    if (name === null || filterNode.type !== "CallExpression" || !GUARDED_FILTERS.has(name)) return this.hooks.applyFilter(operand, filterNode, env);
    const node = { ...filterNode, args: this.preEvaluate(filterNode.args, env) } as Node;
    const [pos, kw] = this.hooks.evaluateArguments(node.args, env);
    const max = this.limits.maxOutputChars;
    if (name === "indent" && isStr(operand)) {
      const width = pos[0] ?? kw.get("width");
      if (isInt(width) && width.value > 0) {
        const lines = occurrences(operand.value, "\n", Infinity) + 1;
        const est = operand.value.length + width.value * lines;
        if (est > max) this.tooBig(est, `indent(${width.value})'s result`);
      }
    } else if (name === "replace" && isStr(operand)) {
      this.checkReplace(operand.value, pos, kw);
    } else if (name === "join") {
      const sep = pos[0] ?? kw.get("separator");
      const n = isStr(operand) ? operand.value.length : Array.isArray(operand.value) ? operand.value.length : 0;
      if (isStr(sep) && n > 1) {
        const est = this.sizeOf(operand).size + sep.value.length * (n - 1);
        if (est > max) this.tooBig(est, "join()'s result");
      }
    } else if (name === "tojson") {
      const indent = kw.get("indent");
      const seps = kw.get("separators");
      let perNode = 0;
      if (isInt(indent) && indent.value > 0) perNode += 1;
      if (seps && Array.isArray(seps.value)) for (const s of seps.value as RuntimeValue[]) if (isStr(s)) perNode += s.value.length;
      const s = this.sizeOf(operand);
      const est = s.size + s.nodes * (perNode + (isInt(indent) && indent.value > 0 ? indent.value * s.depth : 0));
      if (est > max) this.tooBig(est, "tojson()'s result");
    }
    return this.hooks.applyFilter(operand, node, env);
  }
}

/**
 * Steps compiling a template source costs, beyond linear: the library's
 * lexer preprocesses the source with /(\s*){%...generation...%}(\s*)/gs,
 * which backtracks over each whitespace run from every position in it, so a
 * run of r whitespace characters costs about r^2/2 (a template of 40k spaces
 * takes seconds, of 1M, minutes). Counted as 1 step per
 * LEXER_CHARS_PER_STEP characters scanned (measured: the scan runs about
 * 2 ns a character, an interpreter step about 2 us), so a template may hold
 * whitespace runs of ~45k characters at the default maxSteps; real
 * templates' runs (indentation) cost nothing.
 */
export function compileSteps(source: string): number {
  let scanned = 0;
  for (const m of source.matchAll(/\s+/g)) scanned += (m[0].length * (m[0].length + 1)) / 2;
  return Math.floor(scanned / LEXER_CHARS_PER_STEP);
}
const LEXER_CHARS_PER_STEP = 1024;

/** range() as the library's, with its length charged before the list is built. */
function boundedRange(interp: () => BoundedInterpreter) {
  return (...args: unknown[]): number[] => {
    if (args.length < 1 || args.length > 3 || !args.every((a) => typeof a === "number" && Number.isInteger(a))) {
      throw new Error("range() takes 1 to 3 integer arguments");
    }
    let [start, stop, step = 1] = args as number[];
    if (args.length === 1) [start, stop] = [0, start];
    if (step === 0) throw new Error("range() step must not be zero");
    const n = Math.max(0, Math.ceil((stop - start) / step));
    interp().charge(n);
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = start + i * step;
    return out;
  };
}

// Python's strftime in the C locale, which chat templates assume (Llama 3.x: "%d %b %Y" -> "05 Sep
// 2024"): English names whatever the user's locale (Intl would give "Sept" in en-GB, "Dez." in de).
const MONTHS_LONG = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const MONTHS_SHORT = MONTHS_LONG.map((m) => m.slice(0, 3));

/** The library's strftime_now (its setupGlobals is not exported), same directives; local time. */
function strftimeNow(format: unknown): string {
  const d = new Date();
  const pad2 = (n: number): string => (n < 10 ? `0${n}` : String(n));
  return String(format).replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case "%Y": return String(d.getFullYear());
      case "%m": return pad2(d.getMonth() + 1);
      case "%d": return pad2(d.getDate());
      case "%b": return MONTHS_SHORT[d.getMonth()];
      case "%B": return MONTHS_LONG[d.getMonth()];
      case "%H": return pad2(d.getHours());
      case "%M": return pad2(d.getMinutes());
      default: return "%";
    }
  });
}

/**
 * Template.render with limits: the same globals as the library's
 * setupGlobals, range() bounded, a BoundedInterpreter. Returns the output and
 * the steps it took. Throws TemplateLimitHit past a limit.
 */
export function renderBounded(template: Template, items: Record<string, unknown>, limits: TemplateLimits): { text: string; steps: number } {
  let interpreter: BoundedInterpreter | null = null;
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false, true: true, none: null, True: true, False: false, None: null,
    raise_exception: (msg: unknown) => {
      throw new Error(String(msg));
    },
    range: boundedRange(() => interpreter as BoundedInterpreter),
    strftime_now: strftimeNow,
  };
  for (const [k, v] of Object.entries(globals)) env.set(k, v);
  for (const [k, v] of Object.entries(items)) {
    env.variables.delete(k); // a caller's variable shadows a global of the same name
    env.set(k, v);
  }
  interpreter = new BoundedInterpreter(env, limits);
  const out = interpreter.run(template.parsed);
  return { text: out.value as string, steps: interpreter.steps };
}
