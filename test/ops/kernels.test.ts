// Runs every test/ops/*.cases.ts on the Node WebGPU adapter (Dawn; SwiftShader without a GPU).
import { after, before, describe, test } from "node:test";
import { readdirSync } from "node:fs";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import type { GpuContext } from "../../src/gpu/device.ts";
import { runCase, type KernelCase } from "../util/cases.ts";

const dir = new URL("./", import.meta.url);
const only = process.env.WEBVLM_CASES; // optional filter: substring of the file name
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".cases.ts") && (!only || f.includes(only)))
  .sort();
if (files.length === 0) throw new Error("no kernel case files found");

let gpu: GpuContext;
before(async () => {
  gpu = await acquireNodeGpu();
  console.log(`adapter: ${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description}; features: ${gpu.adapter.features.join(", ")}`);
});
after(() => gpu?.destroy());

for (const file of files) {
  const { cases } = (await import(new URL(file, dir).href)) as { cases: KernelCase[] };
  if (!cases?.length) throw new Error(`${file} exports no cases`);
  describe(file.replace(".cases.ts", ""), () => {
    for (const c of cases) {
      test(c.name, async (t) => {
        const measured = await runCase(c, gpu);
        t.diagnostic(measured);
      });
    }
  });
}
