// Where a decode step's wall time goes on the host: recording (JS + Dawn encoding of every
// dispatch), submit, and the wait for the mapped token id. Uses the 2B config's layer count with
// a narrow width so the GPU work is small and the host side shows.
import { acquireNodeGpu } from "../src/gpu/node.ts";
import { parseQwen2VLConfig } from "../src/models/qwen2_vl/config.ts";
import { Qwen2VLModel } from "../src/models/qwen2_vl/model.ts";
import { Recorder } from "../src/gpu/recorder.ts";
import { QWEN2VL_2B_CONFIG, TINY_CONFIG } from "./configs.ts";
import { randomQwen2VLWeights } from "./random_weights.ts";

const gpu = await acquireNodeGpu();
const config = parseQwen2VLConfig({ ...TINY_CONFIG, num_hidden_layers: QWEN2VL_2B_CONFIG.num_hidden_layers });
const weights = await randomQwen2VLWeights(gpu, config, { textLinear: "q4", embedding: "f16", vision: "f16" });
const model = Qwen2VLModel.fromWeights(gpu, config, weights);
const cache = model.createCache(256);
await model.prefill([1000, 1001, 1002, 1003], {}, cache);
const proto = Recorder.prototype as unknown as { submit: () => void; dispatch: (s: unknown) => void };
const submit = proto.submit;
const dispatch = proto.dispatch;
let tSubmit = 0;
let tDispatch = 0;
let tRecord = 0;
let stepStart = 0;
proto.submit = function (this: Recorder) { const t = performance.now(); tRecord += t - stepStart; submit.call(this); tSubmit += performance.now() - t; };
proto.dispatch = function (this: Recorder, s: unknown) { const t = performance.now(); dispatch.call(this, s); tDispatch += performance.now() - t; };
for (let i = 0; i < 3; i++) await model.decode(1000, cache);
const n = 20;
tSubmit = tDispatch = tRecord = 0;
const t0 = performance.now();
for (let i = 0; i < n; i++) {
  stepStart = performance.now();
  await model.decode(1000, cache);
}
const wall = (performance.now() - t0) / n;
console.log(`decode step: ${wall.toFixed(2)} ms wall; recording ${(tRecord / n).toFixed(2)} ms, of which dispatch() calls ${(tDispatch / n).toFixed(2)} ms, submit() ${(tSubmit / n).toFixed(2)} ms per token`);
