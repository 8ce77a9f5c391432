// qwen_vl_utils' video-file rules (fetch_video of the Qwen2-VL release), as pure functions.
// Expected values worked out from vision_process.py with CPython (round = ties to even) and
// numpy's float32 linspace (torch.linspace's default dtype) for the indices.
import assert from "node:assert/strict";
import { test } from "node:test";
import { WebvlmError } from "../../src/api/errors.ts";
import {
  planVideoSampling, sampleFrameCount, sampleFrameIndices, videoFrameBudget, videoFrameSize,
  VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS,
} from "../../src/vision/video_sampling.ts";

const code = (fn: () => unknown, c: string) => assert.throws(fn, (e: unknown) => e instanceof WebvlmError && e.code === c);

test("frame count: fps (default 2), min_frames/max_frames, rounding to the temporal patch", () => {
  assert.equal(sampleFrameCount(20, 10), 4); // 2 s at 2 fps
  assert.equal(sampleFrameCount(30, 30), 4); // 1 s -> 2, raised to min_frames 4
  assert.equal(sampleFrameCount(3000, 30), 200); // 100 s
  assert.equal(sampleFrameCount(30000, 30), 768); // capped at 768
  assert.equal(sampleFrameCount(100, 10, { fps: 1 }), 10);
  assert.equal(sampleFrameCount(100, 10, { fps: 0.5 }), 4); // 5 -> round(2.5) = 2 -> 4
  assert.equal(sampleFrameCount(110, 10, { fps: 0.5 }), 6); // 5.5 -> round(2.75) = 3 -> 6
  assert.equal(sampleFrameCount(90, 10, { fps: 1 }), 8); // 9 -> round(4.5) = 4 -> 8
  assert.equal(sampleFrameCount(20, 10, { minFrames: 7 }), 8); // ceil to 8
  assert.equal(sampleFrameCount(20, 10, { minFrames: 5 }), 6);
  assert.equal(sampleFrameCount(100, 10, { maxFrames: 9 }), 8); // floor to 8
  assert.equal(sampleFrameCount(100, 10, { maxFrames: 8 }), 8);
  assert.equal(sampleFrameCount(20, 10, { nframes: 5 }), 4); // round(2.5) = 2
  assert.equal(sampleFrameCount(20, 10, { nframes: 7 }), 8); // round(3.5) = 4
  assert.equal(sampleFrameCount(20, 10, { nframes: 3 }), 4);
  assert.equal(sampleFrameCount(3, 30), 2); // max_frames = floor(min(768, 3)) = 2 wins over min_frames
});

test("frame count: out of [2, total] and fps with nframes are bad requests", () => {
  code(() => sampleFrameCount(1, 30), "bad_request"); // max_frames 0
  code(() => sampleFrameCount(10, 10, { nframes: 12 }), "bad_request");
  code(() => sampleFrameCount(10, 10, { nframes: 1 }), "bad_request"); // round(0.5) = 0
  code(() => sampleFrameCount(10, 10, { nframes: 4, fps: 2 }), "bad_request");
  code(() => sampleFrameCount(10, 0), "bad_request"); // no frame rate: nframes needed
  assert.equal(sampleFrameCount(10, 0, { nframes: 4 }), 4);
});

test("frame indices: torch.linspace(0, total-1, n).round()", () => {
  assert.deepEqual(sampleFrameIndices(20, 4), [0, 6, 13, 19]);
  assert.deepEqual(sampleFrameIndices(30, 4), [0, 10, 19, 29]);
  assert.deepEqual(sampleFrameIndices(10, 10), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual(sampleFrameIndices(12, 6), [0, 2, 4, 7, 9, 11]);
  assert.deepEqual(sampleFrameIndices(7, 4), [0, 2, 4, 6]);
  assert.deepEqual(sampleFrameIndices(3000, 200).slice(0, 12), [0, 15, 30, 45, 60, 75, 90, 105, 121, 136, 151, 166]);
  assert.deepEqual(sampleFrameIndices(100000, 768).slice(0, 12), [0, 130, 261, 391, 522, 652, 782, 913, 1043, 1173, 1304, 1434]);
  // An independent float64 reference (no exact .5 can occur: n - 1 is odd) for whole lists.
  for (const [t, n] of [[3000, 200], [9, 8], [61, 4], [1000, 2]]) {
    const ref = Array.from({ length: n }, (_, i) => Math.round(((t - 1) * i) / (n - 1)));
    assert.deepEqual(sampleFrameIndices(t, n), ref, `${t} frames, ${n} taken`);
  }
  // float32 matters: 29999 * 602 / 767 = 23545.4994 is 23545.5 in float32, and the tie goes to the even 23546
  // (numpy's float32 linspace agrees); every other index of that list is the float64 one.
  const long = sampleFrameIndices(30000, 768);
  assert.equal(long[602], 23546);
  long.forEach((v, i) => i !== 602 && assert.equal(v, Math.round((29999 * i) / 767), `index ${i}`));
});

test("per-frame budget and size: min_pixels, max_pixels, total_pixels", () => {
  assert.deepEqual(videoFrameBudget(4), { minPixels: VIDEO_MIN_PIXELS, maxPixels: VIDEO_MAX_PIXELS });
  assert.deepEqual(videoFrameBudget(200), { minPixels: VIDEO_MIN_PIXELS, maxPixels: 192675.84 });
  assert.deepEqual(videoFrameBudget(768), { minPixels: VIDEO_MIN_PIXELS, maxPixels: 105369 }); // int(100352 * 1.05)
  assert.deepEqual(videoFrameBudget(4, { totalPixels: 100000 }), { minPixels: VIDEO_MIN_PIXELS, maxPixels: 105369 });
  assert.deepEqual(videoFrameBudget(4, { totalPixels: 2_000_000 }), { minPixels: VIDEO_MIN_PIXELS, maxPixels: 602112 });
  assert.deepEqual(videoFrameBudget(4, { minPixels: 1000, totalPixels: 4000 }), { minPixels: 1000, maxPixels: 2000 });
  assert.deepEqual(videoFrameBudget(4, { maxPixels: 5000 }), { minPixels: VIDEO_MIN_PIXELS, maxPixels: 5000 });
  assert.deepEqual(videoFrameSize(1080, 1920, 200), { height: 308, width: 560 });
  assert.deepEqual(videoFrameSize(480, 640, 4), { height: 476, width: 644 });
  assert.deepEqual(videoFrameSize(1080, 1920, 768), { height: 224, width: 420 });
  assert.deepEqual(videoFrameSize(64, 48, 4), { height: 392, width: 280 }); // raised to min_pixels
  assert.deepEqual(videoFrameSize(64, 48, 4, { resizedHeight: 50, resizedWidth: 90 }), { height: 56, width: 84 });
});

test("planVideoSampling puts the rules together", () => {
  const p = planVideoSampling(20, 10, 48, 64, { minPixels: 784, maxPixels: 56 * 56 });
  assert.equal(p.nframes, 4);
  assert.deepEqual(p.indices, [0, 6, 13, 19]);
  assert.deepEqual(p.size, { height: 56, width: 56 }); // 48x64 -> 56x56 = 3136, within [784, 3136]
  assert.deepEqual(planVideoSampling(20, 10, 48, 64, { maxPixels: 3000, minPixels: 784 }).size, { height: 28, width: 56 });
});

test("Node: a video file is unsupported_feature (no WebCodecs); frame lists stay frame lists", async () => {
  const { openVideo } = await import("../../src/vision/video_browser.ts");
  for (const src of ["clip.mp4", new Uint8Array(16), new Blob([new Uint8Array(16)])]) {
    await assert.rejects(openVideo(src, { label: "video 1" }), (e: unknown) =>
      e instanceof WebvlmError && e.code === "unsupported_feature" && /WebCodecs/.test(e.message) && /list of frames/.test(e.message));
  }
});

test("request: video-file options are validated and carried; frame lists unchanged", async () => {
  const { collectMedia } = await import("../../src/engine/request.ts");
  const msg = (part: Record<string, unknown>) => [{ role: "user" as const, content: [{ type: "video", ...part } as never] }];
  const [file] = collectMedia(msg({ video: "a.webm", fps: 1, min_frames: 6, max_frames: 20, total_pixels: 1e6, video_start: 0, video_end: 2, max_pixels: 5000 }));
  assert.equal(file.source, "a.webm");
  assert.deepEqual(
    { ...file.options },
    { minPixels: undefined, maxPixels: 5000, resizedHeight: undefined, resizedWidth: undefined, numCrops: undefined, fps: 1, nframes: undefined, minFrames: 6, maxFrames: 20, totalPixels: 1e6, videoStart: 0, videoEnd: 2 },
  );
  const seen: number[][] = [];
  const [withProgress] = collectMedia(msg({ video: new Blob([]), nframes: 4, on_progress: (d: number, t: number) => seen.push([d, t]) }));
  withProgress.options.onVideoProgress?.(1, 4);
  assert.deepEqual(seen, [[1, 4]]);
  const [list] = collectMedia(msg({ video: ["a.png", "b.png"], fps: 2 }));
  assert.deepEqual(list.source, ["a.png", "b.png"]);
  assert.equal(list.options.fps, undefined); // frame lists: qwen_vl_utils ignores the video-file options
  for (const bad of [{ video: [] }, { video: "" }, { video: 3 }, { video: "a.mp4", fps: 2, nframes: 4 }, { video: "a.mp4", nframes: 2.5 },
    { video: "a.mp4", fps: -1 }, { video: "a.mp4", video_start: 3, video_end: 1 }, { video: "a.mp4", on_progress: 1 }]) {
    assert.throws(() => collectMedia(msg(bad)), (e: unknown) => e instanceof WebvlmError && e.code === "bad_request", JSON.stringify(bad));
  }
});

test("Node: prepareMedia sends a video file to openVideo (unsupported_feature), not to the frame-list path", async () => {
  const { prepareMedia } = await import("../../src/models/qwen2_vl/media.ts");
  type Vc = Parameters<typeof prepareMedia>[2];
  const vc = { patchSize: 14, spatialMergeSize: 2, temporalPatchSize: 2, inChannels: 3 } as unknown as Vc;
  await assert.rejects(
    prepareMedia([{ kind: "video", source: new Uint8Array(64), options: { nframes: 4 } }], { minPixels: 3136, maxPixels: 12845056 }, vc),
    (e: unknown) => e instanceof WebvlmError && e.code === "unsupported_feature" && /video 1 is a video file/.test(e.message),
  );
});
