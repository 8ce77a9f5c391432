// One image question through the worker-backed engine, streamed, with logprobs: the page any
// family's Chromium check loads (?model= checkpoint URL, ?image= same-origin path, ?q=, ?max=).
import { createEngine } from "../../src/engine/create.ts";

export interface WorkerAnswer {
  family?: string;
  streamed?: string;
  tokens?: number;
  finish?: string | null;
  /** The chosen tokens' logprobs, in order. */
  logprobs?: number[];
  /** Where the worker preprocessed the image (usage.preprocess_device). */
  preprocessDevice?: string;
  error?: string;
}

declare global {
  interface Window {
    __answerDone?: (r: WorkerAnswer) => Promise<void>;
  }
}

const params = new URLSearchParams(location.search);

async function main(): Promise<WorkerAnswer> {
  const engine = await createEngine({ worker: true });
  try {
    const info = await engine.load({ baseUrl: params.get("model")! }, { quantization: "f32", embedding: "f32", vision: "f32" });
    const image = new URL(params.get("image")!, location.href).href;
    const messages = [{ role: "user" as const, content: [{ type: "image_url" as const, image_url: { url: image } }, { type: "text" as const, text: params.get("q")! }] }];
    let streamed = "";
    let finish: string | null = null;
    const logprobs: number[] = [];
    let preprocessDevice: string | undefined;
    const stream = await engine.chat.completions.create({
      messages, max_tokens: Number(params.get("max")), temperature: 0, stream: true, logprobs: true, stream_options: { include_usage: true },
    });
    for await (const c of stream) {
      preprocessDevice = c.usage?.preprocess_device ?? preprocessDevice;
      streamed += c.choices[0]?.delta.content ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
      for (const lp of c.choices[0]?.logprobs?.content ?? []) logprobs.push(lp.logprob);
    }
    return { family: info.family, streamed, finish, logprobs, tokens: logprobs.length, preprocessDevice };
  } finally {
    await engine.terminate();
  }
}

main().then(
  (r) => window.__answerDone?.(r),
  (e: unknown) => window.__answerDone?.({ error: String((e as Error).stack ?? e) }),
);
