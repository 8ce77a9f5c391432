// WebvlmError crosses the worker boundary with its code and details (comlink's default
// handler keeps only message and stack).
import * as Comlink from "comlink";
import { WebvlmError, type WebvlmErrorCode } from "../api/errors.ts";

interface SerializedError {
  webvlm: boolean;
  code?: WebvlmErrorCode;
  message: string;
  details?: Record<string, unknown>;
  name: string;
  stack?: string;
}

let installed = false;

export function installErrorTransfer(): void {
  if (installed) return;
  installed = true;
  const base = Comlink.transferHandlers.get("throw")!;
  Comlink.transferHandlers.set("throw", {
    canHandle: base.canHandle,
    serialize(value: unknown) {
      const thrown = (value as { value: unknown }).value;
      if (thrown instanceof WebvlmError) {
        const s: SerializedError = { webvlm: true, code: thrown.code, message: thrown.message, details: thrown.details, name: thrown.name, stack: thrown.stack };
        return [{ isError: true, value: s }, []];
      }
      return base.serialize(value);
    },
    deserialize(serialized: unknown) {
      const s = serialized as { isError?: boolean; value: SerializedError };
      if (s.isError && s.value?.webvlm) {
        const e = new WebvlmError(s.value.code ?? "internal", s.value.message, s.value.details);
        throw e;
      }
      return base.deserialize(serialized);
    },
  });
}
