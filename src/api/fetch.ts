// An OpenAI-compatible HTTP surface without a server: a fetch function that answers
// /v1/chat/completions and /v1/models from an engine, so the official `openai` client
// runs unchanged: new OpenAI({ apiKey: "local", baseURL: "http://webvlm.local/v1", fetch: engine.fetch }).
import { WebvlmError, type WebvlmErrorCode } from "./errors.ts";
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from "./types.ts";

/** What the adapter needs from an engine. */
export interface ChatBackend {
  readonly chat: {
    readonly completions: {
      create(req: ChatCompletionRequest): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
    };
  };
  readonly model: { id: string } | null;
}

const STATUS: Partial<Record<WebvlmErrorCode, number>> = {
  bad_request: 400,
  image_decode_failed: 400,
  image_too_small: 400,
  aspect_ratio_too_large: 400,
  context_length_exceeded: 400,
  model_not_found: 404,
  aborted: 499,
  quota_exceeded: 507,
  device_lost: 503,
};

function errorResponse(e: unknown): Response {
  const err = e instanceof WebvlmError ? e : new WebvlmError("internal", String((e as Error)?.message ?? e));
  const status = STATUS[err.code] ?? 500;
  const body = { error: { message: err.message, type: status < 500 ? "invalid_request_error" : "server_error", code: err.code, param: err.details?.param ?? null } };
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

/**
 * The SSE body of a stream whose first step `first` has already been taken (so that errors found
 * before the first chunk became an HTTP error status instead of an error event).
 */
function sse(it: AsyncIterator<ChatCompletionChunk>, first: IteratorResult<ChatCompletionChunk>): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  let head: IteratorResult<ChatCompletionChunk> | null = first;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const r = head ?? (await it.next());
        head = null;
        if (r.done) {
          controller.enqueue(enc.encode("data: [DONE]\n\n"));
          controller.close();
        } else {
          controller.enqueue(enc.encode(`data: ${JSON.stringify(r.value)}\n\n`));
        }
      } catch (e) {
        const err = e instanceof WebvlmError ? e : new WebvlmError("internal", String(e));
        controller.enqueue(enc.encode(`data: ${JSON.stringify({ error: { message: err.message, code: err.code } })}\n\n`));
        controller.close();
      }
    },
    async cancel() {
      await it.return?.();
    },
  });
}

/** A fetch(input, init) that serves the OpenAI chat API from `backend`. */
export function createFetchAdapter(backend: ChatBackend): typeof fetch {
  const handler = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const request = input instanceof Request ? input : new Request(input, init);
    const path = new URL(request.url).pathname.replace(/\/+$/, "");
    try {
      if (request.method === "GET" && path.endsWith("/models")) {
        const data = backend.model ? [{ id: backend.model.id, object: "model", created: 0, owned_by: "webvlm" }] : [];
        return Response.json({ object: "list", data });
      }
      if (request.method === "POST" && path.endsWith("/chat/completions")) {
        let body: ChatCompletionRequest;
        try {
          body = (await request.json()) as ChatCompletionRequest;
        } catch {
          throw new WebvlmError("bad_request", "the request body is not JSON");
        }
        // The caller's abort (init.signal) reaches the engine as the request's signal.
        const signal = init?.signal ?? request.signal;
        const result = await backend.chat.completions.create({ ...body, signal: signal ?? undefined });
        if (Symbol.asyncIterator in (result as object)) {
          // Wait for the first chunk before answering: a request that fails validation, media
          // decoding or the context check gets its 4xx status and error body, as non-streaming does.
          const it = (result as AsyncIterable<ChatCompletionChunk>)[Symbol.asyncIterator]();
          const first = await it.next();
          return new Response(sse(it, first), {
            headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
          });
        }
        return Response.json(result);
      }
      return errorResponse(new WebvlmError("bad_request", `no route for ${request.method} ${path}`));
    } catch (e) {
      return errorResponse(e);
    }
  };
  return handler as typeof fetch;
}
