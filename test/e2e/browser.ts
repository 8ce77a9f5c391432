// Shared Playwright setup: a Chromium with WebGPU and a Vite server over the repo.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium, type Browser } from "playwright-core";
import { createServer, type ViteDevServer } from "vite";

export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

/**
 * Which Chromium to drive: WEBVLM_CHROMIUM if set, else Playwright's own
 * browser when one is installed, else Debian's /usr/bin/chromium.
 */
export function chromiumPath(): string {
  const fromEnv = process.env.WEBVLM_CHROMIUM;
  if (fromEnv) return fromEnv;
  try {
    const own = chromium.executablePath();
    if (own && existsSync(own)) return own;
  } catch {
    // Playwright has no browser of its own here.
  }
  if (existsSync("/usr/bin/chromium")) return "/usr/bin/chromium";
  throw new Error(
    "No Chromium found. Install Debian's chromium (apt-get install chromium), or `npx playwright install chromium`, " +
      "or set WEBVLM_CHROMIUM to a Chromium binary.",
  );
}

export const WEBGPU_FLAGS = [
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--enable-features=Vulkan,WebGPUDeveloperFeatures",
  "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader",
  "--disable-vulkan-surface",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
];

export async function launchChromium(extraArgs: string[] = []): Promise<Browser> {
  // A real GPU's adapter is preferred when present; SwiftShader flags only where none is.
  const software = !existsSync("/dev/nvidia0") && !existsSync("/dev/dri/renderD128");
  const args = software ? [...WEBGPU_FLAGS, ...extraArgs] : ["--no-sandbox", "--enable-unsafe-webgpu", ...extraArgs];
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args });
}

export async function startViteServer(): Promise<{ server: ViteDevServer; url: string }> {
  const server = await createServer({
    root: repoRoot,
    configFile: new URL("../../vite.config.ts", import.meta.url).pathname,
    logLevel: "warn",
    server: { host: "127.0.0.1", port: 0, strictPort: false, hmr: false },
    optimizeDeps: { noDiscovery: true, include: [] },
  });
  await server.listen();
  const address = server.httpServer?.address();
  if (!address || typeof address === "string") throw new Error("vite server has no address");
  return { server, url: `http://127.0.0.1:${address.port}` };
}
