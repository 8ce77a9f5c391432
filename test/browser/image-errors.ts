// Image input failures inside Chromium: cross-origin URLs and <img>s without CORS, bombs,
// endless bodies and aborts, CMYK JPEGs. ?x= is another origin (a server the Playwright
// test runs) with /nocors/* (no CORS headers) and /cors/* (Access-Control-Allow-Origin: *).
import { WebvlmError } from "../../src/api/errors.ts";
import { describeBrowserImageError, transferableBitmap } from "../../src/vision/decode_browser.ts";
import { loadImage } from "../../src/vision/load_image.ts";

interface Result {
  name: string;
  ok: boolean;
  detail: string;
}

declare global {
  interface Window {
    __imageErrorsDone?: (r: Result[]) => Promise<void>;
  }
}

const x = new URLSearchParams(location.search).get("x")!;
const results: Result[] = [];
const log = document.getElementById("log")!;

function record(name: string, ok: boolean, detail: string): void {
  results.push({ name, ok, detail });
  log.textContent += `${ok ? "ok  " : "FAIL"} ${name}: ${detail}\n`;
}

/** Runs p and checks it fails with a WebvlmError of this code whose message matches every pattern. */
async function expectError(name: string, p: () => Promise<unknown>, code: string, ...patterns: RegExp[]): Promise<void> {
  try {
    await p();
    record(name, false, "did not fail");
  } catch (e) {
    const typed = e instanceof WebvlmError;
    const msg = e instanceof Error ? e.message : String(e);
    const missing = patterns.filter((r) => !r.test(msg));
    const ok = typed && (e as WebvlmError).code === code && missing.length === 0;
    record(name, ok, `${typed ? (e as WebvlmError).code : (e as Error)?.name}: ${msg}${missing.length ? ` (missing ${missing.join(", ")})` : ""}`);
  }
}

async function loadedImg(src: string, crossOrigin?: string): Promise<HTMLImageElement> {
  const img = new Image();
  if (crossOrigin !== undefined) img.crossOrigin = crossOrigin;
  img.src = src;
  await img.decode();
  return img;
}

async function main(): Promise<void> {
  const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  await expectError("cross-origin URL without CORS", () => loadImage(`${x}/nocors/good.png`), "bad_request",
    new RegExp(esc(`${x}/nocors/good.png`)), /CORS/, /Access-Control-Allow-Origin/);

  const good = await loadImage(`${x}/cors/good.png`);
  record("cross-origin URL with CORS decodes", good.width === 40 && good.height === 30, `${good.width}x${good.height}`);

  const tainted = await loadedImg(`${x}/nocors/good.png`);
  await expectError("cross-origin <img> without CORS (in-thread decode)", () => loadImage(tainted, undefined, { label: "image 2" }),
    "bad_request", /image 2/, /crossorigin="anonymous"/, /nocors\/good\.png/);
  await expectError("cross-origin <img> without CORS (worker hand-off)", () => transferableBitmap(tainted, "image 2"),
    "bad_request", /image 2/, /crossorigin="anonymous"/);

  // What the worker proxy meets today: postMessage of a tainted bitmap is a raw DataCloneError.
  const bitmap = await createImageBitmap(tainted);
  try {
    new MessageChannel().port1.postMessage(bitmap, [bitmap]);
    record("tainted bitmap postMessage throws", false, "postMessage accepted a tainted bitmap");
  } catch (e) {
    const mapped = describeBrowserImageError(e, "image 2");
    record("tainted bitmap DataCloneError maps to bad_request", (e as Error).name === "DataCloneError" && mapped.code === "bad_request" && /CORS/.test(mapped.message),
      `${(e as Error).name} -> ${mapped.code}: ${mapped.message}`);
  }

  const cors = await loadedImg(`${x}/cors/good.png`, "anonymous");
  const fromImg = await loadImage(cors);
  record("<img crossorigin> with CORS decodes", fromImg.width === 40 && fromImg.height === 30, `${fromImg.width}x${fromImg.height}`);
  const moved = await transferableBitmap(cors, "image 1");
  record("<img crossorigin> with CORS hands off", moved.width === 40, `${moved.width}x${moved.height}`);

  await expectError("40000x40000 PNG by URL", () => loadImage(`${x}/cors/bomb.png`), "limit_exceeded", /40000x40000/, /maxPixels/);
  const bombBlob = await (await fetch(`${x}/cors/bomb.png`)).blob();
  await expectError("40000x40000 PNG as a Blob", () => loadImage(bombBlob, undefined, { label: "image 3" }), "limit_exceeded", /image 3/, /40000x40000/);

  await expectError("endless body over maxBytes", () => loadImage(`${x}/cors/endless`, undefined, { maxBytes: 2 << 20 }), "limit_exceeded",
    new RegExp(String(2 << 20)), /maxBytes/);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 300);
  await expectError("abort during an endless download", () => loadImage(`${x}/cors/endless`, ac.signal, { maxBytes: 1 << 30, label: "image 4" }),
    "aborted", /image 4/);

  const cmyk = await loadImage(`${x}/cors/cmyk.jpg`);
  const want = new Uint8Array(await (await fetch(`${x}/cors/cmyk.rgb`)).arrayBuffer());
  let max = 0;
  for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(want[i] - cmyk.rgb[i]));
  record("CMYK JPEG in Chromium vs PIL", cmyk.width === 53 && cmyk.height === 37 && max <= 1, `max difference ${max}`);

  const after = await loadImage(`${x}/cors/good.png`);
  record("a good image after all that", after.width === 40, `${after.width}x${after.height}`);
}

main()
  .catch((e) => record("page", false, String(e?.stack ?? e)))
  .finally(() => window.__imageErrorsDone?.(results));
