// openCheckpoint over a static base URL, a hub id (hub base pointed at the
// local server) and a local path, on tiny Qwen2-VL checkpoints (single-file
// f32 and 3-shard bf16): identical tensors everywhere, weights read only by
// Range requests, error codes, cut connections, truncated shards, progress.
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { after, before, beforeEach, test } from "node:test";
import { WebvlmError, type WebvlmErrorCode } from "../../src/api/errors.ts";
import { openCheckpoint, type Checkpoint, type OpenCheckpointOptions } from "../../src/loader/checkpoint.ts";
import { openCheckpointDir } from "../../src/loader/file_node.ts";
import { ProgressAggregator, type ProgressEvent } from "../../src/loader/progress.ts";
import type { SafetensorsCheckpoint } from "../../src/loader/safetensors.ts";
import type { TensorSource } from "../../src/models/common/source.ts";
import { makeTinyQwen2VL, QWEN2VL_CHAT_TEMPLATE } from "../../scripts/make_tiny_qwen2vl.ts";
import { StaticServer } from "../util/static_server.ts";

let root: string;
let server: StaticServer;
const FAST: OpenCheckpointOptions = { retryDelayMs: 1, maxRetryDelayMs: 5 };
const VARIANTS = [
  { name: "single", repo: "test-org/tiny-a", rev: undefined as string | undefined },
  { name: "sharded", repo: "test-org/tiny-a-sharded", rev: "v1" as string | undefined },
];

async function rejectsWith(p: Promise<unknown>, code: WebvlmErrorCode, text?: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof WebvlmError, `expected WebvlmError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (text) assert.ok(e.message.includes(text), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(text)}`);
    return true;
  });
}

/** Copies a checkpoint directory (for variants that get damaged). */
async function copyDir(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true });
  for (const f of await readdir(from)) await copyFile(join(from, f), join(to, f));
}

const isWeights = (file: string): boolean => file.endsWith(".safetensors");
/** The served file's name without the static-layout sub-directory. */
const fileOf = (file: string): string => basename(file);

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-ckpt-"));
  await makeTinyQwen2VL(join(root, "single"), "tiny-a");
  await makeTinyQwen2VL(join(root, "sharded"), "tiny-a", { shards: 3, dtype: "bf16" });
  server = await StaticServer.start({
    root,
    repos: { "test-org/tiny-a": join(root, "single"), "test-org/tiny-a-sharded@v1": join(root, "sharded") },
  });
});

after(async () => {
  await server.close();
  await rm(root, { recursive: true, force: true });
});

beforeEach(() => {
  server.resetLog();
  server.drops = [];
  server.fails = [];
  server.notFound = [];
});

/** Every tensor equal, bit for bit, to the Node file reader's decode. */
async function assertSameTensors(ck: Checkpoint, ref: SafetensorsCheckpoint, label: string): Promise<void> {
  assert.deepEqual(ck.weights.names().sort(), ref.names().sort(), `${label}: names`);
  for (const name of ref.names()) {
    const info = ref.info(name);
    assert.deepEqual(ck.weights.shape(name), info.shape, `${label}: shape of ${name}`);
    assert.equal(ck.weights.dtype(name), info.dtype);
    assert.equal(ck.weights.byteSize(name), info.end - info.begin);
    assert.equal(ck.weights.file(name), info.file);
    const got = await ck.weights.read(name);
    const want = await ref.readF32(name);
    assert.equal(got.length, want.length);
    assert.ok(Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength)), `${label}: values of ${name}`);
  }
}

for (const v of VARIANTS) {
  test(`${v.name}: static URL, hub id and local path give identical tensors; weights only via Range`, async () => {
    const dir = join(root, v.name);
    const ref = await openCheckpointDir(dir);
    const hubId = v.rev ? `${v.repo}@${v.rev}` : v.repo;
    const locations: [string, string][] = [["url", server.url(v.name)], ["hub", hubId], ["path", dir]];
    try {
      for (const [kind, loc] of locations) {
        server.resetLog();
        const ck = await openCheckpoint(loc, { ...FAST, hubBaseUrl: server.origin });
        try {
          assert.equal(ck.kind, kind);
          assert.equal(ck.config.model_type, "qwen2_vl");
          assert.equal((ck.generationConfig as { top_k?: number }).top_k, 1);
          assert.equal(ck.preprocessorConfig?.patch_size, 14);
          assert.ok("model" in ck.tokenizerJson);
          assert.equal(typeof ck.tokenizerConfig.eos_token, "string");
          assert.equal(ck.chatTemplate, QWEN2VL_CHAT_TEMPLATE);
          const headerRequests = server.log.filter((e) => isWeights(e.file)).length;
          if (kind !== "path") assert.equal(headerRequests, ref.files.length, "one request per shard header at open");
          await assertSameTensors(ck, ref, `${v.name}/${kind}`);
        } finally {
          await ck.close();
        }
        const weightReqs = server.log.filter((e) => isWeights(e.file));
        if (kind === "path") {
          assert.equal(weightReqs.length, 0);
          continue;
        }
        if (kind === "hub") assert.ok(weightReqs.every((e) => e.path.startsWith(`/${v.repo}/resolve/${v.rev ?? "main"}/`)), "hub layout");
        const sizes = new Map<string, number>();
        for (const f of ref.files) sizes.set(f, (await stat(join(dir, f))).size);
        let served = 0;
        for (const e of weightReqs) {
          assert.ok(e.range, `weight request without Range: ${e.path}`);
          assert.equal(e.status, 206);
          const size = sizes.get(fileOf(e.file));
          assert.ok(size !== undefined);
          // Only the open-time header read (first 64 KiB) may cover a whole file, and only a tiny one.
          const headerRead = e.range === "bytes=0-65535";
          assert.ok(e.bytes < size || (headerRead && size <= 65536), `${e.path} ${e.range}: ${e.bytes} bytes of ${size}`);
          served += e.bytes;
        }
        // Each byte at most once, plus the 64 KiB prefix per shard.
        const total = [...sizes.values()].reduce((a, b) => a + b, 0);
        assert.ok(served <= total + 65536 * ref.files.length, `served ${served} bytes for ${total}`);
        assert.ok(weightReqs.length <= ref.files.length + ref.names().length);
      }
    } finally {
      await ref.close();
    }
  });
}

test("tensor source satisfies the model's TensorSource; readRows reads just those rows; missing -> missing_tensor", async () => {
  const ck = await openCheckpoint(server.url("sharded"), FAST);
  const ref = await openCheckpointDir(join(root, "sharded"));
  try {
    const src: TensorSource = ck.weights; // structural check (compile time)
    assert.equal(src.has("model.norm.weight"), true);
    assert.equal(src.has("nope"), false);
    await rejectsWith(ck.weights.read("nope"), "missing_tensor", "nope");
    assert.throws(() => ck.weights.shape("nope"), (e: unknown) => e instanceof WebvlmError && e.code === "missing_tensor");

    const name = "model.embed_tokens.weight";
    const [rows, cols] = ck.weights.shape(name);
    const all = await ref.readF32(name);
    server.resetLog();
    const part = await ck.weights.readRows(name, 1000, 37);
    assert.deepEqual(Array.from(part), Array.from(all.subarray(1000 * cols, 1037 * cols)));
    const last = await ck.weights.readRows(name, rows - 3, 3);
    assert.deepEqual(Array.from(last), Array.from(all.subarray((rows - 3) * cols)));
    const reqs = server.log.filter((e) => isWeights(e.file));
    assert.deepEqual(reqs.map((e) => e.bytes), [37 * cols * 2, 3 * cols * 2], "bf16 rows, nothing more");
    await rejectsWith(ck.weights.readRows(name, rows - 1, 2), "bad_request");
  } finally {
    await ck.close();
    await ref.close();
  }
});

test("missing model -> model_not_found (hub, URL, path); no weights -> model_not_found", async () => {
  await rejectsWith(openCheckpoint("test-org/nope", { ...FAST, hubBaseUrl: server.origin }), "model_not_found", "config.json");
  await rejectsWith(openCheckpoint(server.url("nope"), FAST), "model_not_found", "/nope/config.json");
  await rejectsWith(openCheckpoint(join(root, "nope"), FAST), "model_not_found");
  // A revision the server does not have.
  await rejectsWith(openCheckpoint("test-org/tiny-a-sharded@v2", { ...FAST, hubBaseUrl: server.origin }), "model_not_found");
  server.notFound = [(p) => p.startsWith("/single/model.safetensors")];
  await rejectsWith(openCheckpoint(server.url("single"), FAST), "model_not_found", "model.safetensors");
});

test("chat template: .jinja wins, then chat_template.json, then tokenizer_config.json; none is fine", async () => {
  const dir = join(root, "templates");
  await copyDir(join(root, "sharded"), dir);
  try {
    await writeFile(join(dir, "chat_template.jinja"), "{{ 'jinja' }}");
    let ck = await openCheckpoint(dir);
    assert.equal(ck.chatTemplate, "{{ 'jinja' }}");
    await ck.close();
    await rm(join(dir, "chat_template.jinja"));
    await writeFile(join(dir, "chat_template.json"), JSON.stringify({ chat_template: "{{ 'json' }}" }));
    ck = await openCheckpoint(server.url("templates"), FAST);
    assert.equal(ck.chatTemplate, "{{ 'json' }}");
    await rm(join(dir, "chat_template.json"));
    ck = await openCheckpoint(server.url("templates"), FAST);
    assert.equal(ck.chatTemplate, QWEN2VL_CHAT_TEMPLATE, "from tokenizer_config.json");
    const cfg = JSON.parse(await readFile(join(dir, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
    delete cfg.chat_template;
    await writeFile(join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
    await rm(join(dir, "generation_config.json"));
    ck = await openCheckpoint(server.url("templates"), FAST);
    assert.equal(ck.chatTemplate, undefined);
    assert.equal(ck.generationConfig, undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("index promising a tensor its shard lacks -> missing_tensor at open", async () => {
  const dir = join(root, "badindex");
  await copyDir(join(root, "sharded"), dir);
  try {
    const idx = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    idx.weight_map["model.ghost.weight"] = Object.values(idx.weight_map)[0];
    await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify(idx));
    await rejectsWith(openCheckpoint(server.url("badindex"), FAST), "missing_tensor", "model.ghost.weight");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("connection cut mid-tensor: the read resumes and the values are exact; a dead server -> download_failed", async () => {
  const ck = await openCheckpoint(server.url("single"), FAST);
  const ref = await openCheckpointDir(join(root, "single"));
  try {
    const name = "model.embed_tokens.weight";
    const info = ref.info(name);
    const mid = info.begin + Math.floor((info.end - info.begin) / 3);
    server.resetLog();
    server.drops = [{ match: "/single/model.safetensors", atByte: mid }];
    const got = await ck.weights.read(name);
    const want = await ref.readF32(name);
    assert.ok(Buffer.from(got.buffer).equals(Buffer.from(want.buffer)));
    const reqs = server.log.filter((e) => isWeights(e.file));
    assert.equal(reqs.length, 2);
    assert.equal(reqs[0].dropped, true);
    assert.equal(reqs[1].range, `bytes=${mid}-${info.end - 1}`);

    server.fails = [{ match: "/single/model.safetensors", status: 502 }];
    await rejectsWith(ck.weights.read("model.norm.weight"), "download_failed", "502");
  } finally {
    await ck.close();
    await ref.close();
  }
});

test("truncated shard (file shorter than its header says) -> integrity_failed, over HTTP and locally", async () => {
  const dir = join(root, "truncated");
  await copyDir(join(root, "sharded"), dir);
  try {
    const shard = (await readdir(dir)).filter(isWeights).sort()[1];
    await truncate(join(dir, shard), (await stat(join(dir, shard))).size - 100);
    await rejectsWith(openCheckpoint(server.url("truncated"), FAST), "integrity_failed", shard);
    await rejectsWith(openCheckpoint(dir), "integrity_failed", "truncated");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("progress: per-file events monotone, every file ends at 1; the aggregate is monotone and ends at 1", async () => {
  const events: ProgressEvent[] = [];
  const overall: number[] = [];
  const agg = new ProgressAggregator((o) => overall.push(o.fraction));
  const ck = await openCheckpoint(server.url("sharded"), {
    ...FAST,
    onProgress: (e) => {
      events.push(e);
      agg.push(e);
    },
  });
  try {
    const names = ck.weights.names();
    // Read concurrently, in two passes: re-reads must not push any file past 1.
    await Promise.all(names.map((n) => ck.weights.read(n)));
    await ck.weights.read(names[0]);
  } finally {
    await ck.close();
  }
  const byFile = new Map<string, ProgressEvent[]>();
  for (const e of events) {
    assert.equal(e.phase, "download");
    byFile.set(e.file, [...(byFile.get(e.file) ?? []), e]);
  }
  const dir = join(root, "sharded");
  const files = (await readdir(dir)).filter((f) => f.endsWith(".json") || isWeights(f));
  assert.deepEqual([...byFile.keys()].sort(), files.sort(), "an event stream for every file read");
  for (const [file, es] of byFile) {
    for (let i = 1; i < es.length; i++) {
      assert.ok(es[i].loadedBytes >= es[i - 1].loadedBytes, `${file}: loaded went back at event ${i}`);
      assert.equal(es[i].totalBytes, es[0].totalBytes, `${file}: total changed`);
    }
    const last = es.at(-1)!;
    assert.equal(last.fraction, 1, `${file} ends at ${last.fraction}`);
    // A file's total is its size on disk (shards: header + tensors, no gaps).
    assert.equal(last.totalBytes, (await stat(join(dir, file))).size, file);
  }
  assert.ok(events.some((e) => e.tensor === "model.norm.weight"));
  for (let i = 1; i < overall.length; i++) assert.ok(overall[i] >= overall[i - 1]);
  assert.equal(overall.at(-1), 1);
  const o = agg.overall();
  assert.equal(o.loadedBytes, o.totalBytes);
});

test("ProgressAggregator: weighted phases, out-of-order events, declared totals", () => {
  const agg = new ProgressAggregator(undefined, { download: 3, upload: 1 });
  agg.expect("download", "a", 100);
  agg.expect("upload", "a", 50);
  assert.equal(agg.overall().fraction, 0);
  agg.push({ phase: "download", file: "a", loadedBytes: 60, totalBytes: 100, fraction: 0.6 });
  agg.push({ phase: "download", file: "a", loadedBytes: 40, totalBytes: 100, fraction: 0.4 }); // late event
  assert.equal(agg.overall().fraction, (3 * 0.6) / 4);
  agg.push({ phase: "download", file: "a", loadedBytes: 100, totalBytes: 100, fraction: 1 });
  assert.equal(agg.overall().fraction, 0.75, "upload not done yet");
  agg.push({ phase: "upload", file: "a", loadedBytes: 50, totalBytes: 50, fraction: 1 });
  assert.equal(agg.overall().fraction, 1);
  assert.deepEqual(agg.overall().phases.upload, { loadedBytes: 50, totalBytes: 50 });
});
