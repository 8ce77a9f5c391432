// Loads a model from ?model=<url> with the in-thread engine on navigator.gpu, asks one
// question about ?image=<url>, and hands the streamed answer to the Playwright test.
import { Engine } from "../../src/engine/engine.ts";

declare global {
  interface Window {
    __engineDone?: (r: { text?: string; chunks?: number; finish?: string | null; usage?: unknown; lostCode?: string; afterReload?: string; error?: string }) => Promise<void>;
  }
}

const params = new URLSearchParams(location.search);
const log = document.getElementById("log")!;

async function main(): Promise<void> {
  const engine = await Engine.create();
  await engine.load(params.get("model")!, { quantization: "f32", embedding: "f32", vision: "f32" });
  log.textContent += "loaded\n";
  const stream = await engine.chat.completions.create({
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: params.get("image")! } }, { type: "text", text: params.get("q")! }] }],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number(params.get("max") ?? 8),
    temperature: 0,
  });
  let text = "";
  let chunks = 0;
  let finish: string | null = null;
  let usage: unknown;
  for await (const c of stream) {
    if (c.choices[0]?.delta.content) {
      text += c.choices[0].delta.content;
      chunks++;
    }
    finish = c.choices[0]?.finish_reason ?? finish;
    if (c.usage) usage = c.usage;
  }
  log.textContent += text;

  // Device loss: typed error, then a reload on a new device answers the same.
  const request = { messages: [{ role: "user" as const, content: [{ type: "image_url" as const, image_url: { url: params.get("image")! } }, { type: "text" as const, text: params.get("q")! }] }], max_tokens: Number(params.get("max") ?? 8), temperature: 0, stream: false as const };
  const lost = engine.gpu;
  lost.device.destroy();
  await lost.lost;
  let lostCode = "";
  try {
    await engine.chat.completions.create(request);
  } catch (e) {
    lostCode = (e as { code?: string }).code ?? String(e);
  }
  await engine.load(params.get("model")!, { quantization: "f32", embedding: "f32", vision: "f32" });
  const afterReload = (await engine.chat.completions.create(request)).choices[0].message.content;
  await window.__engineDone?.({ text, chunks, finish, usage, lostCode, afterReload });
}

main().catch((e: unknown) => window.__engineDone?.({ error: String((e as Error).stack ?? e) }));
