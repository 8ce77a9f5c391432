#!/usr/bin/env node
// Makes a fresh Debian machine ready for `npm test`: npm packages, a Chromium
// (Playwright's own if installed, else Debian's, which ships SwiftShader for
// WebGPU without a GPU) and the Vulkan loader that Dawn in Node needs.
import { execSync } from "node:child_process";
import { existsSync } from "node:fs";

const run = (cmd) => execSync(cmd, { stdio: "inherit" });

if (!existsSync(new URL("../node_modules/.bin/tsx", import.meta.url))) {
  console.log("[ensure-test-env] installing npm packages");
  run("npm ci --no-audit --no-fund");
}

function hasVulkanLoader() {
  try {
    return execSync("ldconfig -p", { encoding: "utf8" }).includes("libvulkan.so.1");
  } catch {
    return false;
  }
}

const needChromium = !process.env.WEBVLM_CHROMIUM && !existsSync("/usr/bin/chromium");
const needVulkan = !hasVulkanLoader();
if (needChromium || needVulkan) {
  const pkgs = [needChromium && "chromium", needVulkan && "libvulkan1"].filter(Boolean).join(" ");
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (existsSync("/usr/bin/apt-get") && isRoot) {
    console.log(`[ensure-test-env] installing Debian packages: ${pkgs}`);
    run("apt-get update -qq");
    run(`DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${pkgs}`);
  } else {
    console.error(
      `[ensure-test-env] missing: ${pkgs}. Install them (Debian: apt-get install ${pkgs}), ` +
        "or set WEBVLM_CHROMIUM to a Chromium with WebGPU. Tests need a WebGPU adapter and never skip without one.",
    );
    process.exit(1);
  }
}
