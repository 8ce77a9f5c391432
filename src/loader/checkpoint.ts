// Opens a Hugging Face-style model directory from a hub id, a static base URL
// or (in Node) a local path: the small JSON files are read whole, the
// safetensors weights become a tensor source that reads one tensor per
// request (HTTP Range / positioned file read), so the checkpoint is never
// held whole in memory.
//
//   "owner/name", "owner/name@rev"  -> {hubBase}/{repo}/resolve/{rev}/{file}
//   "https://host/some/dir/"        -> static files under that URL
//   "/abs/dir", "./rel", "C:\dir"   -> local directory (Node only)
// In Node an "owner/name"-shaped string that is an existing directory is read
// locally, as transformers' from_pretrained does.
import { isNode } from "../platform.ts";
import { WebvlmError } from "../api/errors.ts";
import { bf16BitsToF32, fromF16Bits } from "../quant/f16.ts";
import { resolveChatTemplate } from "../tokenizer/chat_template.ts";
import type { PackedQuant } from "../quant/pack.ts";
import { withPrequantized } from "./prequantized.ts";
import { noStoreFetch, openCachedStore, weightCacheAvailable, type WeightCacheOptions } from "./cache_idb.ts";
import type * as FileNodeModule from "./file_node.ts";
import {
  fetchFile,
  getHubBaseUrl,
  hubFileUrl,
  HttpByteSource,
  parseHubId,
  probeFile,
  type FileValidators,
  staticFileUrl,
  type HttpOptions,
} from "./http.ts";
import { FileProgress, progressEvent, type ProgressCallback } from "./progress.ts";
import {
  decodeToF32,
  missingTensor,
  parseSafetensorsIndex,
  readSafetensorsHeader,
  type ByteSource,
  type TensorInfo,
} from "./safetensors.ts";

// ---------------------------------------------------------------- stores

/** A ByteSource whose reads can report bytes as they arrive. */
export interface ProgressiveByteSource extends ByteSource {
  read(offset: number, length: number, onChunk?: (bytes: number) => void): Promise<Uint8Array>;
}

/**
 * Where checkpoint files come from. Implement this to load from anything
 * else (File objects from a picker, a cache); the three built-in locations
 * are stores too.
 */
export interface CheckpointStore {
  /** For messages: the URL base or directory. */
  readonly description: string;
  /** For messages: where one file is (its URL or path). */
  locate?(file: string): string;
  /**
   * A whole small file, or undefined when it does not exist. `onValidators` is told the
   * answering response's ETag / Last-Modified / SHA-256 where the store has them (HTTP).
   */
  readFile(
    file: string,
    onProgress?: (loaded: number, total: number | undefined) => void,
    onValidators?: (v: FileValidators) => void,
  ): Promise<Uint8Array | undefined>;
  /** Random access to a (large) file; a missing file is model_not_found. */
  openFile(file: string): Promise<ProgressiveByteSource>;
  /**
   * The file's current size and validators, in one cheap request (HTTP: GET Range 0-0), for the
   * cache's revalidation of files it already holds. Throws when the server cannot be asked.
   */
  stat?(file: string): Promise<FileValidators>;
}

export type CheckpointLocation =
  | string
  | { hub: string; revision?: string }
  | { url: string }
  /** Same as { url } (a static base URL, e.g. "/models/tiny/"). */
  | { baseUrl: string }
  | { path: string }
  | { store: CheckpointStore };

export interface OpenCheckpointOptions extends HttpOptions {
  /** "download" events for every file and tensor read (see progress.ts). */
  onProgress?: ProgressCallback;
  /** Hub root for hub ids (default: getHubBaseUrl(), i.e. https://huggingface.co). */
  hubBaseUrl?: string;
  /** Revision for a hub id without "@rev" (default "main"). */
  revision?: string;
  /**
   * Keep the files in IndexedDB (cache_idb.ts): a second load reads them from
   * there, an interrupted one resumes. true or options to enable, false to
   * disable; default on where IndexedDB exists (browsers), off in Node. Local
   * paths are never cached. Progress then has "cache" and "download" phases.
   */
  cache?: boolean | WeightCacheOptions;
}

export type LocationKind = "hub" | "url" | "path" | "store";


// Hidden from bundlers: browser builds must not pull in node:fs.
const FILE_NODE = "./file_node.ts";
const NODE_FS = "node:fs/promises";

async function nodeStat(path: string): Promise<"dir" | "file" | undefined> {
  try {
    const fs = (await import(/* @vite-ignore */ NODE_FS)) as typeof import("node:fs/promises");
    const st = await fs.stat(path);
    return st.isDirectory() ? "dir" : "file";
  } catch {
    return undefined;
  }
}

function httpStore(description: string, urlOf: (file: string) => string, opts: HttpOptions, hub = false): CheckpointStore {
  return {
    description,
    locate: urlOf,
    readFile: (file, onProgress, onValidators) => fetchFile(urlOf(file), { ...opts, onProgress, onValidators, etagIsSha256: hub }, true),
    openFile: (file) => HttpByteSource.open(urlOf(file), { ...opts, etagIsSha256: hub }),
    stat: (file) => probeFile(urlOf(file), { ...opts, etagIsSha256: hub }),
  };
}

/** A local directory; `signal` is checked before every file open and every read. */
function localStore(dir: string, signal?: AbortSignal): CheckpointStore {
  if (!isNode) throw new WebvlmError("unsupported_feature", `local paths need Node; in a browser use a URL or hub id (got ${dir})`);
  const base = dir.replace(/[\\/]+$/, "");
  const pathOf = (file: string): string => `${base}/${file}`;
  const load = async (): Promise<typeof FileNodeModule> =>
    (await import(/* @vite-ignore */ new URL(FILE_NODE, import.meta.url).href)) as typeof FileNodeModule;
  const check = (file: string): void => {
    if (signal?.aborted) throw new WebvlmError("aborted", `loading ${pathOf(file)} was aborted`, { path: pathOf(file) });
  };
  return {
    description: base,
    locate: pathOf,
    async readFile(file, onProgress) {
      check(file);
      const { nodeFileSource } = await load();
      let src: ByteSource;
      try {
        src = await nodeFileSource(pathOf(file));
      } catch (e) {
        if (e instanceof WebvlmError && e.code === "model_not_found") return undefined;
        throw e;
      }
      try {
        check(file);
        const bytes = await src.read(0, src.size ?? 0);
        onProgress?.(bytes.length, bytes.length);
        return bytes;
      } finally {
        await src.close?.();
      }
    },
    async openFile(file) {
      check(file);
      const { nodeFileSource } = await load();
      const src = await nodeFileSource(pathOf(file));
      return {
        size: src.size,
        close: () => src.close?.() ?? Promise.resolve(),
        async read(offset, length, onChunk) {
          check(file);
          const b = await src.read(offset, length);
          onChunk?.(b.length);
          return b;
        },
      };
    },
  };
}

function fileUrlToPath(u: string): string {
  const p = decodeURIComponent(new URL(u).pathname);
  return /^\/[A-Za-z]:/.test(p) ? p.slice(1) : p; // file:///C:/x -> C:/x
}

/** Turns a location into a store, following the rules at the top of this file. */
export async function resolveCheckpointLocation(
  location: CheckpointLocation,
  opts: OpenCheckpointOptions = {},
): Promise<{ kind: LocationKind; store: CheckpointStore }> {
  const hub = (id: string, revision?: string): { kind: LocationKind; store: CheckpointStore } => {
    const h = parseHubId(id);
    if (!h) throw new WebvlmError("bad_request", `not a hub repo id ("owner/name[@revision]"): ${JSON.stringify(id)}`);
    const rev = revision ?? (id.includes("@") ? h.revision : (opts.revision ?? "main"));
    const base = opts.hubBaseUrl ?? getHubBaseUrl();
    return { kind: "hub", store: httpStore(`${h.repo}@${rev}`, (f) => hubFileUrl(h.repo, f, rev, base), opts, true) };
  };
  const url = (u: string): { kind: LocationKind; store: CheckpointStore } => {
    const b = u.endsWith("/") ? u : `${u}/`;
    return { kind: "url", store: httpStore(b, (f) => staticFileUrl(b, f), opts) };
  };
  if (typeof location !== "string") {
    if ("store" in location) return { kind: "store", store: location.store };
    if ("hub" in location) return hub(location.hub, location.revision);
    if ("url" in location) return url(location.url);
    if ("baseUrl" in location) return url(location.baseUrl);
    return { kind: "path", store: localStore(location.path, opts.signal) };
  }
  const s = location.trim();
  if (s === "") throw new WebvlmError("bad_request", "empty checkpoint location");
  if (/^https?:\/\//i.test(s)) return url(s);
  if (/^file:\/\//i.test(s)) return { kind: "path", store: localStore(fileUrlToPath(s), opts.signal) };
  const hubShaped = parseHubId(s) !== undefined && !s.endsWith("/");
  if (isNode) {
    const pathShaped = /^(\/|\.{1,2}([\\/]|$)|~|[A-Za-z]:[\\/])/.test(s) || s.includes("\\");
    if (!pathShaped && hubShaped && (await nodeStat(s)) !== "dir") return hub(s);
    return { kind: "path", store: localStore(s, opts.signal) };
  }
  if (hubShaped) return hub(s);
  // Browser: anything else is a URL relative to the page.
  const page = (globalThis as { location?: { href?: string } }).location?.href;
  if (!page) throw new WebvlmError("bad_request", `cannot resolve relative checkpoint URL ${JSON.stringify(s)} without a page URL`);
  return url(new URL(s, page).href);
}

// ---------------------------------------------------------------- weights

/** Structurally a models/qwen2_vl TensorSource, plus metadata and raw access. */
export interface CheckpointWeights {
  names(): string[];
  has(name: string): boolean;
  shape(name: string): number[];
  /** safetensors dtype string: "F32", "F16", "BF16", ... */
  dtype(name: string): string;
  byteSize(name: string): number;
  /** The shard file holding the tensor. */
  file(name: string): string;
  /** The tensor as f32 (F32/F16/BF16), one read of exactly its bytes. */
  read(name: string): Promise<Float32Array>;
  /** The tensor's raw little-endian bytes (e.g. to upload f16/bf16 without widening). */
  readBytes(name: string): Promise<Uint8Array>;
  /**
   * Rows [start, start + count) of a tensor (rows = first dimension) as f32,
   * one read of just those bytes: a 151936-row embedding can be streamed in
   * pieces and never exist whole as f32.
   */
  readRows(name: string, start: number, count: number): Promise<Float32Array>;
  /** Sum of every tensor's bytes. */
  readonly totalBytes: number;
  /** Pre-quantized checkpoints (loader/prequantized.ts): a matrix stored quantized, packed for the GPU. */
  readQuantized?(name: string): Promise<PackedQuant | undefined>;
}

interface Entry extends TensorInfo {
  file: string;
}

interface Shard {
  src: ProgressiveByteSource;
  progress: FileProgress;
}

class Weights implements CheckpointWeights {
  readonly totalBytes: number;

  constructor(
    private readonly table: Map<string, Entry>,
    private readonly shards: Map<string, Shard>,
  ) {
    let t = 0;
    for (const e of table.values()) t += e.end - e.begin;
    this.totalBytes = t;
  }

  private entry(name: string): Entry {
    const e = this.table.get(name);
    if (!e) throw missingTensor(name);
    return e;
  }

  names(): string[] { return [...this.table.keys()]; }
  has(name: string): boolean { return this.table.has(name); }
  shape(name: string): number[] { return this.entry(name).shape.slice(); }
  dtype(name: string): string { return this.entry(name).dtype; }
  byteSize(name: string): number { const e = this.entry(name); return e.end - e.begin; }
  file(name: string): string { return this.entry(name).file; }

  /** Bytes [begin, begin + n) of the tensor's shard, counted for progress under `key`. */
  private async span(e: Entry, begin: number, n: number, key: string): Promise<Uint8Array> {
    const shard = this.shards.get(e.file)!;
    let loaded = 0;
    const bytes = n === 0 ? new Uint8Array(0) : await shard.src.read(begin, n, (k) => {
      loaded += k;
      shard.progress.update(key, loaded, e.name);
    });
    if (bytes.length !== n) {
      throw new WebvlmError("integrity_failed", `tensor "${e.name}" in ${e.file}: wanted ${n} bytes, got ${bytes.length} (truncated file?)`, { tensor: e.name, file: e.file });
    }
    shard.progress.update(key, n, e.name);
    return bytes;
  }

  readBytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    return this.span(e, e.begin, e.end - e.begin, name);
  }

  async read(name: string): Promise<Float32Array> {
    const e = this.entry(name);
    return toF32(await this.span(e, e.begin, e.end - e.begin, name), e.dtype, name);
  }

  async readRows(name: string, start: number, count: number): Promise<Float32Array> {
    const e = this.entry(name);
    const rows = e.shape[0] ?? 1;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 || start + count > rows) {
      throw new WebvlmError("bad_request", `rows [${start}, ${start + count}) out of range for "${name}" [${e.shape.join(", ")}]`, { tensor: name });
    }
    const rowBytes = rows === 0 ? 0 : (e.end - e.begin) / rows;
    return toF32(await this.span(e, e.begin + start * rowBytes, count * rowBytes, `${name}\u0000${start}:${count}`), e.dtype, name);
  }

  async close(): Promise<void> {
    await Promise.all([...this.shards.values()].map((s) => s.src.close?.()));
  }
}

/** F32/F16/BF16 bytes -> f32; a fresh aligned buffer (what every store returns) converts without a copy. */
function toF32(bytes: Uint8Array, dtype: string, name: string): Float32Array {
  const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
  if (own && dtype === "F32") return new Float32Array(bytes.buffer as ArrayBuffer);
  if (own && dtype === "BF16") return bf16BitsToF32(new Uint16Array(bytes.buffer as ArrayBuffer));
  if (own && dtype === "F16") return fromF16Bits(new Uint16Array(bytes.buffer as ArrayBuffer));
  return decodeToF32(bytes, dtype, name);
}

// ---------------------------------------------------------------- checkpoint

type Json = Record<string, unknown>;

export interface Checkpoint {
  kind: LocationKind;
  /** Whether files come through the IndexedDB cache (cache_idb.ts). */
  cached: boolean;
  /** The URL base, hub repo@revision or directory it came from. */
  description: string;
  /** config.json as parsed JSON (parse it with the model's config parser). */
  config: Json;
  generationConfig?: Json;
  preprocessorConfig?: Json;
  /** processor_config.json (e.g. Idefics2's image_seq_len and chat template). */
  processorConfig?: Json;
  tokenizerJson: Json;
  /** tokenizer_config.json; {} when the checkpoint has none. */
  tokenizerConfig: Json;
  /** chat_template.jinja, chat_template.json's, processor_config.json's or tokenizer_config.json's template (the processor's order). */
  chatTemplate?: string;
  weights: CheckpointWeights;
  /** Releases open file handles (Node); HTTP sources hold nothing. */
  close(): Promise<void>;
}

function parseJson(bytes: Uint8Array, file: string, where: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new WebvlmError("bad_request", `${file} in ${where} is not valid JSON (${(e as Error).message})`, { file });
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new WebvlmError("bad_request", `${file} in ${where} is not a JSON object`, { file });
  return v as Json;
}

/** Opens a checkpoint: JSON files, the weight index and every shard's header. */
export async function openCheckpoint(location: CheckpointLocation, opts: OpenCheckpointOptions = {}): Promise<Checkpoint> {
  // With the IndexedDB cache on, the browser's HTTP cache would only hold a second copy.
  const wantCache = weightCacheAvailable() && (opts.cache ?? !isNode) !== false;
  const resolved = await resolveCheckpointLocation(location, wantCache ? { ...opts, fetch: noStoreFetch(opts.fetch) } : opts);
  const kind = resolved.kind;
  const useCache = wantCache && kind !== "path";
  // A cached store reports progress itself ("cache" vs "download" bytes).
  const store = useCache
    ? await openCachedStore(resolved.store, { ...(typeof opts.cache === "object" ? opts.cache : {}), onProgress: opts.onProgress })
    : resolved.store;
  const where = store.description;
  const emit = store === resolved.store ? opts.onProgress : undefined;
  const readFile = (file: string): Promise<Uint8Array | undefined> =>
    store.readFile(file, emit && ((loaded, total) => emit(progressEvent("download", file, loaded, total ?? loaded))));
  const readJson = async (file: string): Promise<Json | undefined> => {
    const b = await readFile(file);
    return b === undefined ? undefined : parseJson(b, file, where);
  };

  // config.json first and alone: a wrong id fails fast, before a dozen 404s.
  const config = await readJson("config.json");
  const at = (file: string): string => store.locate?.(file) ?? `${file} in ${where}`;
  if (!config) throw new WebvlmError("model_not_found", `not a model directory: ${at("config.json")} not found`, { location: where });

  const [generationConfig, preprocessorConfig, processorConfig, tokenizerJson, tokenizerConfig, chatJson, chatJinja, index] = await Promise.all([
    readJson("generation_config.json"),
    readJson("preprocessor_config.json"),
    readJson("processor_config.json"),
    readJson("tokenizer.json"),
    readJson("tokenizer_config.json"),
    readJson("chat_template.json"),
    readFile("chat_template.jinja"),
    readJson("model.safetensors.index.json"),
  ]);
  if (!tokenizerJson) throw new WebvlmError("model_not_found", `${at("tokenizer.json")} not found`, { location: where, file: "tokenizer.json" });

  let chatTemplate: string | undefined;
  try {
    chatTemplate = resolveChatTemplate({
      chatTemplateJinja: chatJinja && new TextDecoder().decode(chatJinja),
      chatTemplateJson: chatJson,
      processorConfig,
      tokenizerConfig,
    });
  } catch {
    chatTemplate = undefined; // a base (non-chat) model: the caller decides whether that is fine
  }

  // Pre-quantized checkpoints (GPTQ, AWQ, webvlm's own format) expose their packed matrices.
  const opened = await openWeights(store, index, emit);
  let weights: CheckpointWeights;
  try {
    weights = withPrequantized(opened, config);
  } catch (e) {
    await opened.close(); // a refused quantization_config leaves no file handle open
    throw e;
  }
  return {
    kind,
    cached: store !== resolved.store,
    description: where,
    config,
    generationConfig,
    preprocessorConfig,
    processorConfig,
    tokenizerJson,
    tokenizerConfig: tokenizerConfig ?? {},
    chatTemplate,
    weights,
    close: () => opened.close(),
  };
}

async function openWeights(store: CheckpointStore, indexJson: Json | undefined, emit: ProgressCallback | undefined): Promise<Weights> {
  const index = indexJson === undefined ? undefined : parseSafetensorsIndex(indexJson);
  const files = index ? index.files : ["model.safetensors"];
  const shards = new Map<string, Shard>();
  const headers = new Map<string, Map<string, TensorInfo>>();
  const opened: ProgressiveByteSource[] = [];
  try {
    // allSettled, not all: on a failure every shard still in flight must finish opening so it can be closed.
    const results = await Promise.allSettled(files.map(async (file) => {
      let src: ProgressiveByteSource;
      try {
        src = await store.openFile(file);
      } catch (e) {
        if (e instanceof WebvlmError && e.code === "model_not_found" && !index) {
          throw new WebvlmError("model_not_found", `no model.safetensors or model.safetensors.index.json in ${store.description} (only safetensors checkpoints load)`, { location: store.description });
        }
        throw e;
      }
      opened.push(src);
      // Parse without the size so a short file is reported as truncated (integrity), not as a bad header.
      const header = await readSafetensorsHeader({ read: (o, l) => src.read(o, l) });
      let dataEnd = header.dataStart;
      for (const t of header.tensors.values()) dataEnd = Math.max(dataEnd, t.end);
      if (src.size !== undefined && dataEnd > src.size) {
        throw new WebvlmError("integrity_failed", `${file} in ${store.description} is ${src.size} bytes but its header describes ${dataEnd}: truncated file`, { file, size: src.size, expected: dataEnd });
      }
      let tensorBytes = 0;
      for (const t of header.tensors.values()) tensorBytes += t.end - t.begin;
      const progress = new FileProgress("download", file, header.dataStart + tensorBytes, emit);
      progress.update("\u0000header", header.dataStart);
      shards.set(file, { src, progress });
      headers.set(file, header.tensors);
    }));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
  } catch (e) {
    await Promise.all(opened.map((s) => s.close?.()));
    throw e;
  }
  const table = new Map<string, Entry>();
  if (index) {
    for (const [name, file] of index.weightMap) {
      const info = headers.get(file)!.get(name);
      if (!info) {
        await Promise.all(opened.map((s) => s.close?.()));
        throw missingTensor(name, file); // the index promised it; the shard lacks it
      }
      table.set(name, { ...info, file });
    }
  } else {
    for (const info of headers.get(files[0])!.values()) table.set(info.name, { ...info, file: files[0] });
  }
  return new Weights(table, shards);
}
