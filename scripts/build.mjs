#!/usr/bin/env node
// `npm run build`: the static site in dist/ — the demo (dist/index.html), the
// library (dist/webvlm.js + dist/assets/webvlm-worker-*.js + dist/webvlm.d.ts),
// the embed example (dist/embed.html) and the tiny test model (dist/models/),
// all with relative paths so dist/ works from any sub-path of a static host.
import { execFileSync } from "node:child_process";
import { readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "vite";

const root = new URL("../", import.meta.url).pathname;
const dist = join(root, "dist");
process.chdir(root);

await import("./prepare-demo.mjs");
await rm(dist, { recursive: true, force: true });
await build({ configFile: join(root, "vite.config.ts"), logLevel: "warn" });
await build({ configFile: join(root, "vite.lib.config.ts"), logLevel: "warn" });

// Declarations: tsc writes dist/types/**.d.ts; their relative "./x.ts" specifiers
// become "./x.js" so a consumer's TypeScript (any moduleResolution) finds the .d.ts.
execFileSync(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"], { stdio: "inherit" });
for (const file of await walk(join(dist, "types"))) {
  if (!file.endsWith(".d.ts")) continue;
  const text = await readFile(file, "utf8");
  const fixed = text.replace(/(from\s+|import\()(["'])(\.{1,2}\/[^"']+?)\.ts\2/g, "$1$2$3.js$2");
  if (fixed !== text) await writeFile(file, fixed);
}
await writeFile(join(dist, "webvlm.d.ts"), 'export * from "./types/index.js";\n');

console.log("dist/: index.html (demo), embed.html, webvlm.js (+ worker chunk, webvlm.d.ts), models/");

async function walk(dir) {
  const out = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}
