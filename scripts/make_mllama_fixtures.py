#!/usr/bin/python3
"""Writes test/fixtures/vision/mllama/: small test images and what an independent numpy/PIL port
of transformers' MllamaImageProcessor (PIL path) makes of them, following /work/shared/MLLAMA.md §3
step by step:

  convert_to_rgb: non-RGB images -> convert("RGBA"), Image.alpha_composite over opaque white, "RGB"
  aspect ratios: (a, b) for a, b in 1..N with a*b <= N, a outer, used as (rows, cols); id = index + 1
  canvas: per pair the limiting scale; smallest scale >= 1, else the largest; smallest area on ties
  size: clamp each side to [tile, canvas], floor(side * scale) in float64, min with the target
  resize: PIL Image.resize((w, h), filter) on uint8 RGB;  pad: bottom/right with uint8 0
  rescale: float32(float64(x) * rescale_factor);  normalize: (x - f32(mean)) / f32(std) in float32
  tiles: row-major [rows*cols, 3, tile, tile], packed to N tiles with zeros; aspect_ratio_mask

Also the processor's cross-attention mask (§6: get_cross_attention_token_mask and
convert_sparse_cross_attention_mask_to_dense) on pseudo-random id sequences -> cross_mask.json.

Outputs: <name>.png/.gif/.webp images, cases.json (cases, shapes, offsets into cases.bin),
cases.bin (float32 pixel values back to back, 4-aligned), sizes.json (canvas / ids / resized sizes
at tile 560 and at small tiles). Deterministic: run it again and the files come out the same.

Usage: /usr/bin/python3 scripts/make_mllama_fixtures.py   (needs python3-pil, python3-numpy)
"""
import json
import math
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "vision", "mllama")
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
        "tall_23x90.png": Image.fromarray(smooth_plus_noise(23, 90, 3, 1), "RGB"),
        "wide_130x40.png": Image.fromarray(smooth_plus_noise(130, 40, 3, 2), "RGB"),
        "tiny_9x7.png": Image.fromarray(smooth_plus_noise(9, 7, 3, 3), "RGB"),
        "exact_56x28.png": Image.fromarray(smooth_plus_noise(56, 28, 3, 4), "RGB"),
        "big_200x150.png": Image.fromarray(smooth_plus_noise(200, 150, 3, 5), "RGB"),
        "square_40x40.png": Image.fromarray(smooth_plus_noise(40, 40, 3, 9), "RGB"),
        # Alpha from 0 to 255 with colour under alpha 0: composited over white, not dropped.
        "rgba_33x29.png": Image.fromarray(smooth_plus_noise(33, 29, 4, 6), "RGBA"),
        "la_31x45.png": Image.fromarray(smooth_plus_noise(31, 45, 2, 7), "LA"),
    }
    # A palette image with per-entry alpha (tRNS), and a GIF with a transparent index.
    pal = Image.fromarray((smooth_plus_noise(26, 34, 1, 8)[:, :, 0] // 16).astype(np.uint8), "P")
    pal.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, (i * 53) % 256)])
    pal.info["transparency"] = bytes([(i * 17) % 256 for i in range(16)])
    imgs["pal_trns_26x34.png"] = pal
    for name, im in imgs.items():
        kw = {"transparency": im.info["transparency"]} if "transparency" in im.info else {}
        im.save(os.path.join(OUT, name), optimize=False, compress_level=9, **kw)
    gif = Image.fromarray((smooth_plus_noise(21, 17, 1, 10)[:, :, 0] // 32).astype(np.uint8), "P")
    gif.putpalette([v for i in range(8) for v in (i * 32, (i * 97) % 256, 255 - i * 32)])
    gif.save(os.path.join(OUT, "trans_21x17.gif"), transparency=3)
    webp = Image.fromarray(smooth_plus_noise(25, 19, 4, 11), "RGBA")
    webp.save(os.path.join(OUT, "rgba_25x19.webp"), lossless=True, exact=True)


def convert_to_rgb(im):
    """transformers' mllama convert_to_rgb."""
    if im.mode == "RGB":
        return im
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def load(name):
    return np.asarray(convert_to_rgb(Image.open(os.path.join(OUT, name))))


# ---------------------------------------------------------------- MllamaImageProcessor (§3)
def aspect_ratios(n):
    return [(a, b) for a in range(1, n + 1) for b in range(1, n + 1) if a * b <= n]


def canvas(h, w, n, tile):
    pairs = aspect_ratios(n)
    scales = []
    for a, b in pairs:
        sh = (a * tile) / h
        sw = (b * tile) / w
        scales.append(sh if sw > sh else sw)
    up = [s for s in scales if s >= 1]
    chosen = min(up) if up else max(scales)
    best = None
    for (a, b), s in zip(pairs, scales):
        if s == chosen and (best is None or a * b < best[0] * best[1]):
            best = (a, b)
    return best


def fit_size(h, w, ch, cw, tile):
    tw = min(max(w, tile), cw)
    th = min(max(h, tile), ch)
    sh = th / h
    sw = tw / w
    if sw < sh:
        return min(math.floor(h * sw), th), tw
    return th, min(math.floor(w * sh), tw)


def layout(h, w, n, tile):
    rows, cols = canvas(h, w, n, tile)
    nh, nw = fit_size(h, w, rows * tile, cols * tile, tile)
    return {"rows": rows, "cols": cols, "aspect_ratio_id": aspect_ratios(n).index((rows, cols)) + 1,
            "num_tiles": rows * cols, "resized": [nh, nw]}


def process(img, cfg):
    tile = cfg["size"]["height"]
    n = cfg["max_image_tiles"]
    h, w = img.shape[:2]
    lay = layout(h, w, n, tile)
    nh, nw = lay["resized"]
    x = np.asarray(Image.fromarray(img, "RGB").resize((nw, nh), PIL_FILTERS[cfg["resample"]]))
    rows, cols = lay["rows"], lay["cols"]
    padded = np.zeros((rows * tile, cols * tile, 3), dtype=np.uint8)
    padded[:nh, :nw] = x
    v = (padded.astype(np.float64) * cfg["rescale_factor"]).astype(np.float32)
    mean = np.array(cfg["image_mean"], dtype=np.float32)
    std = np.array(cfg["image_std"], dtype=np.float32)
    v = (v - mean) / std
    assert v.dtype == np.float32
    chw = v.transpose(2, 0, 1)
    tiles = chw.reshape(3, rows, tile, cols, tile).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    packed = np.zeros((n, 3, tile, tile), dtype=np.float32)
    packed[: rows * cols] = tiles
    mask = np.zeros(n, dtype=np.int64)
    mask[0] = 1
    mask[: rows * cols] = 1
    return lay, packed, mask


# ---------------------------------------------------------------- cross-attention mask (§6)
def cross_attention_token_mask(ids, image_token_id):
    """processing_mllama.get_cross_attention_token_mask."""
    locs = [i for i, t in enumerate(ids) if t == image_token_id]
    if not locs:
        return []
    if len(locs) == 1:
        return [[locs[0], -1]]
    masks = [[a, b] for a, b in zip(locs[:-1], locs[1:])]
    masks.append([locs[-1], len(ids)])
    last_end = masks[-1][1]
    for m in masks[::-1]:
        if m[0] == m[1] - 1:
            m[1] = last_end
        last_end = m[1]
    return masks


def dense_cross_mask(spans, num_tiles, max_tiles, length):
    """processing_mllama.convert_sparse_cross_attention_mask_to_dense, one sample."""
    m = np.zeros((length, len(spans), max_tiles), dtype=np.int64)
    for i, ((start, end), nt) in enumerate(zip(spans, num_tiles)):
        end = min(end, length)
        if end == -1:
            end = length
        m[start:end, i, :nt] = 1
    return m


def cross_mask_cases():
    s = 777
    out = []
    for k in range(60):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        length = 1 + (s >> 16) % 24
        ids = []
        for _ in range(length):
            s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
            ids.append(128256 if (s >> 24) < 70 + (k % 3) * 40 else 1000 + (s >> 16) % 50)
        spans = cross_attention_token_mask(ids, 128256)
        max_tiles = 1 + k % 4
        num_tiles = [1 + (i * 7 + k) % max_tiles for i in range(len(spans))]
        dense = dense_cross_mask(spans, num_tiles, max_tiles, length) if spans else np.zeros((length, 0, max_tiles), dtype=np.int64)
        out.append({"ids": ids, "spans": [[a, length if b == -1 else b] for a, b in spans], "num_tiles": num_tiles,
                    "max_tiles": max_tiles, "dense": dense.reshape(-1).tolist()})
    return out


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


BASE_CFG = {"do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_processor_type": "MllamaImageProcessor",
            "max_image_tiles": 4, "resample": 2, "rescale_factor": 0.00392156862745098, "size": {"height": 28, "width": 28}}

CASES = [
    # name, image, preprocessor_config overrides
    ("tall", "tall_23x90.png", {}),
    ("wide", "wide_130x40.png", {}),
    ("tiny", "tiny_9x7.png", {}),
    ("exact_fit", "exact_56x28.png", {}),
    ("downscaled", "big_200x150.png", {}),
    ("square_up", "square_40x40.png", {}),
    ("rgba", "rgba_33x29.png", {}),
    ("la", "la_31x45.png", {}),
    ("palette_trns", "pal_trns_26x34.png", {}),
    ("gif_transparent", "trans_21x17.gif", {}),
    ("webp_alpha", "rgba_25x19.webp", {}),
    ("bicubic_tile30_n2", "wide_130x40.png", {"resample": 3, "max_image_tiles": 2, "size": {"height": 30, "width": 30},
                                              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}),
    ("tall_tile30_n2", "tall_23x90.png", {"max_image_tiles": 2, "size": {"height": 30, "width": 30}}),
]

# §3.3's worked examples (h, w) at tile 560, N = 4, plus awkward sizes.
SIZES_560 = [(550, 550), (380, 475), (800, 600), (480, 640), (1080, 1920), (1000, 300), (560, 560), (561, 560),
             (1, 1), (1, 5000), (5000, 1), (2240, 560), (559, 2241), (1120, 1121), (300, 1000), (1234, 987),
             (4032, 3024), (3024, 4032), (700, 700), (1119, 1120), (100, 2200), (2200, 100)]


def main():
    os.makedirs(OUT, exist_ok=True)
    make_images()
    blob = Blob()
    cases = []
    for name, image, over in CASES:
        cfg = dict(BASE_CFG)
        cfg.update(over)
        img = load(image)
        lay, packed, mask = process(img, cfg)
        cases.append({"name": name, "image": image, "height": img.shape[0], "width": img.shape[1],
                      "preprocessor_config": cfg, **lay, "aspect_ratio_mask": mask.tolist(),
                      "rgb": blob.add(img), "pixel_values": blob.add(packed)})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)
    blob.write(os.path.join(OUT, "cases.bin"))

    sizes = []
    for h, w in SIZES_560:
        sizes.append({"height": h, "width": w, "tile": 560, "max_image_tiles": 4, **layout(h, w, 4, 560)})
    for tile, n in [(28, 4), (30, 2), (14, 6), (10, 9)]:
        for h, w in [(1, 1), (7, 9), (28, 56), (90, 23), (40, 130), (150, 200), (tile, tile), (tile + 1, tile),
                     (3 * tile, tile - 1), (tile * 2 - 1, tile * 2 + 1), (55, 55), (19, 380)]:
            sizes.append({"height": h, "width": w, "tile": tile, "max_image_tiles": n, **layout(h, w, n, tile)})
    # A deterministic sweep: sizes near multiples of the tile (where the tie and floor rules bite)
    # and anywhere up to 8 tiles, at the real tile and at small ones.
    s = 12345
    for tile, n in [(560, 4), (560, 9), (28, 4), (30, 2)]:
        for _ in range(150):
            dims = []
            for _ in range(2):
                s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
                k = s >> 16
                dims.append(max(1, (k % 8 + 1) * tile + (k >> 8) % 7 - 3) if k & 1 else 1 + k % (8 * tile))
            sizes.append({"height": dims[0], "width": dims[1], "tile": tile, "max_image_tiles": n, **layout(dims[0], dims[1], n, tile)})
    ratios = {str(n): aspect_ratios(n) for n in range(1, 10)}
    with open(os.path.join(OUT, "sizes.json"), "w") as f:
        json.dump({"sizes": sizes, "aspect_ratios": ratios}, f, separators=(",", ":"))

    with open(os.path.join(OUT, "cross_mask.json"), "w") as f:
        json.dump({"image_token_id": 128256, "cases": cross_mask_cases()}, f, separators=(",", ":"))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
