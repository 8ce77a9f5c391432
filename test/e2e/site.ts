// The built static site (npm run build -> dist/) served by a plain static file
// server under a sub-path, as a static host would serve it.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { symlink, mkdtemp, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StaticServer } from "../util/static_server.ts";
import { repoRoot } from "./browser.ts";

/**
 * A strict Content-Security-Policy: no eval, no inline script on the demo page,
 * workers and fetches from the same origin only. The library must run under it.
 */
export const STRICT_CSP =
  "default-src 'self'; script-src 'self'; worker-src 'self'; connect-src 'self'; img-src 'self' blob: data:; style-src 'self'";

/**
 * STRICT_CSP plus the hash of public/embed.html's one inline module script: a page
 * that embeds webvlm can keep a strict policy and allow only its own script.
 */
export function embedCsp(): string {
  const html = readFileSync(join(repoRoot, "public/embed.html"), "utf8");
  const script = /<script type="module">([\s\S]*?)<\/script>/.exec(html);
  if (!script) throw new Error("public/embed.html has no inline module script");
  const hash = createHash("sha256").update(script[1]!).digest("base64");
  return STRICT_CSP.replace("script-src 'self'", `script-src 'self' 'sha256-${hash}'`);
}

/** Runs `npm run build` (scripts/build.mjs) and returns dist/. */
export function buildSite(): string {
  execFileSync(process.execPath, [join(repoRoot, "scripts/build.mjs")], { cwd: repoRoot, stdio: ["ignore", "ignore", "inherit"] });
  return join(repoRoot, "dist");
}

export interface ServedSite {
  server: StaticServer;
  /** The site's URL, ending in "/": http://127.0.0.1:PORT/hosted/webvlm/ */
  url: string;
  close(): Promise<void>;
}

/** Serves `dist` at /hosted/webvlm/ (a sub-path, so absolute asset paths would break). */
export async function serveSite(dist: string, headers?: Record<string, string>): Promise<ServedSite> {
  const root = await mkdtemp(join(tmpdir(), "webvlm-site-"));
  await mkdir(join(root, "hosted"));
  await symlink(dist, join(root, "hosted", "webvlm"));
  const server = await StaticServer.start({ root, headers });
  return {
    server,
    url: server.url("hosted/webvlm"),
    async close() {
      await server.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}
