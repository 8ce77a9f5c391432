// Node-only byte sources and writers for local checkpoint directories (tests,
// the CLI, the tiny-model generator). Browser code never imports this file.
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { WebvlmError } from "../api/errors.ts";
import {
  SafetensorsCheckpoint,
  serializeSafetensorsParts,
  type ByteSource,
  type TensorToWrite,
} from "./safetensors.ts";

/** A ByteSource over a local file, read with positioned reads (no whole-file load). */
export async function nodeFileSource(path: string): Promise<ByteSource> {
  let fh;
  try {
    fh = await open(path, "r");
  } catch (e) {
    throw new WebvlmError("model_not_found", `cannot open ${path}: ${(e as Error).message}`, { path });
  }
  const { size } = await fh.stat();
  const handle = fh;
  return {
    size,
    async read(offset: number, length: number): Promise<Uint8Array> {
      const n = Math.max(0, Math.min(length, size - offset));
      const buf = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        const { bytesRead } = await handle.read(buf, got, n - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got === n ? buf : buf.subarray(0, got);
    },
    close: () => handle.close(),
  };
}

/** Opens the safetensors weights of a local HF directory, sharded or not. */
export async function openCheckpointDir(dir: string): Promise<SafetensorsCheckpoint> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8"));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  return SafetensorsCheckpoint.open((f) => nodeFileSource(join(dir, f)), index);
}

/** Writes one safetensors file part by part (no full-file buffer). */
export async function writeSafetensorsFile(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<number> {
  const parts = serializeSafetensorsParts(tensors, metadata);
  const fh = await open(path, "w");
  let total = 0;
  try {
    for (const p of parts) {
      // write() may be partial in principle; loop until the part is out.
      for (let o = 0; o < p.length; ) o += (await fh.write(p, o, p.length - o, total + o)).bytesWritten;
      total += p.length;
    }
  } finally {
    await fh.close();
  }
  return total;
}

export async function writeJson(path: string, value: unknown): Promise<void> {
  await writeFile(path, JSON.stringify(value, null, 2) + "\n");
}
