import { defineConfig, type Plugin } from "vite";

/**
 * The embed example (public/embed.html) imports "./webvlm.js", the library build.
 * On the dev server that module re-exports the sources, so the same page works
 * under `npm start` and in dist/ after `npm run build`.
 */
function devLibraryModule(): Plugin {
  return {
    name: "webvlm-dev-library-module",
    apply: "serve",
    configureServer(server) {
      server.middlewares.use((req, res, next) => {
        if (req.url?.split("?")[0] !== "/webvlm.js") return next();
        res.setHeader("Content-Type", "text/javascript");
        res.end('export * from "/src/index.ts";\n');
      });
    },
  };
}

// The demo page is index.html; `?raw` imports bundle the WGSL kernels as text.
// The library build (dist/webvlm.js) is vite.lib.config.ts; scripts/build.mjs runs both.
export default defineConfig({
  base: "./",
  // No SPA fallback: a missing model file must be a 404, not index.html.
  appType: "mpa",
  server: { host: "127.0.0.1" },
  build: { target: "es2022", outDir: "dist" },
  worker: { format: "es" },
  plugins: [devLibraryModule()],
});
