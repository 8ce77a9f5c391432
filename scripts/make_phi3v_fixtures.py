#!/usr/bin/python3
"""Writes test/fixtures/vision/phi3v/: small test images and what an independent numpy port of
Phi-3-vision's Phi3VImageProcessor (the checkpoint's image_processing_phi3_v.py;
/work/shared/PHI3V.md §3) makes of them:

  load: Image.open -> convert("RGB")   (transformers' convert_to_rgb: alpha dropped; no EXIF transpose)
  HD_transform: PIL TRANSPOSE if w < h; scale = largest s with s*ceil(s/ratio) <= num_crops;
                new_w = s*336, new_h = int(new_w/ratio); PIL resize BILINEAR; pad the height with
                white to a multiple of 336 (top = int((tar - h)/2)); TRANSPOSE back
  ToTensor + Normalize: float32 x/255, then (x - mean)/std in float32
  global view: PyTorch bicubic (align_corners=False, A=-0.75, float32) to 336x336, written here
               from ATen's upsample_bicubic2d formulas (per output pixel: sum over 4 rows of the
               sum over 4 columns, in tap order, each product and sum rounded to float32)
  crops: 336x336 tiles row-major; num_img_tokens = (hc*wc + 1)*144 + 1 + (hc + 1)*12

The pixel values are too large to store whole (a 16-crop image is 23 MB of float32), so per case:
the sha256 of the uint8 HD image (the float tiles are a per-byte function of it, checked through
the stored normalize table), per-crop per-channel sums, and the global view's values at fixed
sample positions (every border pixel plus pseudo-random interior ones). One case ("tiny_n1") is
stored whole: its uint8 HD image (gzip) and, with the normalize table, every pixel value. Also the
per-axis bicubic taps/weights for several sizes and two small full float tensors resized both ways.

Outputs: <name>.png images, cases.json, cases.bin (float32 / uint8 arrays back to back, 4-aligned),
tiny_n1.hd.rgb.gz. Deterministic: run it again and the files come out the same.

Usage: /usr/bin/python3 scripts/make_phi3v_fixtures.py   (needs python3-pil, python3-numpy)
"""
import gzip
import hashlib
import json
import math
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "vision", "phi3v")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
CROP = 336
F32 = np.float32


# ---------------------------------------------------------------- images
def lcg(n, seed):
    out = np.empty(n, dtype=np.uint32)
    s = seed & 0xFFFFFFFF
    for i in range(n):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        out[i] = s
    return out


def picture(w, h, c, seed, noisy=0.25):
    """Gradients with a fraction of noisy pixels (0s, 255s and random): edges, flats and clamps."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (5 + ch) + y * (3 + 2 * ch) + ch * 60) % 256 for ch in range(c)], axis=-1)
    r = lcg(w * h * c, seed).reshape(h, w, c)
    noise = np.where(r % 7 == 0, 0, np.where(r % 7 == 1, 255, (r >> 24) & 255))
    use = ((r >> 8) & 1023) < int(noisy * 1024)
    return np.where(use, noise, base).astype(np.uint8)


IMAGES = {
    "wide_120x50.png": ("RGB", 120, 50, 1, 0.3),
    "tall_45x110.png": ("RGB", 45, 110, 2, 0.3),
    "tiny_40x30.png": ("RGB", 40, 30, 3, 0.1),
    "square_336x336.png": ("RGB", 336, 336, 4, 0.02),
    "alpha_60x40.png": ("RGBA", 60, 40, 5, 0.3),
    "strip_700x20.png": ("RGB", 700, 20, 6, 0.3),
}

# (case name, image, num_crops)
CASES = [
    ("tiny_n1", "tiny_40x30.png", 1),
    ("tiny_n16", "tiny_40x30.png", 16),
    ("wide_n4", "wide_120x50.png", 4),
    ("wide_n16", "wide_120x50.png", 16),
    ("tall_n1", "tall_45x110.png", 1),
    ("tall_n4", "tall_45x110.png", 4),
    ("tall_n16", "tall_45x110.png", 16),
    ("square_n1", "square_336x336.png", 1),
    ("square_n4", "square_336x336.png", 4),
    ("alpha_n4", "alpha_60x40.png", 4),
    ("strip_n16", "strip_700x20.png", 16),
]


# ---------------------------------------------------------------- the processor, in numpy
def hd_transform(img, num_crops):
    width, height = img.size
    trans = width < height
    if trans:
        img = img.transpose(Image.TRANSPOSE)
        width, height = img.size
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * CROP)
    new_h = int(new_w / ratio)
    img = img.resize((new_w, new_h), Image.BILINEAR)
    tar = int(math.ceil(new_h / CROP) * CROP)
    top = int((tar - new_h) / 2)
    arr = np.full((tar, new_w, 3), 255, dtype=np.uint8)
    arr[top:top + new_h] = np.asarray(img)
    if trans:
        arr = np.ascontiguousarray(arr.transpose(1, 0, 2))
    return arr, {"resized": [new_w, new_h], "transposed": trans, "padTop": top}


def to_tensor_normalize(hd):
    x = hd.astype(F32).transpose(2, 0, 1) / F32(255)
    mean = np.array(MEAN, dtype=F32)[:, None, None]
    std = np.array(STD, dtype=F32)[:, None, None]
    return ((x - mean) / std).astype(F32)


def normalize_table():
    x = np.arange(256, dtype=F32) / F32(255)
    return np.stack([(x - F32(MEAN[c])) / F32(STD[c]) for c in range(3)]).astype(F32)


def cubic1(z, A):
    return ((A + F32(2)) * z - (A + F32(3))) * z * z + F32(1)


def cubic2(z, A):
    return ((A * z - F32(5) * A) * z + F32(8) * A) * z - F32(4) * A


def bicubic_taps(n_in, n_out):
    """ATen compute_indices_weights_cubic, align_corners=False, float32 throughout."""
    A = F32(-0.75)
    scale = F32(n_in) / F32(n_out)
    idx = np.empty((n_out, 4), dtype=np.int64)
    wts = np.empty((n_out, 4), dtype=F32)
    for o in range(n_out):
        src = scale * (F32(o) + F32(0.5)) - F32(0.5)
        i0 = min(int(np.floor(src)), n_in - 1)
        t = min(max(F32(src - F32(i0)), F32(0)), F32(1))
        t2 = F32(1) - t
        wts[o] = [cubic2(t + F32(1), A), cubic1(t, A), cubic1(t2, A), cubic2(t2 + F32(1), A)]
        idx[o] = [min(max(i0 - 1 + k, 0), n_in - 1) for k in range(4)]
    return idx, wts


def bicubic_resize(x, out_h, out_w):
    """[C, H, W] float32 -> [C, out_h, out_w]: columns within each row first, then rows."""
    c, h, w = x.shape
    ix, wx = bicubic_taps(w, out_w)
    iy, wy = bicubic_taps(h, out_h)
    mid = x[:, :, ix[:, 0]] * wx[:, 0]
    for k in range(1, 4):
        mid = (mid + x[:, :, ix[:, k]] * wx[:, k]).astype(F32)
    out = mid[:, iy[:, 0], :] * wy[:, 0][None, :, None]
    for k in range(1, 4):
        out = (out + mid[:, iy[:, k], :] * wy[:, k][None, :, None]).astype(F32)
    return out.astype(F32)


def sample_positions():
    """Every border pixel of the 336x336 global view plus 660 pseudo-random interior pixels."""
    pos = []
    for x in range(CROP):
        pos += [(0, x), (CROP - 1, x)]
    for y in range(1, CROP - 1):
        pos += [(y, 0), (y, CROP - 1)]
    r = lcg(2 * 660, 99)
    pos += [(1 + int(r[2 * i] >> 8) % (CROP - 2), 1 + int(r[2 * i + 1] >> 8) % (CROP - 2)) for i in range(660)]
    return pos


# ---------------------------------------------------------------- output
class Bin:
    def __init__(self):
        self.parts = []
        self.size = 0

    def add(self, arr):
        b = np.ascontiguousarray(arr).tobytes()
        off = self.size
        self.parts.append(b)
        self.size += len(b)
        pad = (-self.size) % 4
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        return {"offset": off, "count": int(arr.size), "dtype": str(arr.dtype)}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, (mode, w, h, seed, noisy) in IMAGES.items():
        Image.fromarray(picture(w, h, len(mode), seed, noisy), mode).save(os.path.join(OUT, name), optimize=False, compress_level=9)

    b = Bin()
    pos = sample_positions()
    py = np.array([p[0] for p in pos])
    px = np.array([p[1] for p in pos])
    out = {
        "cropSize": CROP,
        "mean": MEAN,
        "std": STD,
        "normalizeTable": b.add(normalize_table()),
        "samplePositions": b.add(np.array(pos, dtype=np.int32).reshape(-1)),
        "cases": [],
    }
    for name, image, n in CASES:
        img = Image.open(os.path.join(OUT, image)).convert("RGB")
        hd, geo = hd_transform(img, n)
        x = to_tensor_normalize(hd)
        H, W = hd.shape[:2]
        hc, wc = H // CROP, W // CROP
        glob = bicubic_resize(x, CROP, CROP)
        crops = [glob] + [x[:, r * CROP:(r + 1) * CROP, c * CROP:(c + 1) * CROP] for r in range(hc) for c in range(wc)]
        case = {
            "name": name,
            "image": image,
            "numCrops": n,
            "imageSize": [H, W],
            "hc": hc,
            "wc": wc,
            "numImgTokens": (hc * wc + 1) * 144 + 1 + (hc + 1) * 12,
            **geo,
            "hdSha256": hashlib.sha256(hd.tobytes()).hexdigest(),
            # Per crop (global first), per channel: [sum, sum of squares] in float64.
            "cropSums": [[[float(np.sum(t[ch], dtype=np.float64)), float(np.sum(t[ch].astype(np.float64) ** 2))] for ch in range(3)] for t in crops],
            "globalSamples": b.add(glob[:, py, px].astype(F32)),
        }
        if name == "tiny_n1":
            with gzip.GzipFile(os.path.join(OUT, "tiny_n1.hd.rgb.gz"), "wb", mtime=0) as f:
                f.write(hd.tobytes())
            case["hdFile"] = "tiny_n1.hd.rgb.gz"
        out["cases"].append(case)

    # The shared primitive on its own: per-axis taps, and small tensors resized down and up.
    out["taps"] = []
    for n_in, n_out in [(336, 336), (672, 336), (1008, 336), (5376, 336), (500, 336), (7, 12), (30, 11)]:
        idx, wts = bicubic_taps(n_in, n_out)
        out["taps"].append({"in": n_in, "out": n_out, "index": b.add(idx.astype(np.int32).reshape(-1)), "weight": b.add(wts.reshape(-1))})
    out["tensors"] = []
    for k, (c, h, w, oh, ow) in enumerate([(3, 20, 30, 9, 11), (2, 7, 5, 12, 9), (1, 13, 1, 5, 3)]):
        r = lcg(c * h * w, 1000 + k).astype(np.float64)
        x = ((r / 2 ** 32) * 4 - 2).astype(F32).reshape(c, h, w)
        out["tensors"].append({"shape": [c, h, w], "outSize": [oh, ow], "input": b.add(x), "output": b.add(bicubic_resize(x, oh, ow))})

    with open(os.path.join(OUT, "cases.bin"), "wb") as f:
        for p in b.parts:
            f.write(p)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
