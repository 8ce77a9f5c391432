import { defineConfig } from "vite";

// The demo page is index.html; `?raw` imports bundle the WGSL kernels as text.
export default defineConfig({
  base: "./",
  // No SPA fallback: a missing model file must be a 404, not index.html.
  appType: "mpa",
  server: { host: "127.0.0.1" },
  build: { target: "es2022", outDir: "dist" },
  worker: { format: "es" },
});
