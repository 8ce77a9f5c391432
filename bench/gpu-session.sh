#!/bin/bash
# The one prepared run for a lent GPU machine (the `device` tool): the packed end-to-end
# benchmark (q4, f16), the Idefics2-8B forward at the real shapes (q4 text, f16 vision/connector:
# weights, limits, shards, peak memory, vision/prefill/TTFT/decode), Llama-3.2-11B-Vision likewise, the kernel benchmark at full
# sizes, and the transformers peer on the same GPU when torch/transformers are installed there.
# Needs `npm run bench:pack` first (.device/ carried). Every report and log lands in $OUT (or bench/results/gpu).
#   [WEBVLM_PEER=0] bash bench/gpu-session.sh [model-bench options...]
set -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
export OUT="$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1; date -u; } | tee "$out/gpu.txt"
timeout 240 bash .device/run.sh --formats q4,f16 "$@" 2>&1 | tee "$out/model.log"
timeout 240 bash .device/run.sh --model idefics2-8b 2>&1 | tee "$out/idefics2-8b.log"
timeout 150 bash .device/run.sh --model llama-3.2-11b-vision 2>&1 | tee "$out/llama-3.2-11b-vision.log"
timeout 60 bash .device/run.sh kernels --full 2>&1 | tee "$out/kernels.log"
if [ "${WEBVLM_PEER:-1}" = "0" ]; then
  echo "peer skipped (WEBVLM_PEER=0)" | tee "$out/peer.log"
elif python3 -c 'import torch, transformers' 2>/dev/null; then
  PYTHONUNBUFFERED=1 timeout 100 python3 bench/peer_transformers.py --out "$out/peer-transformers.json" 2>&1 | tee "$out/peer.log"
else
  echo "no torch/transformers on this machine: peer skipped" | tee "$out/peer.log"
fi
