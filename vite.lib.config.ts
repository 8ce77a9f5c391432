import { defineConfig } from "vite";

// The library build: dist/webvlm.js (ES module, every dependency bundled, no bare
// imports) and its worker chunk in dist/assets/, loaded relative to webvlm.js so the
// pair works from any path of a static host. Runs after the demo build (vite.config.ts).
export default defineConfig({
  base: "./",
  publicDir: false,
  build: {
    target: "es2022",
    outDir: "dist",
    emptyOutDir: false,
    copyPublicDir: false,
    sourcemap: true,
    lib: { entry: "src/index.ts", formats: ["es"], fileName: () => "webvlm.js" },
  },
  // Its own name, so it never collides with the demo bundle's copy of the worker.
  worker: { format: "es", rollupOptions: { output: { entryFileNames: "assets/webvlm-worker-[hash].js" } } },
});
