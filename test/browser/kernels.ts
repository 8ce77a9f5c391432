// Runs the test/ops/*.cases.ts inside the browser on navigator.gpu and
// reports each result to the Playwright test through window.__report.
// ?every=N runs every N-th case of each file (its first always): Node runs every
// case, so the browser run checks each kernel on the browser's WebGPU without
// repeating the whole suite.
import { acquireGpu } from "../../src/gpu/device.ts";
import { runCase, type KernelCase } from "../util/cases.ts";

interface CaseReport {
  file: string;
  name: string;
  ok: boolean;
  detail: string;
}

declare global {
  interface Window {
    __report?: (r: CaseReport) => Promise<void>;
    __done?: (summary: { files: number; adapter: string; error?: string }) => Promise<void>;
  }
}

const log = document.getElementById("log")!;
// A case file may export browserEvery (e.g. 1: its cases are fast and browser-specific enough to run all).
const modules = import.meta.glob<{ cases: KernelCase[]; browserEvery?: number }>("../ops/*.cases.ts");
const filter = new URLSearchParams(location.search).get("cases");
const every = Math.max(1, Number(new URLSearchParams(location.search).get("every") ?? 1) || 1);

async function main(): Promise<void> {
  const gpu = await acquireGpu();
  const adapter = `${gpu.adapter.vendor} ${gpu.adapter.architecture} ${gpu.adapter.description} [${gpu.adapter.features.join(",")}]`;
  log.textContent += `adapter: ${adapter}\n`;
  const files = Object.keys(modules)
    .filter((f) => !filter || f.includes(filter))
    .sort();
  for (const file of files) {
    const { cases, browserEvery } = await modules[file]();
    const step = browserEvery ?? every;
    for (const c of cases.filter((_, i) => i % step === 0)) {
      let report: CaseReport;
      try {
        report = { file, name: c.name, ok: true, detail: await runCase(c, gpu) };
      } catch (e) {
        report = { file, name: c.name, ok: false, detail: String((e as Error).stack ?? e) };
      }
      log.textContent += `${report.ok ? "ok" : "FAIL"} ${file} ${c.name} ${report.detail}\n`;
      await window.__report?.(report);
    }
  }
  gpu.destroy();
  await window.__done?.({ files: files.length, adapter });
}

main().catch((e) => window.__done?.({ files: 0, adapter: "", error: String((e as Error).stack ?? e) }));
