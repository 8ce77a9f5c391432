// `npm run bench` entry: the end-to-end benchmark of one model family at a real model's shapes
// with random weights made on the GPU.
//   npm run bench -- [--model qwen2-vl-2b] [--tiny] ...    Qwen2-VL-2B (bench/qwen2vl.ts, the default)
//   npm run bench -- --model qwen2-vl-7b ...    Qwen2-VL-7B's shapes (bench/qwen2vl.ts)
//   npm run bench -- --model idefics2-8b [--tiny|--build-only] ...   Idefics2-8B (bench/idefics2.ts)
//   npm run bench -- --model llama-3.2-11b-vision [--tiny|--build-only] ...   Llama-3.2-11B-Vision (bench/mllama.ts)
import { runIdefics2Bench } from "./idefics2.ts";
import { runMllamaBench } from "./mllama.ts";
import { runQwen2VLBench } from "./qwen2vl.ts";

const argv = process.argv.slice(2);
const i = argv.indexOf("--model");
const model = i >= 0 ? argv[i + 1] : "qwen2-vl-2b";
const rest = i >= 0 ? [...argv.slice(0, i), ...argv.slice(i + 2)] : argv;
if (model === "qwen2-vl-2b" || model === "qwen2-vl-7b") await runQwen2VLBench(rest, model);
else if (model === "idefics2-8b") await runIdefics2Bench(rest);
else if (model === "llama-3.2-11b-vision") await runMllamaBench(rest);
else {
  console.error(`unknown --model ${model}: qwen2-vl-2b, qwen2-vl-7b, idefics2-8b or llama-3.2-11b-vision`);
  process.exitCode = 2;
}
