// Lets Node run the same sources Vite serves: TypeScript through tsx, and
// `*.wgsl?raw` imports as the file's text (Vite's `?raw` semantics).
import { register } from "node:module";
import { register as registerTsx } from "tsx/esm/api";

registerTsx();
register("./raw-loader-hooks.mjs", import.meta.url);
