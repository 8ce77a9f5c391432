// webvlm command line (Node, Dawn through the `webgpu` package):
//   webvlm info
//   webvlm chat --model <dir|url|owner/name> [--image FILE]... [--dtype q4] "question"
//   webvlm run --request req.json [--model ...] [--dtype q4]
//   webvlm quantize --model <dir|url|owner/name> --dtype q4|q8 --out DIR
import { mkdir, open, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { isWebvlmError } from "../src/api/errors.ts";
import type { ChatCompletionRequest, ContentPart } from "../src/api/types.ts";
import { Engine } from "../src/engine/engine.ts";
import { validateRequest } from "../src/engine/request.ts";
import type { ProgressEvent } from "../src/loader/progress.ts";
import type { WeightFormat } from "../src/quant/formats.ts";
import type { PackedSpool } from "../src/loader/webvlm_quant.ts";

const USAGE = `usage:
  webvlm info
  webvlm chat --model <dir|url|owner/name[@rev]> [--image FILE]... [--dtype f32|f16|q8|q4]
              [--max-tokens N] [--temperature T] [--seed N] [--context N] [--kv-cache f16|f32]
              [--preprocess gpu|cpu] "question"
  webvlm run --request req.json [--model M] [--dtype ...] [--preprocess gpu|cpu]   (prints the chat.completion JSON)
  webvlm quantize --model <dir|url|owner/name[@rev]> --dtype q4|q8 --out DIR
              (writes webvlm's pre-quantized format: a Hugging Face directory that loads with no quantizing)`;

const FORMATS = ["f32", "f16", "q8", "q4"] as const;

function progressPrinter(): (e: ProgressEvent) => void {
  if (!process.stderr.isTTY) return () => {};
  let last = 0;
  return (e) => {
    const now = Date.now();
    if (now - last < 100 && e.fraction < 1) return;
    last = now;
    const width = 30;
    const filled = Math.round(e.fraction * width);
    const mb = (b: number): string => (b / 1e6).toFixed(1);
    process.stderr.write(`\r[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(e.fraction * 100).toFixed(0).padStart(3)}% ${e.phase.padEnd(8)} ${mb(e.loadedBytes)}/${mb(e.totalBytes)} MB ${e.file.slice(-40).padEnd(40)}`);
  };
}

/** A numeric option: undefined when absent; a usage error naming the option otherwise. */
function numberOption(name: string, v: string | undefined, integer: boolean, min?: number): number | undefined {
  if (v === undefined) return undefined;
  const n = v.trim() === "" ? NaN : Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isSafeInteger(n)) || (min !== undefined && n < min)) {
    const what = integer ? `an integer${min !== undefined ? ` >= ${min}` : ""}` : `a number${min !== undefined ? ` >= ${min}` : ""}`;
    throw new Error(`--${name} must be ${what}, got ${JSON.stringify(v)}`);
  }
  return n;
}

/** The request file of `run`: read and parsed, every failure naming the file. */
async function readRequestFile(path: string): Promise<ChatCompletionRequest> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new Error(`cannot read the request file ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`the request file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new Error(`the request file ${path} must hold a JSON object (a chat completion request), got ${json === null ? "null" : Array.isArray(json) ? "an array" : typeof json}`);
  }
  return json as ChatCompletionRequest;
}

function dtypeOf(v: string | undefined): WeightFormat | undefined {
  if (v === undefined) return undefined;
  if (!(FORMATS as readonly string[]).includes(v)) throw new Error(`--dtype must be one of ${FORMATS.join(", ")}`);
  return v as WeightFormat;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      model: { type: "string", short: "m" },
      image: { type: "string", short: "i", multiple: true },
      dtype: { type: "string" },
      "max-tokens": { type: "string" },
      temperature: { type: "string" },
      seed: { type: "string" },
      context: { type: "string" },
      request: { type: "string" },
      preprocess: { type: "string" },
      "kv-cache": { type: "string" },
      out: { type: "string", short: "o" },
    },
  });
  if (command === "info") {
    const { acquireNodeGpu } = await import("../src/gpu/node.ts");
    const { selfCheck } = await import("../src/gpu/selfcheck.ts");
    const gpu = await acquireNodeGpu();
    console.log(JSON.stringify({ adapter: gpu.adapter, selfCheck: await selfCheck(gpu) }, null, 2));
    gpu.destroy();
    return 0;
  }
  if (command === "quantize") return quantizeCommand(values);
  if (command !== "chat" && command !== "run") {
    console.error(USAGE);
    return 2;
  }
  // Every option and the request are checked before the (slow) model load.
  const quantization = dtypeOf(values.dtype);
  const contextLength = numberOption("context", values.context, true, 1);
  const maxTokens = numberOption("max-tokens", values["max-tokens"], true, 1);
  const temperature = numberOption("temperature", values.temperature, false, 0);
  const seed = numberOption("seed", values.seed, true);
  const preprocessing = values.preprocess ?? "gpu";
  if (preprocessing !== "gpu" && preprocessing !== "cpu") throw new Error(`--preprocess must be gpu or cpu, got ${preprocessing}`);
  // KV cache element type: f16 by default, f32 with --dtype f32 (all-f32 weights) unless given here.
  const kvCache = values["kv-cache"];
  if (kvCache !== undefined && kvCache !== "f16" && kvCache !== "f32") throw new Error(`--kv-cache must be f16 or f32, got ${kvCache}`);
  let request: ChatCompletionRequest;
  if (command === "run") {
    if (!values.request) throw new Error("run needs --request req.json");
    request = await readRequestFile(values.request);
    request.stream = false;
    try {
      validateRequest(request);
    } catch (e) {
      if (isWebvlmError(e)) e.message = `${values.request}: ${e.message}`;
      throw e;
    }
  } else {
    const question = positionals.join(" ");
    if (!question) throw new Error("chat needs a question");
    const content: ContentPart[] = (values.image ?? []).map((path) => ({ type: "image_url", image_url: { url: path } }));
    content.push({ type: "text", text: question });
    request = { messages: [{ role: "user", content }], stream: true, stream_options: { include_usage: true } };
    if (maxTokens !== undefined) request.max_tokens = maxTokens;
    if (temperature !== undefined) request.temperature = temperature;
    if (seed !== undefined) request.seed = seed;
  }
  const model = values.model ?? request.model;
  if (!model) throw new Error("--model is required (a directory, a URL, or a hub id like Qwen/Qwen2-VL-2B-Instruct)");

  const engine = await Engine.create();
  const progress = progressPrinter();
  // --dtype f32 means all-f32 weights (exact checks against a reference); f16 all-f16; q8/q4 the
  // decoder's linears, with embeddings and the vision side at their f16 defaults.
  const whole = quantization === "f32" || quantization === "f16" ? { embedding: quantization, vision: quantization } : {};
  await engine.load(model, {
    quantization,
    ...whole,
    contextLength,
    kvCache,
    preprocessing,
    onProgress: progress,
  });
  if (process.stderr.isTTY) process.stderr.write("\n");

  if (command === "run") {
    const completion = await engine.chat.completions.create({ ...request, stream: false });
    console.log(JSON.stringify(completion, null, 2));
  } else {
    const stream = await engine.chat.completions.create({ ...request, stream: true });
    for await (const chunk of stream) {
      const text = chunk.choices[0]?.delta.content;
      if (text) process.stdout.write(text);
      if (chunk.usage) {
        const u = chunk.usage;
        process.stderr.write(
          `\n[${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens; prefill ${u.prefill_tokens_per_second?.toFixed(1)} tok/s, decode ${u.decode_tokens_per_second?.toFixed(1)} tok/s, first token ${u.time_to_first_token_ms?.toFixed(0)} ms` +
            `${u.preprocess_device ? `; images ${u.preprocess_ms?.toFixed(0)} ms on the ${u.preprocess_device.toUpperCase()}` : ""}]\n`,
        );
      }
    }
    process.stdout.write("\n");
  }
  await engine.unload();
  engine.gpu.destroy();
  return 0;
}

/** A file-backed PackedSpool (webvlm_quant.ts): packed matrices wait on disk, not in memory. */
async function fileSpool(path: string): Promise<PackedSpool & { close(): Promise<void> }> {
  const fh = await open(path, "w+");
  let size = 0;
  return {
    async append(bytes) {
      const at = size;
      for (let o = 0; o < bytes.length; ) o += (await fh.write(bytes, o, bytes.length - o, at + o)).bytesWritten;
      size += bytes.length;
      return at;
    },
    async read(offset, length) {
      const buf = new Uint8Array(length);
      for (let o = 0; o < length; ) {
        const { bytesRead } = await fh.read(buf, o, length - o, offset + o);
        if (bytesRead === 0) throw new Error(`spool ${path} ends before ${offset + length}`);
        o += bytesRead;
      }
      return buf;
    },
    close: () => fh.close(),
  };
}

/** `webvlm quantize`: the checkpoint's decoder linears packed as the GPU reads them (loader/webvlm_quant.ts). */
async function quantizeCommand(values: { model?: string; dtype?: string; out?: string }): Promise<number> {
  const format = values.dtype;
  if (format !== "q4" && format !== "q8") throw new Error(`quantize needs --dtype q4 or q8${format ? `, got ${format}` : ""}`);
  if (!values.model) throw new Error("quantize needs --model (a directory, a URL, or a hub id like Qwen/Qwen2-VL-2B-Instruct)");
  if (!values.out) throw new Error("quantize needs --out DIR");
  const out = values.out;
  let entries: string[] = [];
  try {
    entries = await readdir(out);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  if (entries.length > 0) throw new Error(`--out ${out} exists and is not empty`);
  const { openCheckpoint, resolveCheckpointLocation } = await import("../src/loader/checkpoint.ts");
  const { resolveFamily } = await import("../src/models/registry.ts");
  const { quantizeCheckpoint } = await import("../src/loader/webvlm_quant.ts");
  const { acquireNodeGpu } = await import("../src/gpu/node.ts");
  const checkpoint = await openCheckpoint(values.model, { cache: false, onProgress: progressPrinter() });
  const { store } = await resolveCheckpointLocation(values.model, { cache: false });
  const family = resolveFamily(checkpoint.config).open(checkpoint.config, checkpoint.generationConfig);
  await mkdir(out, { recursive: true });
  const spoolPath = join(out, ".webvlm-quantize.spool");
  const spool = await fileSpool(spoolPath);
  const gpu = await acquireNodeGpu();
  try {
    const result = await quantizeCheckpoint({
      gpu,
      weights: checkpoint.weights,
      config: checkpoint.config,
      family,
      format,
      readFile: (f) => store.readFile(f),
      spool,
      sink: {
        writeFile: (f, bytes) => writeFile(join(out, f), bytes),
        async create(f) {
          const fh = await open(join(out, f), "w");
          let pos = 0;
          return {
            async write(bytes) {
              for (let o = 0; o < bytes.length; ) o += (await fh.write(bytes, o, bytes.length - o, pos + o)).bytesWritten;
              pos += bytes.length;
            },
            close: () => fh.close(),
          };
        },
      },
      log: (line) => process.stderr.write(`${process.stderr.isTTY ? "\n" : ""}${line}\n`),
    });
    console.log(JSON.stringify({ out, format, files: result.files, quantized: result.quantized.length, tensorBytes: result.tensorBytes }, null, 2));
  } finally {
    await spool.close();
    await rm(spoolPath, { force: true });
    await checkpoint.close();
    gpu.destroy();
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (isWebvlmError(e)) console.error(`webvlm: ${e.code}: ${e.message}`);
    else console.error(`webvlm: ${(e as Error).message ?? e}`);
    process.exit(1);
  },
);
