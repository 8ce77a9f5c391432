#!/usr/bin/env node
// Entry point of the `webvlm` command: runs scripts/cli.ts from source.
import "./register-loaders.mjs";

await import("./cli.ts");
