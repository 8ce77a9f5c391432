// CLI input errors are reported before any model is loaded, naming what is wrong: the request
// file of `run` (unreadable, not JSON, JSON null, a bad field) and numeric options. The model
// path given does not exist, so an error found only after loading would read model_not_found.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);
const cli = join(new URL("../../", import.meta.url).pathname, "scripts/cli.mjs");
let dir = "";
let missing = "";

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "webvlm-cli-errors-"));
  missing = join(dir, "no-such-model");
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function fails(args: string[], expect: RegExp): Promise<string> {
  let stderr = "";
  let code: number | undefined;
  try {
    await run(process.execPath, [cli, ...args]);
  } catch (e) {
    const err = e as { code?: number; stderr?: string };
    code = err.code;
    stderr = err.stderr ?? "";
  }
  assert.equal(code, 1, `exit code 1 for ${args.join(" ")}`);
  assert.match(stderr, expect);
  assert.doesNotMatch(stderr, /model_not_found/, "reported before loading");
  return stderr;
}

test("run: a request file that is null, not JSON, missing or invalid is named in the error", { timeout: 120_000 }, async () => {
  const nullFile = join(dir, "null.json");
  await writeFile(nullFile, "null");
  await fails(["run", "--request", nullFile, "--model", missing], new RegExp(`${nullFile.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}.*must hold a JSON object.*null`));
  const broken = join(dir, "broken.json");
  await writeFile(broken, "{ \"messages\": [");
  await fails(["run", "--request", broken, "--model", missing], /broken\.json is not valid JSON/);
  await fails(["run", "--request", join(dir, "absent.json"), "--model", missing], /cannot read the request file .*absent\.json/);
  const badStop = join(dir, "stop.json");
  await writeFile(badStop, JSON.stringify({ messages: [{ role: "user", content: "hi" }], stop: 5 }));
  await fails(["run", "--request", badStop, "--model", missing], /bad_request: .*stop\.json: stop must be/);
  const nullPart = join(dir, "part.json");
  await writeFile(nullPart, JSON.stringify({ messages: [{ role: "user", content: [null] }] }));
  await fails(["run", "--request", nullPart, "--model", missing], /bad_request: .*part\.json: messages\[0\]\.content\[0\]/);
});

test("numeric options are checked before the model loads", { timeout: 120_000 }, async () => {
  await fails(["chat", "--model", missing, "--max-tokens", "abc", "hi"], /--max-tokens must be an integer >= 1, got "abc"/);
  await fails(["chat", "--model", missing, "--max-tokens", "0", "hi"], /--max-tokens/);
  await fails(["chat", "--model", missing, "--temperature", "x", "hi"], /--temperature must be a number >= 0/);
  await fails(["chat", "--model", missing, "--seed", "1.5", "hi"], /--seed must be an integer/);
  await fails(["chat", "--model", missing, "--context=-1", "hi"], /--context must be an integer >= 1/);
  await fails(["chat", "--model", missing, "--context", "0", "hi"], /--context must be an integer >= 1, got "0"/);
  await fails(["chat", "--model", missing, "--dtype", "q3", "hi"], /--dtype must be one of/);
});
