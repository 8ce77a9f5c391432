#!/usr/bin/python3
"""Writes test/fixtures/vision/idefics2/: small test images and what an independent numpy port
of transformers' Idefics2ImageProcessor (PIL path) and Idefics2VisionEmbeddings' position ids
make of them, following /work/shared/IDEFICS2.md §5 and §6.2-6.4 step by step:

  load: Image.open -> ImageOps.exif_transpose -> convert("RGB")   (alpha dropped, not composited)
  split (do_image_splitting): 4 quadrants of the uint8 image, then the full image
  resize: get_resize_output_image_size (float64, int() truncation), PIL Image.resize(filter)
  rescale: float32(float64(x) * rescale_factor);  normalize: (x - f32(mean)) / f32(std) in float32
  pad: bottom/right zeros to the request's max height/width, pixel_attention_mask
  patches: valid floor(h/p) x floor(w/p) block, each patch flattened (c, y, x)
  position ids: float32 fractional coordinates bucketized by searchsorted(side="right")

Outputs: <name>.png images, cases.json (cases, shapes, offsets into cases.bin), cases.bin
(float32 pixel_values / patch rows, uint8 masks, int32 position ids back to back, 4-aligned),
buckets.json (bucket ids per (nps, n)), sizes.json (resize sizes).
Deterministic: run it again and the files come out the same.

Usage: /usr/bin/python3 scripts/make_idefics2_fixtures.py   (needs python3-pil, python3-numpy)
"""
import json
import math
import os

import numpy as np
from PIL import Image, ImageOps

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "vision", "idefics2")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PIL_FILTERS = {2: Image.BILINEAR, 3: Image.BICUBIC}


# ---------------------------------------------------------------- images
def lcg_bytes(n, seed):
    """Deterministic bytes with ~1/6 zeros and ~1/6 255s (extremes exercise the clamps)."""
    out = np.empty(n, dtype=np.uint8)
    s = seed & 0xFFFFFFFF
    for i in range(n):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        a = s >> 24
        if a < 40:
            out[i] = 0
        elif a >= 216:
            out[i] = 255
        else:
            s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
            out[i] = s >> 24
    return out


def smooth_plus_noise(w, h, c, seed):
    """A gradient with noise on top: resampling must get both edges and flat areas right."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 7 + y * 3 + ch * 50) % 256 for ch in range(c)], axis=-1).astype(np.int32)
    noise = lcg_bytes(w * h * c, seed).reshape(h, w, c).astype(np.int32)
    return np.where(noise % 3 == 0, noise, base).astype(np.uint8)


def make_images():
    imgs = {
        "rgb_30x20.png": Image.fromarray(smooth_plus_noise(30, 20, 3, 1), "RGB"),
        "rgb_130x77.png": Image.fromarray(smooth_plus_noise(130, 77, 3, 2), "RGB"),
        "odd_51x37.png": Image.fromarray(smooth_plus_noise(51, 37, 3, 3), "RGB"),
        "tall_23x90.png": Image.fromarray(smooth_plus_noise(23, 90, 3, 4), "RGB"),
        # Alpha from 0 to 255 (and colour under alpha 0): convert("RGB") must ignore it.
        "rgba_33x29.png": Image.fromarray(smooth_plus_noise(33, 29, 4, 5), "RGBA"),
    }
    for name, im in imgs.items():
        im.save(os.path.join(OUT, name), optimize=False, compress_level=9)
    # EXIF orientations that load_image's exif_transpose must undo, in each container PIL reads them from.
    exif_images = {
        "exif6_31x19.png": (Image.fromarray(smooth_plus_noise(31, 19, 3, 6), "RGB"), 6, {}),
        "exif5_27x17.jpg": (Image.fromarray(smooth_plus_noise(27, 17, 3, 7), "RGB"), 5, {"quality": 90}),
        "exif7_20x26.webp": (Image.fromarray(smooth_plus_noise(20, 26, 3, 8), "RGB"), 7, {"lossless": True}),
    }
    for o in range(1, 9):
        exif_images[f"orient{o}_7x5.png"] = (Image.fromarray(smooth_plus_noise(7, 5, 3, 10 + o), "RGB"), o, {})
    for name, (im, orientation, kw) in exif_images.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(os.path.join(OUT, name), exif=exif.tobytes(), **kw)


def load(name):
    im = Image.open(os.path.join(OUT, name))
    im = ImageOps.exif_transpose(im)
    return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- Idefics2ImageProcessor (§5)
def resize_size(h, w, longest, shortest):
    ar = w / h
    if w >= h and w > longest:
        w = longest
        h = int(w / ar)
    elif h > w and h > longest:
        h = longest
        w = int(h * ar)
    h = max(h, shortest)
    w = max(w, shortest)
    return h, w


def split(img):
    h, w = img.shape[:2]
    mh, mw = h // 2, w // 2
    return [img[0:mh, 0:mw], img[0:mh, mw:w], img[mh:h, 0:mw], img[mh:h, mw:w], img]


def process_one(img, cfg):
    h, w = img.shape[:2]
    size = cfg.get("size", {"longest_edge": 980, "shortest_edge": 378})
    nh, nw = resize_size(h, w, size["longest_edge"], size["shortest_edge"])
    pil = Image.fromarray(img, "RGB").resize((nw, nh), PIL_FILTERS[cfg.get("resample", 2)])
    x = np.asarray(pil)
    x = (x.astype(np.float64) * cfg.get("rescale_factor", 1 / 255)).astype(np.float32)
    mean = np.array(cfg.get("image_mean", [0.5] * 3), dtype=np.float32)
    std = np.array(cfg.get("image_std", [0.5] * 3), dtype=np.float32)
    x = (x - mean) / std
    assert x.dtype == np.float32
    return x.transpose(2, 0, 1).copy()  # CHW


def process_request(names, cfg):
    subs = []
    for name in names:
        img = load(name)
        parts = split(img) if cfg.get("do_image_splitting", False) else [img]
        subs.extend(process_one(p, cfg) for p in parts)
    hmax = max(s.shape[1] for s in subs)
    wmax = max(s.shape[2] for s in subs)
    pv = np.zeros((len(subs), 3, hmax, wmax), dtype=np.float32)
    mask = np.zeros((len(subs), hmax, wmax), dtype=np.uint8)
    for i, s in enumerate(subs):
        pv[i, :, : s.shape[1], : s.shape[2]] = s
        mask[i, : s.shape[1], : s.shape[2]] = 1
    return subs, pv, mask


# ---------------------------------------------------------------- vision embeddings (§6.2-6.4)
def boundaries(nps):
    return np.arange(1 / nps, 1.0, 1 / nps, dtype=np.float64).astype(np.float32)


def buckets(n, nps):
    f = (np.arange(n, dtype=np.float32) / np.float32(n)) * np.float32(1 - 1e-6)
    assert f.dtype == np.float32
    return np.searchsorted(boundaries(nps), f, side="right").astype(np.int32)


def patches_of(pv_n, mask_n, p, nps):
    """Valid patches from the padded tensors, as the model sees them (patch mask from pam)."""
    hm, wm = mask_n.shape
    r_all, c_all = hm // p, wm // p
    pm = mask_n[: r_all * p, : c_all * p].reshape(r_all, p, c_all, p).all(axis=(1, 3))
    nh, nw = int(pm[:, 0].sum()), int(pm[0].sum())
    assert pm[:nh, :nw].all() and pm.sum() == nh * nw
    rows = pv_n[:, : nh * p, : nw * p].reshape(3, nh, p, nw, p).transpose(1, 3, 0, 2, 4).reshape(nh * nw, 3 * p * p)
    bh, bw = buckets(nh, nps), buckets(nw, nps)
    pos = (bh[:, None] * nps + bw[None, :]).reshape(-1).astype(np.int32)
    return nh, nw, rows.astype(np.float32), pos


# ---------------------------------------------------------------- output
class Blob:
    def __init__(self):
        self.parts = []
        self.size = 0

    def add(self, arr):
        b = np.ascontiguousarray(arr).tobytes()
        entry = {"offset": self.size, "length": len(b), "dtype": str(arr.dtype), "shape": list(arr.shape)}
        pad = (-len(b)) % 4
        self.parts.append(b + b"\0" * pad)
        self.size += len(b) + pad
        return entry

    def write(self, path):
        with open(path, "wb") as f:
            f.write(b"".join(self.parts))


CASES = [
    # name, images, preprocessor_config, patch size, vision image_size
    ("upscaled", ["rgb_30x20.png"], {"size": {"longest_edge": 64, "shortest_edge": 40}}, 8, 64),
    ("downscaled", ["rgb_130x77.png"], {"size": {"longest_edge": 64, "shortest_edge": 28}}, 8, 64),
    ("odd_split", ["odd_51x37.png"], {"size": {"longest_edge": 48, "shortest_edge": 20}, "do_image_splitting": True}, 7, 70),
    ("alpha", ["rgba_33x29.png"], {"size": {"longest_edge": 30, "shortest_edge": 28}}, 6, 36),
    ("two_images", ["rgb_30x20.png", "tall_23x90.png"], {"size": {"longest_edge": 64, "shortest_edge": 28}}, 8, 40),
    ("split_two", ["rgb_130x77.png", "rgba_33x29.png"], {"size": {"longest_edge": 40, "shortest_edge": 16}, "do_image_splitting": True}, 5, 35),
    ("exif_png_split", ["exif6_31x19.png"], {"size": {"longest_edge": 48, "shortest_edge": 12}, "do_image_splitting": True}, 4, 32),
    ("exif_jpeg_webp", ["exif5_27x17.jpg", "exif7_20x26.webp"], {"size": {"longest_edge": 24, "shortest_edge": 16}}, 4, 24),
    ("bicubic_clip", ["odd_51x37.png"], {"size": {"longest_edge": 40, "shortest_edge": 16}, "resample": 3,
                                         "image_mean": CLIP_MEAN, "image_std": CLIP_STD}, 4, 16),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    make_images()
    blob = Blob()
    cases = []
    for name, images, cfg, p, image_size in CASES:
        full_cfg = {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
                    "rescale_factor": 0.00392156862745098, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                    "do_image_splitting": False}
        full_cfg.update(cfg)
        subs, pv, mask = process_request(images, full_cfg)
        nps = image_size // p
        crops = []
        for i in range(len(subs)):
            nh, nw, rows, pos = patches_of(pv[i], mask[i], p, nps)
            crops.append({"height": subs[i].shape[1], "width": subs[i].shape[2], "patches_h": nh, "patches_w": nw,
                          "patch_rows": blob.add(rows), "position_ids": blob.add(pos)})
        cases.append({
            "name": name, "images": images, "preprocessor_config": full_cfg, "patch_size": p, "image_size": image_size,
            "pixel_values": blob.add(pv), "pixel_attention_mask": blob.add(mask), "crops": crops,
        })
    orientations = []
    for o in range(1, 9):
        name = f"orient{o}_7x5.png"
        rgb = load(name)
        orientations.append({"file": name, "orientation": o, "height": rgb.shape[0], "width": rgb.shape[1], "rgb": blob.add(rgb)})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"cases": cases, "orientations": orientations}, f, indent=1)
    blob.write(os.path.join(OUT, "cases.bin"))

    table = []
    for nps in [3, 7, 14, 16, 35, 37, 70]:
        for n in range(1, nps + 3):
            table.append({"nps": nps, "n": n, "buckets": buckets(n, nps).tolist()})
    bounds = {str(nps): boundaries(nps).tolist() for nps in [3, 7, 14, 16, 35, 37, 70]}
    with open(os.path.join(OUT, "buckets.json"), "w") as f:
        json.dump({"boundaries": bounds, "buckets": table}, f, separators=(",", ":"))

    sizes = []
    for longest, shortest in [(980, 378), (64, 28), (48, 20)]:
        for h, w in [(768, 1024), (300, 2000), (40, 50), (1024, 768), (2000, 300), (981, 980), (980, 981), (37, 51),
                     (1, 5000), (5000, 1), (999, 999), (77, 130), (90, 23), (65, 64), (64, 65), (333, 1000), (1000, 333)]:
            oh, ow = resize_size(h, w, longest, shortest)
            sizes.append({"height": h, "width": w, "longest_edge": longest, "shortest_edge": shortest, "out": [oh, ow]})
    with open(os.path.join(OUT, "sizes.json"), "w") as f:
        json.dump({"sizes": sizes}, f, separators=(",", ":"))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
