#!/usr/bin/env python3
"""The peer users would pick instead of webvlm: transformers' Qwen2VLForConditionalGeneration
at the same shapes (bench/qwen2-vl-2b.config.json) with random bf16 weights on a CUDA GPU.

Measures, like `npm run bench`: time to first token for one 448x448 image (256 LLM tokens) plus a
20-token question (a forward over the whole prompt, image encoding included, to the first
greedy id), and greedy decode tokens/s over 128 new tokens after that prompt (eos ignored).
Prints a table and writes JSON (default bench/results/peer-transformers.json).

    python3 bench/peer_transformers.py [--config FILE] [--tokens 128] [--out FILE]
"""
import argparse
import inspect
import json
import os
import statistics
import time

import torch
import transformers
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=os.path.join(HERE, "qwen2-vl-2b.config.json"))
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "peer-transformers.json"))
    args = ap.parse_args()

    cfg_json = json.load(open(args.config))
    config = Qwen2VLConfig(**cfg_json)
    torch.manual_seed(0)
    dev = torch.device("cuda")
    with dev:
        model = Qwen2VLForConditionalGeneration(config).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())

    # One still image of 448x448 -> grid (1, 32, 32) patches of 3*2*14*14 values, 256 LLM tokens.
    grid = torch.tensor([[1, 32, 32]], device=dev)
    pixel_values = torch.randn(32 * 32, 3 * 2 * 14 * 14, device=dev, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(9)
    question = torch.randint(1000, 101000, (20,), generator=g).tolist()
    ids = [151644, 872, 198, cfg_json["vision_start_token_id"], *[cfg_json["image_token_id"]] * 256,
           cfg_json["vision_end_token_id"], *question, 151645, 198, 151644, 77091, 198]
    input_ids = torch.tensor([ids], device=dev)
    attention_mask = torch.ones_like(input_ids)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, image_grid_thw=grid)
    # transformers >= 5 wants the processor's modality map (1 = image token) to build M-RoPE positions.
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["mm_token_type_ids"] = (input_ids == cfg_json["image_token_id"]).int()

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    def first_token():
        with torch.inference_mode():
            return model(**inputs).logits[0, -1].argmax().item()

    def generate():
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)

    def greedy_loop():
        """The plain cached greedy loop (no generate() bookkeeping): prompt forward, then one token per call."""
        with torch.inference_mode():
            out = model(**inputs, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            pkv = out.past_key_values
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.tokens - 1):
                out = model(input_ids=nxt, past_key_values=pkv, use_cache=True)
                pkv = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
                nxt.item()  # one readback per token, as an interactive runtime does
            return time.perf_counter() - t0

    first_token()  # warm-up (kernels, allocator)
    ttft = statistics.median(timed(first_token)[0] for _ in range(args.repeats))
    greedy_loop()
    loop_s = statistics.median(greedy_loop() for _ in range(args.repeats))
    loop_tps = (args.tokens - 1) / loop_s
    try:
        generate()
        gen = statistics.median(timed(generate)[0] for _ in range(args.repeats))
        decode_tps = (args.tokens - 1) / max(gen - ttft, 1e-9)
    except Exception as e:  # report the loop figure alone when generate() rejects these inputs
        print(f"generate() failed: {type(e).__name__}: {e}")
        gen, decode_tps = float("nan"), float("nan")

    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peer": f"transformers {transformers.__version__} Qwen2VLForConditionalGeneration, bf16, torch {torch.__version__}",
        "gpu": torch.cuda.get_device_name(0),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "parameters": params,
        "prompt_tokens": len(ids),
        "ttft_ms": ttft * 1000,
        "generate_ms": gen * 1000,
        "new_tokens": args.tokens,
        "decode_tokens_per_sec": decode_tps,
        "greedy_loop_tokens_per_sec": loop_tps,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(),
    }
    print(f"{report['peer']} on {report['gpu']}; {params / 1e9:.2f} B parameters")
    print(f"time to first token, 448x448 image + 20-token question ({len(ids)} tokens): {report['ttft_ms']:.1f} ms")
    print(f"greedy decode, {args.tokens} tokens: {decode_tps:.1f} tok/s with generate() ({report['generate_ms']:.0f} ms), "
          f"{loop_tps:.1f} tok/s in a plain cached loop")
    print(f"peak GPU memory: {report['peak_memory_bytes'] / 2**30:.2f} GiB")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    json.dump(report, open(args.out, "w"), indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
