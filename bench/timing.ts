// Wall-clock timing of GPU work: record `iters` repetitions into one submit and
// wait for the queue, after a warm-up. Median of `repeats` runs.
import type { GpuContext } from "../src/gpu/device.ts";
import { Recorder } from "../src/gpu/recorder.ts";

export interface Timing {
  /** milliseconds per iteration (median over repeats) */
  ms: number;
  repeats: number;
  iters: number;
}

export async function timeGpu(gpu: GpuContext, record: (rec: Recorder) => void, iters: number, repeats = 5): Promise<Timing> {
  const run = async (): Promise<number> => {
    const rec = new Recorder(gpu);
    for (let i = 0; i < iters; i++) record(rec);
    const start = performance.now();
    rec.submit();
    await gpu.device.queue.onSubmittedWorkDone();
    return (performance.now() - start) / iters;
  };
  await run(); // warm-up: pipeline compilation, first-touch allocation
  const samples: number[] = [];
  for (let r = 0; r < repeats; r++) samples.push(await run());
  samples.sort((a, b) => a - b);
  return { ms: samples[Math.floor(samples.length / 2)], repeats, iters };
}
