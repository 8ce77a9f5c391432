// Pre-quantized GPTQ / AWQ checkpoints end to end on the GPU: tiny-a (scripts/make_tiny_qwen2vl.ts)
// with its decoder linears replaced by a fixture variant's packed tensors (test/fixtures/quant,
// AutoGPTQ / AutoAWQ layouts: X.weight removed, X.qweight / X.qzeros / X.scales (/ X.g_idx) added,
// config.json given the variant's quantization_config), opened by the real loader (openCheckpoint
// -> gptq_awq.ts readQuantized) and run by the Qwen2-VL model, against the f32 CPU reference
// built on the same checkpoint with those linears replaced by the independent reference
// dequantizer's values (test/reference/gptq_awq_dequant.ts): last-position logits NMSE <= 1e-6
// and 32 greedy tokens identical (WEBVLM_QUANT_TOKENS overrides the count). Everything else (embedding,
// vision tower, norms, biases) is tiny-a's f32 tensors, loaded as f32.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import type { GpuContext } from "../../src/gpu/device.ts";
import { acquireNodeGpu } from "../../src/gpu/node.ts";
import { openCheckpoint } from "../../src/loader/checkpoint.ts";
import { writeSafetensorsFile } from "../../src/loader/file_node.ts";
import type { TensorToWrite } from "../../src/loader/safetensors.ts";
import type { TensorSource, WeightLoadOptions } from "../../src/models/common/source.ts";
import { parseQwen2VLConfig } from "../../src/models/qwen2_vl/config.ts";
import { preprocessImage, type PreprocessedImage } from "../../src/models/qwen2_vl/image_processor.ts";
import { loadQwen2VL } from "../../src/models/qwen2_vl/model.ts";
import { visionTokenCount } from "../../src/models/qwen2_vl/vision.ts";
import { buildChatPrompt, ChatTemplate, resolveChatTemplate } from "../../src/tokenizer/chat_template.ts";
import { TextTokenizer } from "../../src/tokenizer/tokenizer.ts";
import { makeTinyQwen2VL } from "../../scripts/make_tiny_qwen2vl.ts";
import { dequantizeFixture, quantFixtures, readRawSafetensors } from "../reference/gptq_awq_dequant.ts";
import { buildReferenceModel, greedyGenerate, parseConfig, readSafetensorsDir } from "../reference/qwen2vl_reference.ts";
import { nmse } from "../util/compare.ts";

const TOKENS = Number(process.env.WEBVLM_QUANT_TOKENS ?? 32);
// Each greedy step costs ~1 s on SwiftShader, so by default: GPTQ 4-bit asymmetric (v1 zeros, group
// 32) and AutoAWQ GEMM (group 64) with all TOKENS, and GPTQ 8-bit asymmetric (whole-row groups) with
// the logits and the first EXTRA_TOKENS. WEBVLM_PREQUANT_VARIANTS=all (or a comma list of fixture
// names) runs every loadable variant (the symmetric ones load without zero points) with TOKENS.
const EXTRA_TOKENS = Number(process.env.WEBVLM_QUANT_EXTRA_TOKENS ?? 4);
const chosen = process.env.WEBVLM_PREQUANT_VARIANTS;
const VARIANTS: [string, number][] = chosen
  ? (chosen === "all" ? quantFixtures().map((f) => f.name).filter((n) => n !== "gptq_4bit_descact_g32") : chosen.split(",")).map((n) => [n.trim(), TOKENS])
  : [["gptq_4bit_asym_g32", TOKENS], ["awq_4bit_g64", TOKENS], ["gptq_8bit_asym_gm1", EXTRA_TOKENS]];
const F32: WeightLoadOptions = { textLinear: "f32", vision: "f32", embedding: "f32" };

let root = "";
let base = "";
let gpu: GpuContext;
let img: PreprocessedImage;
let ids: number[] = [];

/** A gradient image (84x56: no resize needed). */
function gradient(w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      out[i] = Math.round((255 * x) / (w - 1));
      out[i + 1] = Math.round((255 * y) / (h - 1));
      out[i + 2] = (x * 7 + y * 13) & 255;
    }
  }
  return out;
}

const readJson = async (dir: string, f: string): Promise<Record<string, unknown>> => JSON.parse(await readFile(join(dir, f), "utf8"));

before(async () => {
  root = await mkdtemp(join(tmpdir(), "webvlm-prequant-"));
  base = join(root, "tiny-a");
  await makeTinyQwen2VL(base, "tiny-a");
  gpu = await acquireNodeGpu();
  const tok = new TextTokenizer(await readJson(base, "tokenizer.json"), await readJson(base, "tokenizer_config.json"));
  const tpl = new ChatTemplate(resolveChatTemplate({ chatTemplateJson: await readJson(base, "chat_template.json") }));
  img = preprocessImage(gradient(84, 56), 84, 56);
  const messages = [{
    role: "user",
    content: [{ type: "image" as const }, { type: "text" as const, text: "What is in this picture? Describe its colours and shapes." }],
  }];
  const pads = [
    { kind: "image", tokenId: 151655, counts: [visionTokenCount([img.grid], 2)] },
    { kind: "video", tokenId: 151656, counts: [] },
  ];
  ids = buildChatPrompt(tok, tpl, messages, pads, { addGenerationPrompt: true }).ids;
});

after(async () => {
  gpu?.destroy();
  if (root) await rm(root, { recursive: true, force: true });
});

/** tiny-a with the variant's packed linears in place of its f32 ones; returns the directory. */
async function quantizedCheckpoint(variant: string): Promise<string> {
  const f = quantFixtures().find((x) => x.name === variant);
  if (!f) throw new Error(`no fixture variant ${variant} in test/fixtures/quant`);
  const dir = join(root, variant);
  await mkdir(dir);
  for (const file of await readdir(base)) if (file !== "model.safetensors") await copyFile(join(base, file), join(dir, file));
  const raw = readRawSafetensors(join(base, "model.safetensors"));
  const packed = readRawSafetensors(f.file);
  const modules = new Set([...packed.keys()].filter((n) => n.endsWith(".qweight")).map((n) => n.slice(0, -".qweight".length)));
  assert.equal(modules.size, 14);
  const tensors: TensorToWrite[] = [];
  for (const [name, t] of raw) {
    const m = name.endsWith(".weight") ? name.slice(0, -".weight".length) : "";
    if (modules.has(m)) {
      for (const part of ["qweight", "qzeros", "scales", "g_idx"]) {
        const p = packed.get(`${m}.${part}`);
        if (p) tensors.push({ name: `${m}.${part}`, dtype: p.dtype as TensorToWrite["dtype"], shape: p.shape, data: p.bytes.slice() });
      }
      modules.delete(m);
    } else {
      tensors.push({ name, dtype: t.dtype as TensorToWrite["dtype"], shape: t.shape, data: t.bytes.slice() });
    }
  }
  assert.equal(modules.size, 0, `tiny-a lacks ${[...modules].join(", ")}`);
  await writeSafetensorsFile(join(dir, "model.safetensors"), tensors);
  const config = await readJson(dir, "config.json");
  await writeFile(join(dir, "config.json"), JSON.stringify({ ...config, quantization_config: f.quantizationConfig }, null, 2));
  return dir;
}

for (const [variant, TOKENS] of VARIANTS) {
  test(`${variant}: logits and ${TOKENS} greedy tokens equal the reference on the dequantized weights`, async (t) => {
    const dir = await quantizedCheckpoint(variant);
    const ckpt = await openCheckpoint({ path: dir });
    const config = parseQwen2VLConfig(ckpt.config, ckpt.generationConfig);
    const reads: string[] = [];
    const quantized: string[] = [];
    const w = ckpt.weights;
    const source: TensorSource = {
      has: (n) => w.has(n),
      shape: (n) => w.shape(n),
      read: (n) => (reads.push(n), w.read(n)),
      readRows: (n, s, c) => (reads.push(n), w.readRows(n, s, c)),
      readQuantized: async (n) => {
        const p = await w.readQuantized!(n);
        if (p) quantized.push(n);
        return p;
      },
    };
    const model = await loadQwen2VL(gpu, config, source, F32);
    try {
      // Every decoder linear came packed, none through an f32 read.
      assert.equal(quantized.length, 14, quantized.join(", "));
      for (const n of quantized) assert.ok(!reads.includes(n), `${n} was read as f32`);

      const cache = model.createCache(ids.length + TOKENS + 1);
      const pre = await model.prefill(ids, { images: [{ grid: img.grid, pixelValues: img.pixelValues }] }, cache, { read: "both" });
      const tokens = [pre.tokenId!];
      while (tokens.length < TOKENS && !config.eosTokenIds.includes(tokens[tokens.length - 1])) {
        tokens.push((await model.decode(tokens[tokens.length - 1], cache)).tokenId!);
      }
      cache.dispose();

      // The reference: tiny-a's f32 tensors, the linears replaced by the reference dequantizer's values.
      const raw = readSafetensorsDir(base);
      const deq = dequantizeFixture(quantFixtures().find((x) => x.name === variant)!);
      for (const [m, d] of deq) {
        const tt = raw.get(`${m}.weight`)!;
        assert.deepEqual(tt.shape, [d.rows, d.cols], m);
        tt.data = d.values;
      }
      const ref = buildReferenceModel(parseConfig(JSON.parse(readFileSync(join(base, "config.json"), "utf8"))), raw);
      const want = greedyGenerate(ref, ids, img.pixelValues, [img.grid], TOKENS, config.eosTokenIds);
      const e = nmse(pre.logits!, want.firstLogits);
      assert.ok(e <= 1e-6, `${variant}: logits NMSE ${e} vs the reference on the dequantized weights`);
      assert.deepEqual(tokens, want.tokens);
      t.diagnostic(`${variant}: NMSE ${e.toExponential(2)}, ${tokens.length} greedy tokens identical; GPU weights ${(model.weights.gpuBytes / 1e6).toFixed(2)} MB`);
    } finally {
      model.dispose();
      await ckpt.close();
    }
  });
}
