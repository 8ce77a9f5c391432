// `npm run bench -- --tiny` runs end to end on this adapter and writes a complete report.
// Figures are printed, never asserted: the checks are on the report's shape and on what
// the design fixes (one submit per decoded token, weights counted in peak memory).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Report } from "../../bench/report.ts";

const repo = new URL("../../", import.meta.url).pathname;

test("bench --tiny (q4): preprocessing CPU vs GPU, vision, prefill, decode, TTFT with each preprocessing, memory per context, dispatch counts and kernel shares", { timeout: 600_000 }, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), "webvlm-bench-"));
  try {
    const out = join(dir, "report.json");
    const table = execFileSync(process.execPath, ["--import", "./scripts/register-loaders.mjs", "bench/model.ts", "--tiny", "--formats", "q4", "--preprocess-sizes", "320x240,97x61", "--out", out], {
      cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"],
    });
    for (const line of table.split("\n")) t.diagnostic(line);
    const r = JSON.parse(await readFile(out, "utf8")) as Report;
    assert.equal(r.mode, "tiny");
    assert.ok(r.adapter.vendor !== undefined && r.limits.copyGBs > 0 && r.limits.peakGFLOPS > 0);
    // q4 only: the f16 load is the same code path with another weight format (covered by the model tests).
    assert.deepEqual(r.results.map((f) => f.format), ["q4"]);
    assert.equal(r.kvCache, "f16");
    assert.deepEqual(r.preprocess.map((p) => [p.image, p.resized]), [[[320, 240], [308, 252]], [[97, 61], [84, 56]]]);
    for (const p of r.preprocess) assert.ok(p.cpuMs > 0 && p.gpuMs > 0 && p.llmTokens * 4 === p.patches);
    for (const f of r.results) {
      assert.ok(f.weightBytes > 0 && f.peakBytes >= f.weightBytes, `${f.format}: peak memory ${f.peakBytes} holds the weights ${f.weightBytes}`);
      assert.equal(f.vision.length, 2);
      for (const v of f.vision) assert.ok(v.ms > 0 && v.llmTokens > 0 && Number.isFinite(v.gflops));
      assert.ok(f.prefill.tokensPerSec > 0 && f.prefill.ofPeak > 0);
      assert.equal(f.decode.length, 2);
      for (const d of f.decode) {
        assert.ok(d.tokensPerSec > 0 && d.ofRoofline > 0 && d.bytesPerToken > f.weightBytesPerToken / 2);
        assert.equal(d.submitsPerToken, 1, "one submit per decoded token");
        assert.ok(Number.isInteger(d.dispatchesPerToken) && d.dispatchesPerToken > 0);
        // The cache grown to the context (f16 rows) and counted in the peak with the weights.
        assert.ok(d.kvAllocatedBytes > 0 && d.peakBytes >= f.weightBytes + d.kvAllocatedBytes, `context ${d.context}: peak ${d.peakBytes}`);
      }
      assert.ok(f.ttft.ms > 0 && f.ttft.msGpuPreprocess > 0 && f.ttft.promptTokens > f.ttft.questionTokens);
      const timestamps = r.adapter.features.includes("timestamp-query");
      for (const p of [f.profiles.decode, f.profiles.prefill, f.profiles.vision]) {
        if (!timestamps) assert.equal(p, null, "no shares without timestamp-query");
        else assert.ok(p && p.length > 0 && p.some((k) => k.label.startsWith("linear")), "kernel time shares");
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
