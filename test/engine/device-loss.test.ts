// Device loss: requests fail with device_lost (not a hang or a generic error), and loading the
// model again acquires a new device and answers as before.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { Engine } from "../../src/engine/engine.ts";
import { WebvlmError } from "../../src/api/errors.ts";

const F32 = { quantization: "f32", embedding: "f32", vision: "f32" } as const;
let dir = "";
let engine: Engine;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-lost-"));
  await makeTinyQwen2VL(join(dir, "tiny-a"), "tiny-a");
  engine = await Engine.create();
});
after(async () => {
  await engine?.unload();
  engine?.gpu.destroy();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("device_lost after device.destroy(), then a reload answers again", { timeout: 600_000 }, async () => {
  const req = { messages: [{ role: "user" as const, content: "Hello there" }], max_tokens: 4, temperature: 0, stream: false as const };
  const phases = new Set<string>();
  await engine.load(join(dir, "tiny-a"), { ...F32, onProgress: (e) => phases.add(e.phase) });
  assert.ok(phases.has("upload") && phases.has("compile"), `progress phases: ${[...phases]}`);
  const before = (await engine.chat.completions.create(req)).choices[0].message.content;
  const lostDevice = engine.gpu;
  lostDevice.device.destroy();
  await lostDevice.lost;
  await assert.rejects(engine.chat.completions.create(req), (e: unknown) => e instanceof WebvlmError && e.code === "device_lost");
  await engine.load(join(dir, "tiny-a"), F32);
  assert.notEqual(engine.gpu, lostDevice, "a new device was acquired");
  const after = (await engine.chat.completions.create(req)).choices[0].message.content;
  assert.equal(after, before);
});
