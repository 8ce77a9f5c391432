// `npm run bench -- --model idefics2-8b --tiny` runs end to end on this adapter and writes a
// complete report. Figures are printed, never asserted: the checks are on the report's shape and
// on what the design fixes (weights counted in peak memory, one submit per decoded token, matrices
// past the binding limit split into row shards that still run).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Idefics2Report } from "../../bench/idefics2_report.ts";

const repo = new URL("../../", import.meta.url).pathname;

// 48 KiB: the tiny model's f16 embed_tokens / lm_head ([32003, 64], 4 MiB), patch embedding
// ([64, 588], 74 KiB) and perceiver gate|up ([512, 64], 64 KiB) must split; nothing else does. The
// vision path's activations take the same limit, so the split image's 5 crops need several submits.
const BINDING_BYTES = 48 << 10;

test("bench --model idefics2-8b --tiny: weight bytes, limits, shards, memory, vision, prefill, TTFT, decode", { timeout: 600_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "webvlm-bench-idefics2-"));
  try {
    const out = join(dir, "report.json");
    const args = ["--import", "./scripts/register-loaders.mjs", "bench/model.ts", "--model", "idefics2-8b", "--tiny", "--max-binding-bytes", String(BINDING_BYTES), "--out", out];
    const table = execFileSync(process.execPath, args, { cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    for (const line of table.split("\n")) t.diagnostic(line);
    const r = JSON.parse(await readFile(out, "utf8")) as Idefics2Report;
    assert.equal(r.mode, "idefics2-tiny");
    assert.equal(r.run, "forward");
    assert.ok(r.adapterLimits.maxBufferSize > 0 && r.adapterLimits.maxStorageBufferBindingSize > 0);
    assert.ok(r.measured && r.measured.copyGBs > 0 && r.measured.peakGFLOPS > 0);
    assert.deepEqual(r.formats, { textLinear: "q4", embedding: "f16", vision: "f16" });

    const w = r.weightBytes;
    assert.equal(w.total, w.textLinear + w.embedding + w.vision + w.connector + w.normsAndBiases, "parts sum to the total");
    for (const part of ["textLinear", "embedding", "vision", "connector", "normsAndBiases"] as const) assert.ok(w[part] > 0, `${part} has bytes`);
    assert.ok(r.gpuBytesAfterBuild >= w.total, "the pool holds the weights after the build");
    assert.ok(r.peakBytes >= r.gpuBytesAfterBuild, `peak ${r.peakBytes} holds the weights ${w.total}`);
    assert.ok(r.weightBytesPerToken > w.textLinear && r.weightBytesPerToken < w.total);

    const s = r.shards;
    assert.equal(s.maxBindingBytes, BINDING_BYTES);
    assert.deepEqual(s.sharded.map((m) => m.name).sort(), ["connector.0.gate_up", "connector.1.gate_up", "text.embed_tokens", "text.lm_head", "vision.patch_embedding"]);
    for (const m of s.sharded) assert.equal(m.shards, Math.ceil(m.rows / Math.floor(BINDING_BYTES / (m.cols * 2))), `${m.name}: f16 rows per shard from the limit`);
    assert.equal(s.shards, s.sharded.reduce((n, m) => n + m.shards, 0));
    assert.ok(s.largestTensorBytes <= BINDING_BYTES, "no tensor exceeds the binding limit");
    assert.ok(s.atOtherLimits.every((o) => o.shardedMatrices === 0), "at real adapter limits the tiny model needs no shards");

    assert.deepEqual(r.images.map((im) => [im.image, im.split, im.crops.length]), [[[56, 56], false, 1], [[112, 112], true, 5]]);
    const latents = (r.config as { perceiver_config: { resampler_n_latents: number } }).perceiver_config.resampler_n_latents;
    for (const im of r.images) {
      assert.equal(im.imageTokens, im.crops.length * latents);
      assert.ok(im.promptTokens > im.imageTokens && im.patches > 0);
      assert.ok(im.visionMs > 0 && Number.isFinite(im.visionGflops));
      assert.ok(im.split ? im.visionSubmits > 1 : im.visionSubmits === 1, `${im.visionSubmits} vision submits: crops grouped under the binding limit`);
      assert.ok(im.prefillTokensPerSec > 0 && im.ttftMs > 0 && im.preprocessMs >= 0);
      const d = im.decode;
      assert.equal(d.context, im.promptTokens + 1, "decode continues the image prompt (after one warm-up token)");
      assert.ok(d.tokensPerSec > 0 && d.ofRoofline > 0 && d.bytesPerToken > r.weightBytesPerToken);
      assert.equal(d.submitsPerToken, 1, "one submit per decoded token");
      assert.ok(Number.isInteger(d.dispatchesPerToken) && d.dispatchesPerToken > 0);
    }
    const timestamps = r.adapter.features.includes("timestamp-query");
    if (!timestamps) assert.equal(r.decodeProfile, null);
    else assert.ok(r.decodeProfile && r.decodeProfile.some((k) => k.label.startsWith("embedding.shard1")), "the sharded embedding runs one dispatch per shard");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("bench --model idefics2-8b --tiny --build-only: weights alone, no forward", { timeout: 300_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), "webvlm-bench-idefics2-"));
  try {
    const out = join(dir, "report.json");
    execFileSync(process.execPath, ["--import", "./scripts/register-loaders.mjs", "bench/model.ts", "--model", "idefics2-8b", "--tiny", "--build-only", "--out", out], {
      cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"],
    });
    const r = JSON.parse(await readFile(out, "utf8")) as Idefics2Report;
    assert.equal(r.run, "build-only");
    assert.equal(r.measured, null);
    assert.deepEqual(r.images, []);
    assert.ok(r.peakBytes >= r.weightBytes.total && r.weightBytes.total > 0);
    assert.equal(r.shards.shardedMatrices, 0, "the adapter's own limit splits nothing at tiny size");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
