#!/usr/bin/env node
// Packs what `npm run bench` needs on a GPU machine that has no Node and no network
// (the `device` machines): .device/ holds node (xz), the webgpu package with only its
// linux-x64 dawn.node, the Vulkan loader, and the benchmark bundled into one file
// (vite SSR build: WGSL and the config inlined), node and dawn.node xz-compressed: about 30 MB. On the machine:
//   bash .device/run.sh [--tiny] [--formats q4,f16]   (the report lands in $OUT when set)
//   bash .device/run.sh --model idefics2-8b [--tiny|--build-only]   (Idefics2-8B shapes)
//   bash .device/run.sh --model llama-3.2-11b-vision [--tiny|--build-only]   (Llama-3.2-11B-Vision shapes)
//   bash .device/run.sh kernels [--full]               (kernel benchmark)
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, openSync, rmSync, writeFileSync } from "node:fs";
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
    ssr: true,
    outDir: join(out, "bench"),
    emptyOutDir: true,
    target: "node20",
    rollupOptions: {
      input: { model: "bench/model.ts", kernels: "bench/kernels.ts" },
      external: ["webgpu"],
      output: { entryFileNames: "[name].mjs" },
    },
  },
});

const wg = join(root, "node_modules/webgpu");
for (const f of ["package.json", "index.js"]) cpSync(join(wg, f), join(out, "node_modules/webgpu", f));
mkdirSync(join(out, "node_modules/webgpu/dist/linux-x64"));
const xz = (src, dst) => execFileSync("xz", ["-T0", "-6", "-c", src], { stdio: ["ignore", openSync(dst, "w"), "inherit"] });
xz(process.execPath, join(out, "node.xz"));
xz(join(wg, "dist/linux-x64/dawn.node"), join(out, "dawn.node.xz"));
// The Vulkan loader and the GL-vendor-neutral dispatch libraries NVIDIA's Vulkan driver
// (libGLX_nvidia.so.0) needs but a bare CUDA image lacks: Debian's amd64 packages, unpacked.
const debs = join(out, "debs");
mkdirSync(join(out, "lib"));
mkdirSync(join(debs, "partial"), { recursive: true });
const apt = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64", `-oDir::State::Lists=${debs}`];
execFileSync("apt-get", [...apt, "update"], { stdio: "ignore" });
execFileSync("apt-get", [...apt, "download", "libvulkan1", "libglvnd0", "libglx0", "libegl1"], { cwd: debs, stdio: "ignore" });
for (const deb of execFileSync("sh", ["-c", `ls ${debs}/*.deb`], { encoding: "utf8" }).trim().split("\n")) {
  execFileSync("dpkg", ["-x", deb, join(debs, "root")]);
}
execFileSync("sh", ["-c", `cp -a ${debs}/root/usr/lib/x86_64-linux-gnu/*.so* ${join(out, "lib")}/`]);
rmSync(debs, { recursive: true, force: true });
writeFileSync(join(out, "run.sh"), `#!/bin/bash
# Runs the packed benchmark with the machine's Vulkan driver (NVIDIA ICD when present).
set -e
here="$(cd "$(dirname "$0")" && pwd)"
dawn="$here/node_modules/webgpu/dist/linux-x64/dawn.node"
# xz, or Python's lzma where the machine has no xz.
unxz_to() { if command -v xz >/dev/null; then xz -d -c "$1" > "$2"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi; }
[ -x "$here/node" ] || { unxz_to "$here/node.xz" "$here/node" && chmod +x "$here/node"; }
[ -f "$dawn" ] || unxz_to "$here/dawn.node.xz" "$dawn"
export LD_LIBRARY_PATH="$here/lib:\${LD_LIBRARY_PATH:-}"
if [ -z "\${VK_ICD_FILENAMES:-}" ]; then
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
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
if [ "\${1:-}" = "kernels" ]; then
  shift
  ./node bench/kernels.mjs "$@" --out "$out/kernels.json"
else
  # Report name: model[-tiny] (Qwen2-VL), idefics2-8b[-build][-tiny] (--model idefics2-8b).
  args=" $* "
  name=model
  if [[ "$args" == *" --model idefics2-8b "* ]]; then
    name=idefics2-8b
    [[ "$args" == *" --build-only "* ]] && name="$name-build"
  elif [[ "$args" == *" --model llama-3.2-11b-vision "* ]]; then
    name=llama-3.2-11b-vision
    [[ "$args" == *" --build-only "* ]] && name="$name-build"
  fi
  [[ "$args" == *" --tiny "* ]] && name="$name-tiny"
  ./node bench/model.mjs "$@" --out "$out/$name.json"
fi
`);
execFileSync("chmod", ["+x", join(out, "run.sh")]);
console.log(execFileSync("du", ["-sh", out], { encoding: "utf8" }).trim());
