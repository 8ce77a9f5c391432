#!/usr/bin/env node
// Packs what `npm run bench` needs on a GPU machine that has no Node and no network
// (the `device` machines): .device/ holds node (xz), the webgpu package with only its
// linux-x64 dawn.node, the Vulkan loader, and the benchmark bundled into one file
// (vite SSR build: WGSL and the config inlined), node and dawn.node xz-compressed: about 30 MB. On the machine:
//   bash .device/run.sh [--tiny] [--formats q4,f16]   (the report lands in $OUT when set)
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, openSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { build } from "vite";

const root = new URL("../", import.meta.url).pathname;
const out = join(root, ".device");
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "node_modules/webgpu/dist"), { recursive: true });

await build({
  configFile: false,
  root,
  publicDir: false,
  logLevel: "warn",
  build: {
    ssr: "bench/model.ts",
    outDir: join(out, "bench"),
    emptyOutDir: true,
    target: "node20",
    rollupOptions: { external: ["webgpu"], output: { entryFileNames: "model.mjs" } },
  },
});

const wg = join(root, "node_modules/webgpu");
for (const f of ["package.json", "index.js"]) cpSync(join(wg, f), join(out, "node_modules/webgpu", f));
mkdirSync(join(out, "node_modules/webgpu/dist/linux-x64"));
const xz = (src, dst) => execFileSync("xz", ["-T0", "-6", "-c", src], { stdio: ["ignore", openSync(dst, "w"), "inherit"] });
xz(process.execPath, join(out, "node.xz"));
xz(join(wg, "dist/linux-x64/dawn.node"), join(out, "dawn.node.xz"));
const vulkan = ["/usr/lib/x86_64-linux-gnu/libvulkan.so.1", "/lib/x86_64-linux-gnu/libvulkan.so.1"].find((p) => existsSync(p));
if (!vulkan) throw new Error("libvulkan.so.1 not found: apt-get install libvulkan1");
mkdirSync(join(out, "lib"));
cpSync(vulkan, join(out, "lib/libvulkan.so.1"), { dereference: true });
writeFileSync(join(out, "run.sh"), `#!/bin/bash
# Runs the packed benchmark with the machine's Vulkan driver (NVIDIA ICD when present).
set -e
here="$(cd "$(dirname "$0")" && pwd)"
dawn="$here/node_modules/webgpu/dist/linux-x64/dawn.node"
[ -x "$here/node" ] || { xz -d -c "$here/node.xz" > "$here/node" && chmod +x "$here/node"; }
[ -f "$dawn" ] || xz -d -c "$here/dawn.node.xz" > "$dawn"
export LD_LIBRARY_PATH="$here/lib:\${LD_LIBRARY_PATH:-}"
if [ -z "\${VK_ICD_FILENAMES:-}" ]; then
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_ICD_FILENAMES="$icd" && break
  done
fi
if [ -z "\${VK_ICD_FILENAMES:-}" ]; then
  # No ICD file installed: point the loader at the driver's Vulkan library directly.
  lib="$(ls /usr/local/nvidia/lib64/libGLX_nvidia.so.0 /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 2>/dev/null | head -1 || true)"
  if [ -n "$lib" ]; then
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3"}}' "$lib" > "$here/nvidia_icd.json"
    export VK_ICD_FILENAMES="$here/nvidia_icd.json"
  fi
fi
cd "$here"
out="\${OUT:-$here/results}"
mkdir -p "$out"
./node bench/model.mjs "$@" --out "$out/model$([[ " $* " == *" --tiny "* ]] && echo -tiny).json"
`);
execFileSync("chmod", ["+x", join(out, "run.sh")]);
console.log(execFileSync("du", ["-sh", out], { encoding: "utf8" }).trim());
