// The demo uses only the public API, like any embedder.
import { acquireGpu, selfCheck, isWebvlmError } from "../src/index.ts";

const adapterEl = document.getElementById("adapter")!;
const checksBody = document.querySelector("#checks tbody")!;

function row(cells: string[], cls?: string): HTMLTableRowElement {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  if (cls) tr.className = cls;
  return tr;
}

async function main(): Promise<void> {
  if (!("gpu" in navigator)) {
    adapterEl.textContent =
      "This browser has no WebGPU. Use a recent Chrome, Edge or another Chromium-based browser (on Linux start it with --enable-unsafe-webgpu), Safari 26+, or Firefox 141+ on Windows.";
    return;
  }
  try {
    const gpu = await acquireGpu();
    const a = gpu.adapter;
    const dl = document.createElement("dl");
    const entries: [string, string][] = [
      ["adapter", `${a.vendor} ${a.architecture} ${a.description}`.trim()],
      ["features", a.features.join(", ") || "none of shader-f16, subgroups, timestamp-query"],
      ...Object.entries(a.limits).map(([k, v]): [string, string] => [k, v.toLocaleString()]),
    ];
    for (const [k, v] of entries) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
    adapterEl.replaceChildren(dl);
    for (const r of await selfCheck(gpu)) {
      checksBody.append(row([r.name, r.ok ? "ok" : "MISMATCH", r.relError.toExponential(2), r.ms.toFixed(1)], r.ok ? "ok" : "fail"));
    }
  } catch (e) {
    adapterEl.textContent = isWebvlmError(e) ? `${e.code}: ${e.message}` : String(e);
  }
}

void main();
