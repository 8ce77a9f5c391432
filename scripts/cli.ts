// webvlm command line (Node, Dawn through the `webgpu` package):
//   webvlm info
//   webvlm chat --model <dir|url|owner/name> [--image FILE]... [--dtype q4] "question"
//   webvlm run --request req.json [--model ...] [--dtype q4]
import { readFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { isWebvlmError } from "../src/api/errors.ts";
import type { ChatCompletionRequest, ContentPart } from "../src/api/types.ts";
import { Engine } from "../src/engine/engine.ts";
import type { ProgressEvent } from "../src/loader/progress.ts";
import type { WeightFormat } from "../src/quant/formats.ts";

const USAGE = `usage:
  webvlm info
  webvlm chat --model <dir|url|owner/name[@rev]> [--image FILE]... [--dtype f32|f16|q8|q4]
              [--max-tokens N] [--temperature T] [--seed N] [--context N] "question"
  webvlm run --request req.json [--model M] [--dtype ...]   (prints the chat.completion JSON)`;

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
  if (command !== "chat" && command !== "run") {
    console.error(USAGE);
    return 2;
  }
  let request: ChatCompletionRequest;
  if (command === "run") {
    if (!values.request) throw new Error("run needs --request req.json");
    request = JSON.parse(await readFile(values.request, "utf8")) as ChatCompletionRequest;
    request.stream = false;
  } else {
    const question = positionals.join(" ");
    if (!question) throw new Error("chat needs a question");
    const content: ContentPart[] = (values.image ?? []).map((path) => ({ type: "image_url", image_url: { url: path } }));
    content.push({ type: "text", text: question });
    request = { messages: [{ role: "user", content }], stream: true, stream_options: { include_usage: true } };
    if (values["max-tokens"]) request.max_tokens = Number(values["max-tokens"]);
    if (values.temperature) request.temperature = Number(values.temperature);
    if (values.seed) request.seed = Number(values.seed);
  }
  const model = values.model ?? request.model;
  if (!model) throw new Error("--model is required (a directory, a URL, or a hub id like Qwen/Qwen2-VL-2B-Instruct)");

  const engine = await Engine.create();
  const progress = progressPrinter();
  await engine.load(model, {
    quantization: dtypeOf(values.dtype),
    contextLength: values.context ? Number(values.context) : undefined,
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
          `\n[${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens; prefill ${u.prefill_tokens_per_second?.toFixed(1)} tok/s, decode ${u.decode_tokens_per_second?.toFixed(1)} tok/s, first token ${u.time_to_first_token_ms?.toFixed(0)} ms]\n`,
        );
      }
    }
    process.stdout.write("\n");
  }
  await engine.unload();
  engine.gpu.destroy();
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
