// A local static file server for loader tests: Range (206 / Content-Range /
// 416), HEAD, ETag / If-None-Match / If-Range, CORS, a per-request log with
// the body bytes actually sent, and fault injection (404s, error statuses,
// connections dropped mid-body, servers that ignore Range). It also answers
// the hub layout /{owner}/{name}/resolve/{revision}/{file}, so hub ids can be
// tested by pointing the hub base URL at it. Binds 127.0.0.1 on a free port.
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join, normalize, sep } from "node:path";

export interface RequestLog {
  method: string;
  /** URL path as requested (decoded). */
  path: string;
  /** The file served, relative to its directory ("model.safetensors"); "" when none. */
  file: string;
  range?: string;
  status: number;
  /** Body bytes written to the socket for this request. */
  bytes: number;
  /** True when the connection was cut on purpose. */
  dropped?: boolean;
}

/** Matches a request: exact URL path, or a predicate. */
export type PathMatch = string | ((path: string) => boolean);

export interface StaticServerOptions {
  /** Served at "/" (static layout). */
  root?: string;
  /**
   * Hub layout: repo id ("owner/name", any revision, or "owner/name@rev" for
   * one revision) -> directory. /{repo}/resolve/{rev}/{file} serves dir/file.
   */
  repos?: Record<string, string>;
  /** Extra headers on every file response (e.g. a Content-Security-Policy). */
  headers?: Record<string, string>;
}

export interface DropRule {
  match: PathMatch;
  /** Cut the connection when the body reaches this absolute file offset. */
  atByte: number;
  /** How many responses to cut (default 1; Infinity for all). */
  times?: number;
}

export interface FailRule {
  match: PathMatch;
  status: number;
  /** How many requests get the status (default Infinity). */
  times?: number;
  headers?: Record<string, string>;
}

const TYPES: Record<string, string> = {
  json: "application/json",
  jinja: "text/plain; charset=utf-8",
  txt: "text/plain; charset=utf-8",
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  map: "application/json",
  png: "image/png",
  ts: "text/plain; charset=utf-8",
};

function matches(m: PathMatch, path: string): boolean {
  return typeof m === "string" ? m === path : m(path);
}

export class StaticServer {
  readonly log: RequestLog[] = [];
  /** Answer 404 for these paths even when the file exists. */
  notFound: PathMatch[] = [];
  drops: DropRule[] = [];
  fails: FailRule[] = [];
  /** Answer Range requests with 200 and the whole file (a server without Range support). */
  ignoreRange = false;
  private server!: Server;
  private port = 0;

  constructor(private readonly opts: StaticServerOptions) {}

  static async start(opts: StaticServerOptions): Promise<StaticServer> {
    const s = new StaticServer(opts);
    s.server = createServer((req, res) => {
      s.handle(req, res).catch((e: unknown) => {
        if (!res.headersSent) res.writeHead(500).end(String(e));
        else res.destroy();
      });
    });
    await new Promise<void>((resolve) => s.server.listen(0, "127.0.0.1", resolve));
    s.port = (s.server.address() as AddressInfo).port;
    return s;
  }

  /** "http://127.0.0.1:PORT" (no trailing slash): a hub base URL. */
  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Static base URL of a sub-directory of root ("" for root), ending in "/". */
  url(sub = ""): string {
    return `${this.origin}/${sub ? sub.replace(/^\/+|\/+$/g, "") + "/" : ""}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  resetLog(): void {
    this.log.length = 0;
  }

  /** Log entries whose served file name (or path) satisfies `pred`. */
  requestsFor(pred: (e: RequestLog) => boolean): RequestLog[] {
    return this.log.filter(pred);
  }

  /** Maps a URL path to a file on disk and its name, or undefined. */
  private locate(path: string): { disk: string; file: string } | undefined {
    const hub = /^\/(.+?)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    if (hub && this.opts.repos) {
      const [, repo, rev, file] = hub;
      const dir = this.opts.repos[`${repo}@${rev}`] ?? this.opts.repos[repo];
      if (dir) return this.safe(dir, file);
    }
    if (this.opts.root) return this.safe(this.opts.root, path.replace(/^\/+/, ""));
    return undefined;
  }

  private safe(dir: string, file: string): { disk: string; file: string } | undefined {
    const disk = normalize(join(dir, file));
    if (!disk.startsWith(normalize(dir) + sep) || file.split("/").includes("..")) return undefined;
    return { disk, file };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? "GET";
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const range = req.headers.range;
    const entry: RequestLog = { method, path, file: "", range, status: 0, bytes: 0 };
    this.log.push(entry);
    res.setHeader("Access-Control-Allow-Origin", "*");
    res.setHeader("Access-Control-Expose-Headers", "Content-Range, Content-Length, ETag, Accept-Ranges, X-Error-Code");
    const finish = (status: number, body = "", headers: Record<string, string> = {}): void => {
      entry.status = status;
      res.writeHead(status, { "Content-Type": "text/plain", ...headers });
      entry.bytes = method === "HEAD" ? 0 : Buffer.byteLength(body);
      res.end(method === "HEAD" ? undefined : body);
    };
    if (method === "OPTIONS") {
      return finish(204, "", { "Access-Control-Allow-Headers": "Range, If-Range, If-None-Match, Authorization", "Access-Control-Allow-Methods": "GET, HEAD" });
    }
    if (method !== "GET" && method !== "HEAD") return finish(405, "method not allowed");
    const fail = this.fails.find((f) => matches(f.match, path) && (f.times ?? Infinity) > 0);
    if (fail) {
      fail.times = (fail.times ?? Infinity) - 1;
      return finish(fail.status, `injected ${fail.status}`, fail.headers);
    }
    // Like any static host: a directory URL serves its index.html.
    const loc = this.locate(path.endsWith("/") ? `${path}index.html` : path);
    if (!loc || this.notFound.some((m) => matches(m, path))) return finish(404, "not found", { "X-Error-Code": "EntryNotFound" });
    entry.file = loc.file;
    let st;
    try {
      st = await stat(loc.disk);
    } catch {
      return finish(404, "not found", { "X-Error-Code": "EntryNotFound" });
    }
    if (!st.isFile()) return finish(404, "not a file");
    const size = st.size;
    const etag = `"${size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
    const ext = loc.file.split(".").pop() ?? "";
    const headers: Record<string, string> = {
      "Content-Type": TYPES[ext] ?? "application/octet-stream",
      "Accept-Ranges": this.ignoreRange ? "none" : "bytes",
      ETag: etag,
      ...this.opts.headers,
    };
    if (req.headers["if-none-match"] === etag && !range) return finish(304, "", { ETag: etag });

    let start = 0;
    let end = size - 1;
    let status = 200;
    const ifRange = req.headers["if-range"];
    if (range && !this.ignoreRange && (ifRange === undefined || ifRange === etag)) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m && (m[1] !== "" || m[2] !== "")) {
        if (m[1] === "") {
          start = Math.max(0, size - Number(m[2])); // suffix range: the last n bytes
        } else {
          start = Number(m[1]);
          if (m[2] !== "") end = Math.min(end, Number(m[2]));
        }
        if (start >= size || (m[1] !== "" && m[2] !== "" && Number(m[2]) < start)) {
          return finish(416, "range not satisfiable", { "Content-Range": `bytes */${size}`, ETag: etag });
        }
        status = 206;
        headers["Content-Range"] = `bytes ${start}-${end}/${size}`;
      }
      // Malformed or multi-range: ignore the header and send the whole file, as RFC 9110 allows.
    }
    const length = Math.max(0, end - start + 1);
    headers["Content-Length"] = String(length);
    entry.status = status;
    res.writeHead(status, headers);
    if (method === "HEAD" || length === 0) {
      res.end();
      return;
    }
    const drop = this.drops.find((d) => matches(d.match, path) && (d.times ?? 1) > 0 && d.atByte > start && d.atByte <= end);
    const last = drop ? drop.atByte - 1 : end;
    if (drop) drop.times = (drop.times ?? 1) - 1;
    await new Promise<void>((resolve) => {
      const stream = createReadStream(loc.disk, { start, end: last });
      stream.on("data", (chunk) => {
        entry.bytes += (chunk as Buffer).length;
      });
      stream.on("error", () => {
        res.destroy();
        resolve();
      });
      // A client that stops reading (cancelled body) closes the socket: stop reading the file.
      res.on("close", () => {
        stream.destroy();
        resolve();
      });
      if (drop) {
        stream.pipe(res, { end: false });
        stream.on("end", () => {
          entry.dropped = true;
          // Flush what was written, then cut the connection mid-body.
          res.write("", () => res.socket?.destroy());
        });
      } else {
        stream.pipe(res);
      }
    });
  }
}
