#!/usr/bin/env node
// webvlm command line. `webvlm info` prints the WebGPU adapter Node sees and
// runs the kernel self-check; chat/run commands come with the model runtime.
import "./register-loaders.mjs";

const [command = "info"] = process.argv.slice(2);
if (command !== "info") {
  console.error(`unknown command: ${command}\nusage: webvlm info`);
  process.exit(2);
}
const { acquireNodeGpu } = await import("../src/gpu/node.ts");
const { selfCheck } = await import("../src/gpu/selfcheck.ts");
const gpu = await acquireNodeGpu();
console.log(JSON.stringify({ adapter: gpu.adapter, selfCheck: await selfCheck(gpu) }, null, 2));
gpu.destroy();
