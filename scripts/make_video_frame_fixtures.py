#!/usr/bin/python3
"""Writes test/fixtures/vision/frames/: videos given as lists of frames (PNG files) and what
Qwen2-VL's pipeline makes of them, following the Qwen2-VL release of qwen_vl_utils (0.0.8,
QwenLM/Qwen2-VL qwen-vl-utils/src/qwen_vl_utils/vision_process.py) and transformers'
Qwen2VLImageProcessor:
  fetch_video(list): every frame through fetch_image with the part's options (image budgets
    min_pixels 4*28*28, max_pixels 16384*28*28, or the part's own min_pixels/max_pixels; or
    resized_height/resized_width through qwen_vl_utils' smart_resize), PIL's default BICUBIC
    resize of each frame to its own size; the list padded to ceil(n / 2) * 2 frames with the
    last one;
  Qwen2VLImageProcessor._preprocess(videos): every frame resized (PIL BICUBIC) to transformers'
    smart_resize of the FIRST frame's size under the checkpoint's min/max pixels, rescaled,
    normalized (float32) and patchified in temporal pairs.
Deterministic. Usage: /usr/bin/python3 scripts/make_video_frame_fixtures.py (python3-pil, python3-numpy)
"""
import json
import math
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_vision_fixtures import MEAN, MERGE, PATCH, STD, TEMPORAL, sha256, smart_resize, smart_resize_qvu, synth  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "vision", "frames")
FETCH_MIN, FETCH_MAX = 4 * 28 * 28, 16384 * 28 * 28
CKPT_MIN, CKPT_MAX = 3136, 12845056


def fetch_image(path, opts):
    image = Image.open(path).convert("RGB")
    if "resized_height" in opts and "resized_width" in opts:
        rh, rw = smart_resize_qvu(opts["resized_height"], opts["resized_width"], 28)
    else:
        width, height = image.size
        rh, rw = smart_resize_qvu(height, width, 28, opts.get("min_pixels", FETCH_MIN), opts.get("max_pixels", FETCH_MAX))
    return image.resize((rw, rh))


def fetch_video(paths, opts):
    images = [fetch_image(p, opts) for p in paths]
    nframes = math.ceil(len(images) / 2) * 2
    images.extend([images[-1]] * (nframes - len(images)))
    return images


def process_video(frames, ckpt_min, ckpt_max):
    w0, h0 = frames[0].size
    rh, rw = smart_resize(h0, w0, PATCH * MERGE, ckpt_min, ckpt_max)
    chw = []
    for f in frames:
        resized = np.array(f.resize((rw, rh), resample=Image.BICUBIC, reducing_gap=None))
        x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
        chw.append(x.transpose(2, 0, 1))
    patches = np.array(chw)
    if patches.shape[0] % TEMPORAL != 0:
        patches = np.concatenate([patches, np.repeat(patches[-1][np.newaxis], TEMPORAL - 1, axis=0)], axis=0)
    c = patches.shape[1]
    gt, gh, gw = patches.shape[0] // TEMPORAL, rh // PATCH, rw // PATCH
    patches = patches.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    flat = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH)
    assert flat.dtype == np.float32
    return flat, (gt, gh, gw)


def main():
    os.makedirs(OUT, exist_ok=True)
    files = {}

    def frame(name, w, h, seed):
        path = os.path.join(OUT, name)
        Image.fromarray(synth(w, h, seed, noise=3.0)).save(path, optimize=False)
        files[name] = path
        return name

    kept = [frame(f"kept_{i}.png", 112, 84, 100 + i) for i in range(4)]
    five = [frame(f"five_{i}.png", 150, 90, 200 + i) for i in range(5)]
    odd = [frame(f"odd_{i}.png", 60, 60, 300 + i) for i in range(3)]
    mixed = [frame("mixed_0.png", 112, 84, 500), frame("mixed_1.png", 150, 90, 501), frame("mixed_2.png", 47, 95, 502)]
    cases = [
        # name, frames, part options, checkpoint min/max pixels
        ("kept at their size", kept, {}, (CKPT_MIN, CKPT_MAX)),
        ("five frames, each resized", five, {}, (CKPT_MIN, CKPT_MAX)),
        ("an odd count", odd, {}, (CKPT_MIN, CKPT_MAX)),
        ("the part's max_pixels", five, {"max_pixels": 28 * 28 * 6}, (CKPT_MIN, CKPT_MAX)),
        ("the part's min_pixels", odd, {"min_pixels": 28 * 28 * 9}, (CKPT_MIN, CKPT_MAX)),
        ("resized_height/width", kept, {"resized_height": 100, "resized_width": 50}, (CKPT_MIN, CKPT_MAX)),
        ("frames of different sizes", mixed, {}, (CKPT_MIN, CKPT_MAX)),
        ("a checkpoint max_pixels below the frames'", kept, {}, (CKPT_MIN, 28 * 28 * 4)),
    ]
    meta = {"cases": []}
    for name, frames, opts, (mn, mx) in cases:
        fetched = fetch_video([files[f] for f in frames], opts)
        flat, grid = process_video(fetched, mn, mx)
        meta["cases"].append({
            "name": name, "frames": frames, "options": opts, "min_pixels": mn, "max_pixels": mx,
            "fetched": [list(f.size) for f in fetched], "grid_thw": list(grid), "tokens": int(np.prod(grid)) // (MERGE * MERGE),
            "pixel_values_sha256": sha256(flat.tobytes()), "first": [float(v) for v in flat.reshape(-1)[:6]],
            "last": [float(v) for v in flat.reshape(-1)[-6:]],
        })
    with open(os.path.join(OUT, "expected.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
