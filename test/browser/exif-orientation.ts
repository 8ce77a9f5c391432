// EXIF orientation in Chromium vs Node (test/e2e/exif-orientation-in-chromium.test.ts): each
// case's bytes go through loadImage as a Uint8Array, an ArrayBuffer, a Blob, a File and a blob:
// URL, with exifOrientation false and true, and must give Node's pixels (sent by the test).
// It also records what plain createImageBitmap does with the same Blob, for the report.
import { loadImage } from "../../src/vision/load_image.ts";

export interface ExifCase {
  name: string;
  type: string;
  bytes: string; // base64
  /** Node's loadImage result per exifOrientation setting: [width, height, base64 RGB]. */
  node: { plain: [number, number, string]; oriented: [number, number, string] };
  /** Largest per-channel difference accepted (see the e2e test for why any is). */
  tolerance: number;
  /** loadImage's alphaBackground, for the case with alpha. */
  alphaBackground?: [number, number, number];
}

interface Result {
  name: string;
  ok: boolean;
  detail: string;
}

declare global {
  interface Window {
    __exifCases?: () => Promise<ExifCase[]>;
    __exifDone?: (r: Result[]) => Promise<void>;
  }
}

const results: Result[] = [];
const log = document.getElementById("log")!;

function record(name: string, ok: boolean, detail: string): void {
  results.push({ name, ok, detail });
  log.textContent += `${ok ? "ok  " : "FAIL"} ${name}: ${detail}\n`;
}

function unbase64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** What Chromium does by itself: the size and first pixel of createImageBitmap(blob). */
async function browserOwn(blob: Blob, imageOrientation?: string): Promise<string> {
  const opts: ImageBitmapOptions = { premultiplyAlpha: "none", colorSpaceConversion: "none" };
  if (imageOrientation) (opts as Record<string, unknown>).imageOrientation = imageOrientation;
  const b = await createImageBitmap(blob, opts);
  const ctx = new OffscreenCanvas(b.width, b.height).getContext("2d")!;
  ctx.drawImage(b, 0, 0);
  const p = ctx.getImageData(0, 0, 1, 1).data;
  const size = `${b.width}x${b.height}`;
  b.close();
  return `${size} (${p[0]},${p[1]},${p[2]})`;
}

async function main(): Promise<void> {
  const cases = (await window.__exifCases?.()) ?? [];
  for (const c of cases) {
    const bytes = unbase64(c.bytes);
    const blob = new Blob([bytes as BlobPart], { type: c.type });
    const url = URL.createObjectURL(blob);
    const sources: [string, () => unknown][] = [
      ["bytes", () => bytes],
      ["ArrayBuffer", () => bytes.slice().buffer],
      ["Blob", () => blob],
      ["File", () => new File([bytes as BlobPart], c.name, { type: c.type })],
      ["untyped Blob", () => new Blob([bytes as BlobPart])],
      ["blob: URL", () => url],
    ];
    record(`${c.name} createImageBitmap by itself`, true,
      `default ${await browserOwn(blob)}, imageOrientation "none" ${await browserOwn(blob, "none")}; ` +
        `Node stored ${c.node.plain[0]}x${c.node.plain[1]}, oriented ${c.node.oriented[0]}x${c.node.oriented[1]}`);
    for (const exifOrientation of [false, true]) {
      const [w, h, rgb64] = exifOrientation ? c.node.oriented : c.node.plain;
      const want = unbase64(rgb64);
      for (const [kind, source] of sources) {
        const name = `${c.name} as ${kind}, exifOrientation ${exifOrientation}`;
        try {
          const got = await loadImage(source(), undefined, { exifOrientation, alphaBackground: c.alphaBackground });
          let max = 0;
          if (got.rgb.length === want.length) for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(got.rgb[i] - want[i]));
          const sameSize = got.width === w && got.height === h && got.rgb.length === want.length;
          record(name, sameSize && max <= c.tolerance, `${got.width}x${got.height} (Node ${w}x${h}), max difference ${sameSize ? max : "n/a"}`);
        } catch (e) {
          record(name, false, String((e as Error)?.stack ?? e));
        }
      }
    }
    URL.revokeObjectURL(url);
  }
}

main()
  .catch((e) => record("page", false, String(e?.stack ?? e)))
  .finally(() => window.__exifDone?.(results));
