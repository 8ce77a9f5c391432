// The chat demo. It uses only the public API, like any embedder: plain DOM, no framework.
import {
  createEngine, listCachedModels, deleteCachedModel, storageEstimate, isWebvlmError, openVideo,
  type ChatEngine, type ChatMessage, type ContentPart, type ProgressEvent, type Usage,
} from "../src/index.ts";
import { renderMarkdown } from "./markdown.ts";
// openVideo previews the frames the engine will take from a video file (the engine samples the
// file again itself, by the same rules).

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;
const gpuStatus = $("gpu-status");
const modelSel = $<HTMLSelectElement>("model");
const customRow = $("custom-row");
const customUrl = $<HTMLInputElement>("custom-url");
const quantSel = $<HTMLSelectElement>("quant");
const loadBtn = $<HTMLButtonElement>("load");
const loadStatus = $("load-status");
const progressEl = $("progress");
const variantEl = $("variant");
const cacheList = $("cache-list");
const storageEl = $("storage");
const adapterEl = $("adapter");
const memoryEl = $("memory");
const transcript = $("transcript");
const composer = $<HTMLFormElement>("composer");
const thumbs = $("thumbs");
const prompt = $<HTMLTextAreaElement>("prompt");
const filesInput = $<HTMLInputElement>("files");
const maxTokens = $<HTMLInputElement>("max-tokens");
const newChatBtn = $<HTMLButtonElement>("new-chat");
const stopBtn = $<HTMLButtonElement>("stop");
const sendBtn = $<HTMLButtonElement>("send");
const dropHint = $("drop-hint");

const HUB: Record<string, string> = {
  "2b": "Qwen/Qwen2-VL-2B-Instruct",
  "2b-gptq": "Qwen/Qwen2-VL-2B-Instruct-GPTQ-Int4",
  "2b-awq": "Qwen/Qwen2-VL-2B-Instruct-AWQ",
  "7b": "Qwen/Qwen2-VL-7B-Instruct",
  "idefics2": "HuggingFaceM4/idefics2-8b-chatty",
  "phi35v": "microsoft/Phi-3.5-vision-instruct",
  "llama32v": "meta-llama/Llama-3.2-11B-Vision-Instruct",
};
const STORE_KEY = "webvlm-demo";
const params = new URLSearchParams(location.search);
// The tiny model: the URL given with ?model=, else where `npm start` serves it.
let tinyUrl = "./models/tiny-b-bf16/";

let engine: ChatEngine | null = null;
let loaded = false;
let busy = false;
let history: ChatMessage[] = [];
/** An image, or a video file with the frames qwen_vl_utils' rules sample from it (previews). */
interface Pending { file: File; url: string; kind: "image" | "video"; frames?: string[]; note?: string }
let pending: Pending[] = [];
let abort: AbortController | null = null;

// ------------------------------------------------------------- settings

interface Saved { model: string; custom: string; quant: string }

function restoreSettings(): void {
  let saved: Partial<Saved> = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORE_KEY) ?? "{}") as Partial<Saved>;
  } catch {
    // A corrupt entry just means defaults.
  }
  if (saved.model) modelSel.value = saved.model;
  if (saved.custom) customUrl.value = saved.custom;
  if (saved.quant) quantSel.value = saved.quant;
  // ?model= wins: a known name, a hub id, or a URL/path (the tiny model's location).
  const m = params.get("model");
  if (m) {
    const known = Object.entries(HUB).find(([k, id]) => m.toLowerCase() === k || m === id);
    if (known) modelSel.value = known[0];
    else if (m === "tiny") modelSel.value = "tiny";
    else if (/^(https?:|\.{0,2}\/)/.test(m)) {
      tinyUrl = m;
      modelSel.value = "tiny";
    } else {
      customUrl.value = m;
      modelSel.value = "custom";
    }
  }
  const q = params.get("quant");
  if (q && [...quantSel.options].some((o) => o.value === q)) quantSel.value = q;
  if (!modelSel.value) modelSel.value = "2b";
  customRow.hidden = modelSel.value !== "custom";
}

function saveSettings(): void {
  const s: Saved = { model: modelSel.value, custom: customUrl.value, quant: quantSel.value };
  localStorage.setItem(STORE_KEY, JSON.stringify(s));
}

type Location = string | { hub: string } | { baseUrl: string };
function chosenLocation(): Location {
  const v = modelSel.value;
  if (HUB[v]) return { hub: HUB[v] };
  if (v === "tiny") return { baseUrl: tinyUrl };
  const c = customUrl.value.trim();
  if (/^[\w.-]+\/[\w.-]+(@[\w.-]+)?$/.test(c)) return { hub: c };
  return { baseUrl: c };
}

// ------------------------------------------------------------- loading

const fmtBytes = (n: number): string =>
  n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} B`;

/** One bar per phase; per-file events are summed, "upload" already reports a running total. */
class PhaseBars {
  private files = new Map<string, Map<string, { loaded: number; total: number }>>();
  private bars = new Map<string, { bar: HTMLProgressElement; text: HTMLElement }>();
  constructor(private readonly root: HTMLElement) {
    root.replaceChildren();
  }
  update(e: ProgressEvent): void {
    let f = this.files.get(e.phase);
    if (!f) this.files.set(e.phase, (f = new Map()));
    f.set(e.phase === "upload" ? "*" : e.file, { loaded: e.loadedBytes, total: e.totalBytes });
    let loadedB = 0;
    let totalB = 0;
    for (const v of f.values()) {
      loadedB += v.loaded;
      totalB += v.total;
    }
    let ui = this.bars.get(e.phase);
    if (!ui) {
      const row = document.createElement("div");
      row.className = "phase";
      row.dataset.phase = e.phase;
      const text = document.createElement("span");
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.setAttribute("aria-label", `${e.phase} progress`);
      row.append(text, bar);
      this.root.append(row);
      this.bars.set(e.phase, (ui = { bar, text }));
    }
    const frac = totalB > 0 ? Math.min(1, loadedB / totalB) : 1;
    ui.bar.value = frac;
    // "compile" counts warm-up steps, not bytes.
    const amount = e.phase === "compile" ? `${loadedB} / ${totalB} warm-up steps` : `${fmtBytes(loadedB)} / ${fmtBytes(totalB)}`;
    ui.text.textContent = `${e.phase}: ${amount} (${(frac * 100).toFixed(0)}%)`;
  }
}

async function load(): Promise<void> {
  saveSettings();
  loadBtn.disabled = true;
  sendBtn.disabled = true;
  loaded = false;
  loadStatus.textContent = "Starting…";
  variantEl.textContent = "";
  const bars = new PhaseBars(progressEl);
  try {
    engine ??= await createEngine();
    const where = chosenLocation();
    loadStatus.textContent = `Loading ${typeof where === "string" ? where : "hub" in where ? where.hub : where.baseUrl}…`;
    const info = await engine.load(where, {
      quantization: quantSel.value as "q4" | "q8" | "f16",
      cache: true,
      onProgress: (e) => bars.update(e),
    });
    loaded = true;
    loadStatus.textContent = `Ready: ${info.id} (context ${info.contextLength} tokens)`;
    void showMemory();
    const f = info.formats;
    const hasF16 = adapterFeatures.includes("shader-f16");
    variantEl.textContent =
      `Weights: text ${f.textLinear}, embedding ${f.embedding}, vision ${f.vision}. ` +
      (hasF16
        ? "The adapter has shader-f16."
        : "The adapter lacks shader-f16, so webvlm uses its portable variant: f16 weights are stored packed and unpacked to f32 in the shaders.");
  } catch (e) {
    loadStatus.textContent = `Could not load: ${errText(e)}`;
  } finally {
    loadBtn.disabled = false;
    updateButtons();
    void refreshCache();
  }
}

const errText = (e: unknown): string => (isWebvlmError(e) ? `${e.code}: ${e.message}` : e instanceof Error ? e.message : String(e));

// ------------------------------------------------------------- cache panel

async function refreshCache(): Promise<void> {
  try {
    const models = await listCachedModels();
    const items = models.map((m) => {
      const li = document.createElement("li");
      li.className = "cache-item";
      const name = document.createElement("span");
      name.textContent = `${m.key} — ${fmtBytes(m.bytes)}${m.complete ? "" : " (partial)"}`;
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "Delete";
      del.setAttribute("aria-label", `Delete ${m.key} from storage`);
      del.addEventListener("click", () => {
        del.disabled = true;
        void deleteCachedModel(m.key).then(refreshCache);
      });
      li.append(name, del);
      return li;
    });
    if (items.length === 0) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No models stored yet.";
      items.push(li);
    }
    cacheList.replaceChildren(...items);
    const est = await storageEstimate();
    storageEl.textContent =
      est.usage !== undefined && est.quota !== undefined
        ? `Storage used: ${fmtBytes(est.usage)} of ${fmtBytes(est.quota)}${est.persisted ? " (persistent)" : ""}`
        : "Storage estimate unavailable.";
  } catch (e) {
    storageEl.textContent = `Storage unavailable: ${errText(e)}`;
  }
}

// ------------------------------------------------------------- images

function addFiles(files: Iterable<File>): void {
  for (const file of files) {
    if (file.type.startsWith("image/")) pending.push({ file, url: URL.createObjectURL(file), kind: "image" });
    else if (file.type.startsWith("video/") || /\.(mp4|m4v|mov|webm|mkv)$/i.test(file.name)) {
      const p: Pending = { file, url: "", kind: "video", frames: [], note: "sampling…" };
      pending.push(p);
      void previewVideo(p);
    }
  }
  renderThumbs();
}

/** The frames the engine will sample from a video file (fps 2, 4..768 frames), as small JPEG previews. */
async function previewVideo(p: Pending): Promise<void> {
  try {
    const v = await openVideo(p.file, {
      onProgress: (d, t) => {
        p.note = `frame ${d} / ${t}`;
        renderThumbs();
      },
    });
    for await (const f of v.frames()) {
      const h = 64;
      const w = Math.max(1, Math.round((f.bitmap.width * h) / f.bitmap.height));
      const c = document.createElement("canvas");
      c.width = w;
      c.height = h;
      c.getContext("2d")?.drawImage(f.bitmap, 0, 0, w, h);
      f.bitmap.close();
      p.frames!.push(c.toDataURL("image/jpeg", 0.8));
    }
    const secs = v.timestamps.length ? v.timestamps[v.timestamps.length - 1] - v.timestamps[0] : 0;
    p.note = `${v.plan.nframes} of ${v.plan.totalFrames} frames (${secs.toFixed(1)} s, ${v.plan.videoFps.toFixed(1)} fps, ${v.codec ?? "?"})`;
  } catch (e) {
    p.note = errText(e);
  }
  renderThumbs();
}

/** A video's sampled frames as a strip of small images, with its note (frame count, progress, error). */
function videoStrip(p: Pending): HTMLElement[] {
  const strip = document.createElement("div");
  strip.className = "frames";
  strip.title = p.file.name;
  for (const [k, src] of (p.frames ?? []).entries()) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = `${p.file.name} frame ${k + 1}`;
    strip.append(img);
  }
  const cap = document.createElement("figcaption");
  cap.textContent = `${p.file.name}: ${p.note ?? ""}`;
  return [strip, cap];
}

function renderThumbs(): void {
  thumbs.replaceChildren(
    ...pending.map((p, i) => {
      const fig = document.createElement("figure");
      fig.className = p.kind === "video" ? "thumb video" : "thumb";
      const rm = document.createElement("button");
      rm.type = "button";
      rm.className = "remove";
      rm.textContent = "×";
      rm.setAttribute("aria-label", `Remove ${p.kind} ${i + 1} (${p.file.name})`);
      rm.addEventListener("click", () => {
        if (p.url) URL.revokeObjectURL(p.url);
        pending.splice(i, 1);
        renderThumbs();
      });
      if (p.kind === "video") {
        fig.append(...videoStrip(p), rm);
        return fig;
      }
      const img = document.createElement("img");
      img.src = p.url;
      img.alt = p.file.name;
      fig.append(img, rm);
      return fig;
    }),
  );
}

// ------------------------------------------------------------- chat

function updateButtons(): void {
  sendBtn.disabled = !loaded || busy;
  stopBtn.disabled = !busy;
}

function bubble(role: "user" | "assistant"): HTMLElement {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Model";
  div.append(who);
  transcript.append(div);
  return div;
}

function statsText(u: Usage | undefined, stopped: boolean): string {
  const parts: string[] = [];
  if (u) {
    const n = (v: number | undefined, d = 1): string => (v === undefined ? "–" : v.toFixed(d));
    parts.push(
      `prompt ${u.prompt_tokens} tokens`,
      `completion ${u.completion_tokens} tokens`,
      `prefill ${n(u.prefill_tokens_per_second)} tok/s`,
      `decode ${n(u.decode_tokens_per_second)} tok/s`,
      `first token ${n(u.time_to_first_token_ms, 0)} ms`,
    );
    // Where the images were resized and patchified (the GPU by default; the CPU is the fallback).
    if (u.preprocess_device) parts.push(`images ${n(u.preprocess_ms, 0)} ms on ${u.preprocess_device.toUpperCase()}`);
  }
  if (stopped) parts.push("stopped");
  return parts.join(" · ");
}

async function send(): Promise<void> {
  const text = prompt.value.trim();
  if (!engine || !loaded || busy || (!text && pending.length === 0)) return;
  const content: ContentPart[] = pending.map((p): ContentPart =>
    p.kind === "video"
      // A video file: the engine decodes it (WebCodecs) and samples it (fps 2); progress shows in the stats line.
      ? { type: "video", video: p.file, on_progress: (d, t) => {
        stats.textContent = `decoding video frame ${d} / ${t}`;
        if (!stats.isConnected) a.append(stats);
      } }
      : { type: "image", image: p.file });
  if (text) content.push({ type: "text", text });
  const userMsg: ChatMessage = { role: "user", content };

  const u = bubble("user");
  if (pending.length) {
    const row = document.createElement("div");
    row.className = "msg-images";
    for (const p of pending) {
      if (p.kind === "video") {
        const fig = document.createElement("figure");
        fig.className = "video";
        fig.append(...videoStrip(p));
        row.append(fig);
        continue;
      }
      const img = document.createElement("img");
      img.src = p.url;
      img.alt = p.file.name;
      row.append(img);
    }
    u.append(row);
  }
  const ut = document.createElement("div");
  ut.className = "text";
  ut.textContent = text;
  u.append(ut);
  pending = [];
  renderThumbs();
  prompt.value = "";

  const a = bubble("assistant");
  const answerEl = document.createElement("div");
  answerEl.className = "text answer";
  const stats = document.createElement("div");
  stats.className = "stats";
  a.append(answerEl);

  busy = true;
  abort = new AbortController();
  updateButtons();
  let answer = "";
  let usage: Usage | undefined;
  let stopped = false;
  // The whole conversation goes with every turn; the engine reuses the shared KV prefix.
  const messages = [...history, userMsg];
  try {
    const stream = await engine.chat.completions.create({
      messages,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Math.max(1, Number(maxTokens.value) || 256),
      signal: abort.signal,
    });
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      if (c?.delta.content) {
        answer += c.delta.content;
        renderMarkdown(answerEl, answer);
        transcript.scrollTop = transcript.scrollHeight;
      }
      if (c?.finish_reason === "abort") stopped = true;
      if (chunk.usage) usage = chunk.usage;
    }
  } catch (e) {
    if (abort.signal.aborted) stopped = true;
    else {
      const err = document.createElement("div");
      err.className = "error";
      err.textContent = errText(e);
      a.append(err);
    }
  }
  if (abort.signal.aborted) stopped = true;
  history = [...messages, { role: "assistant", content: answer }];
  stats.textContent = statsText(usage, stopped);
  a.append(stats);
  void showMemory();
  busy = false;
  abort = null;
  updateButtons();
  prompt.focus();
}

/** A <dl> of (term, description) pairs. */
function definitionList(entries: readonly [string, string][]): HTMLDListElement {
  const dl = document.createElement("dl");
  for (const [k, v] of entries) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  return dl;
}

/** The engine's GPU memory: weights, KV cache (allocated / used), activations, pool slack. */
async function showMemory(): Promise<void> {
  if (!engine) return;
  let m;
  try {
    m = (await engine.stats()).memory;
  } catch {
    return; // a lost device or a terminated worker: nothing to show
  }
  const mib = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;
  memoryEl.replaceChildren(definitionList([
    ["weights", mib(m.weightsBytes)],
    ["KV cache", `${mib(m.kvCache.usedBytes)} used of ${mib(m.kvCache.allocatedBytes)} allocated`],
    ["activations", mib(m.activationsBytes)],
    ["pool slack", mib(m.poolSlackBytes)],
    ["total (peak)", `${mib(m.allocatedBytes)} (${mib(m.peakBytes)})`],
  ]));
}

function newChat(): void {
  abort?.abort();
  history = [];
  transcript.replaceChildren();
  for (const p of pending) if (p.url) URL.revokeObjectURL(p.url);
  pending = [];
  renderThumbs();
}

// ------------------------------------------------------------- start

let adapterFeatures: string[] = [];

async function checkGpu(): Promise<boolean> {
  if (!("gpu" in navigator) || !navigator.gpu) {
    gpuStatus.className = "warn";
    gpuStatus.textContent =
      "This browser has no WebGPU, which webvlm needs to run the model. Use a recent Chrome, Edge or another Chromium-based browser " +
      "(on Linux start it with --enable-unsafe-webgpu), Safari 26+, or Firefox 141+ on Windows; check that hardware acceleration is on.";
    return false;
  }
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    gpuStatus.className = "warn";
    gpuStatus.textContent =
      "WebGPU is present but no GPU adapter is available. Enable hardware acceleration in the browser settings, update the GPU driver, or try another browser.";
    return false;
  }
  adapterFeatures = [...adapter.features].map(String);
  const info = adapter.info;
  const name = `${info.vendor} ${info.architecture} ${info.description}`.trim() || "unknown adapter";
  gpuStatus.className = "ok";
  gpuStatus.textContent = `WebGPU ready (${name}).` + (adapterFeatures.includes("shader-f16") ? "" : " No shader-f16: the portable f32-arithmetic variant will be used.");
  const entries: [string, string][] = [
    ["adapter", name],
    ["features", adapterFeatures.filter((f) => ["shader-f16", "subgroups", "timestamp-query"].includes(f)).join(", ") || "none of shader-f16, subgroups, timestamp-query"],
    ["maxStorageBufferBindingSize", adapter.limits.maxStorageBufferBindingSize.toLocaleString()],
    ["maxBufferSize", adapter.limits.maxBufferSize.toLocaleString()],
  ];
  adapterEl.replaceChildren(definitionList(entries));
  return true;
}

function wire(): void {
  modelSel.addEventListener("change", () => {
    customRow.hidden = modelSel.value !== "custom";
    saveSettings();
  });
  quantSel.addEventListener("change", saveSettings);
  customUrl.addEventListener("change", saveSettings);
  loadBtn.addEventListener("click", () => void load());
  composer.addEventListener("submit", (e) => {
    e.preventDefault();
    void send();
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      void send();
    }
  });
  stopBtn.addEventListener("click", () => abort?.abort());
  newChatBtn.addEventListener("click", newChat);
  filesInput.accept = "image/*,video/*"; // video files are sampled by qwen_vl_utils' rules (WebCodecs)
  filesInput.addEventListener("change", () => {
    addFiles(filesInput.files ?? []);
    filesInput.value = "";
  });
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData?.files;
    if (files && files.length) {
      e.preventDefault();
      addFiles(files);
    }
  });
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    dropHint.hidden = false;
  });
  document.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) dropHint.hidden = true;
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    dropHint.hidden = true;
    addFiles(e.dataTransfer?.files ?? []);
  });
}

async function main(): Promise<void> {
  restoreSettings();
  wire();
  void refreshCache();
  let ok = false;
  try {
    ok = await checkGpu();
  } catch (e) {
    gpuStatus.className = "warn";
    gpuStatus.textContent = `WebGPU failed to start: ${errText(e)}`;
  }
  loadBtn.disabled = !ok;
  updateButtons();
}

void main();
