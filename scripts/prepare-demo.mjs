#!/usr/bin/env node
// Before `npm start`: writes the tiny random test checkpoint the demo offers as
// "Tiny test model", so the page works offline (generated, never committed).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";

const dir = "public/models/tiny-b-bf16";
if (!existsSync(`${dir}/config.json`)) {
  execFileSync(process.execPath, ["--import", "./scripts/register-loaders.mjs", "scripts/make_tiny_qwen2vl.ts", "--shape", "tiny-b", "--bf16", "--out", "public/models"], { stdio: "inherit" });
}
