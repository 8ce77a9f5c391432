#!/usr/bin/python3
"""Writes test/fixtures/vision/: test images and what the reference pipeline
(PIL + numpy, following transformers' Qwen2VLImageProcessor step by step) makes
of them. Deterministic: run it again and the files come out the same.
Also the family-neutral primitives' references: resample.{json,bin} (Pillow
BICUBIC/BILINEAR resize of generated images), normalize.{json,bin} (numpy
rescale + normalize as transformers does it), canvas.{json,bin} (numpy pad,
crop, tiles).

Usage: /usr/bin/python3 scripts/make_vision_fixtures.py   (needs python3-pil, python3-numpy)
"""
import hashlib
import io
import json
import math
import os

import numpy as np
import PIL
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "vision")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
PATCH, TEMPORAL, MERGE = 14, 2, 2


# --- transformers image_processing_qwen2_vl.smart_resize (verbatim logic) ---
def smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280):
    if height < factor or width < factor:
        raise ValueError("image_too_small")
    elif max(height, width) / min(height, width) > 200:
        raise ValueError("aspect_ratio_too_large")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --- qwen_vl_utils.smart_resize, used for explicit resized_height/resized_width ---
def smart_resize_qvu(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28):
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect_ratio_too_large")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def processor(rgb, min_pixels, max_pixels, mean=MEAN, std=STD):
    """Qwen2VLImageProcessor._preprocess for one image given as HWC uint8 RGB."""
    h, w = rgb.shape[:2]
    rh, rw = smart_resize(h, w, PATCH * MERGE, min_pixels, max_pixels)
    # transformers.image_transforms.resize: to_pil_image (uint8: no rescale), PIL resize
    resized = np.array(Image.fromarray(rgb).resize((rw, rh), resample=Image.BICUBIC, reducing_gap=None))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)  # rescale
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)  # normalize, float32
    x = x.transpose(2, 0, 1)  # channels first
    patches = np.array([x])
    if patches.shape[0] % TEMPORAL != 0:
        patches = np.concatenate([patches, np.repeat(patches[-1][np.newaxis], TEMPORAL - 1, axis=0)], axis=0)
    c = patches.shape[1]
    gt, gh, gw = patches.shape[0] // TEMPORAL, rh // PATCH, rw // PATCH
    patches = patches.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH)
    assert flat.dtype == np.float32
    return resized, flat, (gt, gh, gw)


def synth(w, h, seed, channels=3, noise=25.0):
    """Gradients + hard edges (to hit clip8) + noise."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([
        255 * xx / max(w - 1, 1),
        255 * yy / max(h - 1, 1),
        127.5 + 127.5 * np.sin((xx + 2 * yy) / 7.0),
    ], axis=-1)
    checker = (((xx // 5) + (yy // 4)) % 2 == 0)[..., None]
    base = np.where(checker & (xx > w / 2)[..., None], 255 - base, base)
    base[(yy % 11 == 0)] = 0
    base[(xx % 13 == 0)] = 255
    img = base + rng.normal(0, noise, size=base.shape)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if channels == 4:
        alpha = np.clip(rng.uniform(0, 255, size=(h, w, 1)), 0, 255).astype(np.uint8)
        img = np.concatenate([img, alpha], axis=-1)
    return img


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def pil_rgb(path):
    return np.ascontiguousarray(np.array(Image.open(path).convert("RGB")))


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = {"pillow": PIL.__version__, "numpy": np.__version__, "mean": MEAN, "std": STD, "images": [],
            "decode": [], "resize": [], "smart_resize": [], "requested_resize": []}

    # ---- full pipeline cases ----
    cases = [
        # name, file, array, min_pixels, max_pixels
        ("square", "square_84.png", synth(84, 84, 1), 3136, 12845056),  # multiple of 28: no resize
        ("wide", "wide_700x210.png", synth(700, 210, 2, noise=3.0), 3136, 28 * 28 * 20),  # ~3-4x downscale
        ("tiny", "tiny_40x30.png", synth(40, 30, 3), 28 * 28 * 6, 12845056),  # upscale via min_pixels
        ("alpha", "alpha_90x70.png", synth(90, 70, 4, channels=4), 3136, 12845056),  # RGBA; 70/28=2.5 -> 2
        ("photo", "photo_64x48.jpg", synth(64, 48, 5), 3136, 12845056),  # JPEG
    ]
    for name, fname, arr, mn, mx in cases:
        path = os.path.join(OUT, fname)
        if fname.endswith(".jpg"):
            Image.fromarray(arr).save(path, quality=90, subsampling=0)  # 4:4:4
        else:
            Image.fromarray(arr).save(path, optimize=False)
        rgb = pil_rgb(path)  # PIL's decode + convert("RGB")
        resized, flat, grid = processor(rgb, mn, mx)
        if fname.endswith(".jpg"):  # PNG decoding is checked by the decode cases instead
            write(f"{name}.decoded.bin", rgb.tobytes())
        write(f"{name}.resized.bin", resized.tobytes())
        write(f"{name}.pixel_values.bin", flat.astype("<f4").tobytes())
        meta["images"].append({
            "name": name, "file": fname, "width": rgb.shape[1], "height": rgb.shape[0],
            "min_pixels": mn, "max_pixels": mx, "grid_thw": list(grid),
            "resized_width": resized.shape[1], "resized_height": resized.shape[0],
            "pixel_values_shape": list(flat.shape), "pixel_values_sha256": sha256(flat.astype("<f4").tobytes()),
        })

    # ---- a SigLIP checkpoint's mean/std (Idefics 2, SigLIP towers) through the same pipeline:
    # the engine must take them from preprocessor_config.json, not use CLIP's ----
    rgb = pil_rgb(os.path.join(OUT, "square_84.png"))
    _, flat, grid = processor(rgb, 3136, 12845056, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    pv = flat.astype("<f4")
    meta["checkpoint_mean_std"] = {
        "file": "square_84.png", "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "grid_thw": list(grid),
        "pixel_values_sha256": sha256(pv.tobytes()), "first": pv.reshape(-1)[:8].tolist(),
        "last": pv.reshape(-1)[-8:].tolist(),
    }

    # ---- decoder variants: PIL's convert("RGB") is the expected RGB ----
    rng = np.random.RandomState(7)
    W, H = 13, 7  # odd width: sub-byte rows end mid-byte
    pal = rng.randint(0, 256, size=(16, 3)).astype(np.uint8)
    variants = []
    idx4 = rng.randint(0, 16, size=(H, W)).astype(np.uint8)
    p4 = Image.fromarray(idx4, "P"); p4.putpalette(pal.flatten().tolist())
    variants.append(("pal4.png", p4, {"bits": 4}))
    p8t = Image.fromarray(idx4, "P"); p8t.putpalette(pal.flatten().tolist()); p8t.info["transparency"] = 3
    variants.append(("pal_trns.png", p8t, {"transparency": 3}))
    g1 = Image.fromarray((rng.randint(0, 2, size=(H, W)) * 255).astype(np.uint8), "L").convert("1")
    variants.append(("gray1.png", g1, {}))
    g2 = Image.fromarray((rng.randint(0, 4, size=(H, W)) * 85).astype(np.uint8), "L")
    variants.append(("gray2.png", g2, {"bits": 2}))
    g8 = Image.fromarray(rng.randint(0, 256, size=(H, W)).astype(np.uint8), "L")
    variants.append(("gray8.png", g8, {}))
    g16 = Image.fromarray(rng.choice([0, 7, 200, 255, 256, 4000, 65535], size=(H, W)).astype(np.int32), "I")
    variants.append(("gray16.png", g16, {}))  # PIL clips I -> RGB at 255
    la = Image.fromarray(rng.randint(0, 256, size=(H, W, 2)).astype(np.uint8), "LA")
    variants.append(("la8.png", la, {}))
    variants.append(("rgba8.png", Image.fromarray(synth(W, H, 8, channels=4), "RGBA"), {}))
    gif_idx = rng.randint(0, 16, size=(H, W)).astype(np.uint8)
    gif = Image.fromarray(gif_idx, "P"); gif.putpalette(pal.flatten().tolist())
    variants.append(("first.gif", gif, {"transparency": 5}))
    jp = Image.fromarray(synth(45, 31, 12))  # odd sizes: partial MCUs
    variants.append(("s420.jpg", jp, {"quality": 75}))  # PIL default 4:2:0 chroma
    variants.append(("s422.jpg", jp, {"quality": 85, "subsampling": 1}))
    variants.append(("progressive.jpg", jp, {"quality": 85, "progressive": True}))
    variants.append(("gray.jpg", jp.convert("L"), {"quality": 80}))
    variants.append(("lossless.webp", Image.fromarray(synth(W, H, 9)), {"lossless": True}))
    variants.append(("lossy.webp", Image.fromarray(synth(32, 24, 10)), {"quality": 80}))
    for fname, im, kw in variants:
        path = os.path.join(OUT, fname)
        im.save(path, **kw)
        rgb = pil_rgb(path)
        write(fname + ".rgb.bin", rgb.tobytes())
        meta["decode"].append({"file": fname, "width": rgb.shape[1], "height": rgb.shape[0],
                               "mode": Image.open(path).mode})
    # 16-bit PNGs through raw bytes: PIL cannot write them from RGB arrays.
    meta["decode"].extend(write_png16(rng))

    # ---- resize-only cases on one noisy source: sha256 of PIL's output ----
    src = synth(160, 120, 11)
    Image.fromarray(src).save(os.path.join(OUT, "resize_src_160x120.png"))
    for (nw, nh) in [(56, 56), (280, 28), (336, 504), (160, 56), (56, 120), (161, 119), (7, 3), (1000, 9), (32, 240)]:
        out = np.array(Image.fromarray(src).resize((nw, nh), resample=Image.BICUBIC))
        meta["resize"].append({"width": nw, "height": nh, "sha256": sha256(out.tobytes()),
                               "first": out.reshape(-1)[:12].tolist(), "last": out.reshape(-1)[-12:].tolist()})

    # ---- smart_resize tables ----
    table = [(1080, 1920, 3136, 12845056), (480, 640, 3136, 12845056), (224, 224, 3136, 12845056),
             (28, 28, 3136, 12845056), (27, 100, 3136, 12845056), (100, 27, 3136, 12845056),
             (28, 5600, 3136, 12845056), (28, 5601, 3136, 12845056), (70, 70, 3136, 12845056),
             (42, 98, 3136, 12845056), (126, 182, 3136, 12845056), (300, 1000, 3136, 15680),
             (30, 40, 6272, 12845056), (70, 90, 3136, 12845056), (4000, 6000, 3136, 12845056),
             (4000, 6000, 3136, 1003520), (8192, 8192, 3136, 12845056), (29, 5800, 3136, 3136)]
    r = np.random.RandomState(12)
    for _ in range(300):
        h = int(r.randint(20, 9000)); w = int(r.randint(20, 9000))
        mn = int(r.choice([3136, 6272, 56 * 56 * 4, 200704]))
        mx = int(r.choice([12845056, 1003520, 15680, 401408, 28 * 28 * 7]))
        table.append((h, w, mn, mx))
    for h, w, mn, mx in table:
        try:
            rh, rw = smart_resize(h, w, 28, mn, mx)
            entry = {"height": h, "width": w, "min_pixels": mn, "max_pixels": mx, "out": [rh, rw]}
            if rh <= 0 or rw <= 0:
                entry = {**entry, "out": None, "error": "bad_request"}
        except ValueError as e:
            entry = {"height": h, "width": w, "min_pixels": mn, "max_pixels": mx, "out": None, "error": str(e)}
        meta["smart_resize"].append(entry)
    for h, w in [(10, 10), (14, 14), (13, 500), (42, 70), (1000, 1000), (5000, 5000), (3, 700), (300, 9)]:
        try:
            meta["requested_resize"].append({"height": h, "width": w, "out": list(smart_resize_qvu(h, w))})
        except ValueError as e:
            meta["requested_resize"].append({"height": h, "width": w, "out": None, "error": str(e)})

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    resample_fixtures()
    normalize_fixtures()
    canvas_fixtures()
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


def png_chunk(tag, data):
    import zlib
    return len(data).to_bytes(4, "big") + tag + data + zlib.crc32(tag + data).to_bytes(4, "big")


def write_png16(rng):
    """Hand-made 16-bit RGB and 16-bit gray+alpha PNGs (filter 0)."""
    import zlib
    out = []
    for fname, ctype, ch in [("rgb16.png", 2, 3), ("la16.png", 4, 2)]:
        w, h = 5, 4
        px = rng.randint(0, 65536, size=(h, w, ch)).astype(">u2")
        raw = b"".join(b"\x00" + px[y].tobytes() for y in range(h))
        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, ctype, 0, 0, 0])
        data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) \
            + png_chunk(b"IEND", b"")
        write(fname, data)
        rgb = pil_rgb(os.path.join(OUT, fname))
        write(fname + ".rgb.bin", rgb.tobytes())
        out.append({"file": fname, "width": w, "height": h, "mode": Image.open(os.path.join(OUT, fname)).mode})
    return out


# ---- family-neutral primitives (src/vision/resize.ts, normalize.ts, canvas.ts) ----
def lcg_image(w, h, c, seed, kind):
    """HWC uint8 pixels that test/vision/synth.ts generates the same way, so the
    fixtures hold Pillow's outputs but not the (up to 640x480) sources.
    noise: an LCG; about 1/6 of the values 0 and 1/6 255 (hard edges make bicubic
    overshoot, which clip8 must clamp). ramp: diagonal ramps that wrap 255 -> 0."""
    if kind == "ramp":
        yy, xx, cc = np.mgrid[0:h, 0:w, 0:c]
        return ((xx * 5 + yy * 3 + cc * 60 + seed) % 256).astype(np.uint8)
    out = bytearray(w * h * c)
    s = seed & 0xFFFFFFFF
    for i in range(w * h * c):
        s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
        a = s >> 24
        if a < 40:
            v = 0
        elif a >= 216:
            v = 255
        else:
            s = (s * 1664525 + 1013904223) & 0xFFFFFFFF
            v = s >> 24
        out[i] = v
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(h, w, c)


class Blob:
    """Arrays back to back in one .bin; each add() returns where (float32 4-aligned, little-endian)."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, arr):
        arr = np.ascontiguousarray(arr)
        data = arr.astype("<f4").tobytes() if arr.dtype == np.float32 else arr.astype(np.uint8).tobytes()
        pad = (-self.size) % 4
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        entry = {"offset": self.size, "length": len(data), "dtype": str(arr.dtype), "shape": list(arr.shape)}
        self.parts.append(data)
        self.size += len(data)
        return entry

    def save(self, name):
        write(name, b"".join(self.parts))


def resample_fixtures():
    """Pillow's Image.resize (reducing_gap=None, its default) for BICUBIC and BILINEAR."""
    sources = {  # name: width, height, channels, kind, seed
        "n37x23": (37, 23, 3, "noise", 1), "n640x480": (640, 480, 3, "noise", 2), "n1x1": (1, 1, 3, "noise", 3),
        "n7x5": (7, 5, 3, "noise", 4), "n1x7": (1, 7, 3, "noise", 5), "r50x40": (50, 40, 3, "ramp", 6),
        "n30x90": (30, 90, 3, "noise", 7), "l64x48": (64, 48, 1, "noise", 8), "c45x31": (45, 31, 4, "noise", 9),
        "n60x40": (60, 40, 3, "noise", 10), "n3x2": (3, 2, 3, "noise", 11),
    }
    cases = [  # source, width, height, box
        ("n37x23", 100, 61, None), ("n640x480", 97, 131, None), ("n640x480", 2, 2, None),
        ("n640x480", 640, 7, None), ("n1x1", 1, 1, None), ("n1x1", 5, 3, None), ("n1x1", 1, 9, None),
        ("n7x5", 1, 1, None), ("n1x7", 1, 3, None), ("n1x7", 4, 7, None), ("r50x40", 50, 17, None),
        ("r50x40", 123, 40, None), ("r50x40", 49, 41, None), ("n30x90", 71, 13, None), ("l64x48", 33, 100, None),
        ("c45x31", 20, 70, None), ("n3x2", 640, 3, None),
        ("n60x40", 33, 21, (3.5, 2.25, 47.75, 39.9)), ("n60x40", 30, 20, (10, 5, 40, 25)),
        ("n60x40", 30, 20, (10.5, 5, 40.5, 25)), ("n60x40", 60, 40, (7.25, 0, 50, 40)),
        ("n60x40", 60, 40, (0, 0.1, 60, 40)), ("n60x40", 13, 9, (0.3, 0.7, 59.9, 39.2)),
        ("n60x40", 20, 10, (20, 10, 20, 20)),
    ]
    modes = {1: "L", 3: "RGB", 4: "CMYK"}  # CMYK: 4 independent bands (RGBA would be premultiplied)
    blob = Blob()
    meta = {"pillow": PIL.__version__, "sources": {}, "cases": []}
    images = {}
    for name, (w, h, c, kind, seed) in sources.items():
        images[name] = Image.frombytes(modes[c], (w, h), lcg_image(w, h, c, seed, kind).tobytes())
        meta["sources"][name] = {"width": w, "height": h, "channels": c, "kind": kind, "seed": seed,
                                 "sha256": sha256(images[name].tobytes())}
    for src, nw, nh, box in cases:
        for fname, f in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
            out = np.array(images[src].resize((nw, nh), resample=f, box=box))
            meta["cases"].append({"source": src, "filter": fname, "width": nw, "height": nh,
                                  "box": list(box) if box else None, **blob.add(out)})
    blob.save("resample.bin")
    with open(os.path.join(OUT, "resample.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


# transformers.image_transforms.rescale / normalize (numpy path), channels last.
def tf_rescale(image, scale):
    return (image.astype(np.float64) * scale).astype(np.float32)


def tf_normalize(image, mean, std):
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    c = image.shape[-1]
    mean = np.array(mean if isinstance(mean, list) else [mean] * c, dtype=image.dtype)
    std = np.array(std if isinstance(std, list) else [std] * c, dtype=image.dtype)
    return (image - mean) / std


def normalize_fixtures():
    """Every uint8 value on every channel through BaseImageProcessor's rescale then normalize."""
    rng = np.random.RandomState(20)
    img = np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)], axis=-1).astype(np.uint8)
    cases = [  # name, channels, do_rescale, rescale_factor, do_normalize, image_mean, image_std
        ("clip", 3, True, 1 / 255, True, MEAN, STD),
        ("siglip", 3, True, 1 / 255, True, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
        ("siglip_scalar", 3, True, 1 / 255, True, 0.5, 0.5),
        ("imagenet", 3, True, 1 / 255, True, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ("no_rescale", 3, False, 1 / 255, True, [127.5, 127.5, 127.5], [127.5, 127.5, 127.5]),
        ("rescale_only", 3, True, 1 / 255, False, MEAN, STD),
        ("neither", 3, False, 1 / 255, False, MEAN, STD),
        ("rescale_127", 3, True, 0.00784313725490196, True, 1.0, 1.0),
        ("gray", 1, True, 1 / 255, True, [0.5], [0.25]),
    ]
    blob = Blob()
    meta = {"numpy": np.__version__, "input": blob.add(img), "cases": []}
    for name, c, do_rescale, factor, do_normalize, mean, std in cases:
        x = img[..., :c]
        if do_rescale:
            x = tf_rescale(x, factor)
        if do_normalize:
            x = tf_normalize(x, mean, std)
        x = x.astype(np.float32).transpose(2, 0, 1)  # channels first, as the processors return
        meta["cases"].append({"name": name, "channels": c, "do_rescale": do_rescale, "rescale_factor": factor,
                              "do_normalize": do_normalize, "image_mean": mean, "image_std": std, **blob.add(x)})
    blob.save("normalize.bin")
    with open(os.path.join(OUT, "normalize.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


def canvas_fixtures():
    """numpy pad (np.pad / a filled canvas), slicing, and Mllama's split_to_tiles."""
    blob = Blob()
    hwc = lcg_image(7, 5, 3, 30, "noise")
    chw = ((hwc.astype(np.float32) / 255 - 0.5) / 0.5).astype(np.float32).transpose(2, 0, 1).copy()
    thwc = lcg_image(8, 6, 3, 31, "noise")
    tchw = (thwc.astype(np.float32) / 7).transpose(2, 0, 1).copy()
    meta = {"numpy": np.__version__, "hwc8": blob.add(hwc), "chw32": blob.add(chw),
            "tiles_hwc8": blob.add(thwc), "tiles_chw32": blob.add(tchw), "pad": [], "mask": [], "crop": [], "tiles": []}

    def offsets(w, h, cw, ch, position):
        if position == "top-left":
            return 0, 0
        if position == "center":
            return (cw - w) // 2, (ch - h) // 2
        return position["left"], position["top"]

    for layout, cw, ch, position, value in [
        ("hwc8", 10, 9, "top-left", 0), ("hwc8", 10, 9, "center", [255, 128, 7]), ("hwc8", 7, 8, "center", 255),
        ("hwc8", 8, 5, "center", 0), ("hwc8", 12, 6, {"left": 3, "top": 1}, 9),
        ("chw32", 10, 9, "top-left", 0), ("chw32", 11, 10, "center", [-1, 0.5, 2]), ("chw32", 7, 5, "center", 0),
    ]:
        left, top = offsets(7, 5, cw, ch, position)
        if layout == "hwc8":
            if isinstance(value, list):
                out = np.empty((ch, cw, 3), np.uint8)
                out[...] = np.array(value, np.uint8)
                out[top:top + 5, left:left + 7] = hwc
            else:
                out = np.pad(hwc, ((top, ch - 5 - top), (left, cw - 7 - left), (0, 0)), constant_values=value)
        else:
            out = np.empty((3, ch, cw), np.float32)
            out[...] = np.array(value if isinstance(value, list) else [value] * 3, np.float32)[:, None, None]
            out[:, top:top + 5, left:left + 7] = chw
        meta["pad"].append({"layout": layout, "width": cw, "height": ch, "position": position, "value": value,
                            **blob.add(out)})
    for cw, ch, position in [(10, 9, "top-left"), (10, 9, "center"), (7, 5, "center")]:
        left, top = offsets(7, 5, cw, ch, position)
        m = np.zeros((ch, cw), np.uint8)
        m[top:top + 5, left:left + 7] = 1
        meta["mask"].append({"width": cw, "height": ch, "position": position, **blob.add(m)})
    for x, y, w, h in [(2, 1, 4, 3), (0, 0, 7, 5), (6, 4, 1, 1), (0, 2, 7, 3)]:
        meta["crop"].append({"rect": {"x": x, "y": y, "width": w, "height": h},
                             "hwc8": blob.add(hwc[y:y + h, x:x + w]), "chw32": blob.add(chw[:, y:y + h, x:x + w])})
    for rows, cols in [(2, 4), (3, 2), (1, 1), (6, 8), (1, 2)]:
        th, tw = 6 // rows, 8 // cols
        t_hwc = thwc.reshape(rows, th, cols, tw, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, th, tw, 3)
        # transformers image_processing_mllama.split_to_tiles
        t_chw = tchw.reshape(3, rows, th, cols, tw).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, th, tw)
        meta["tiles"].append({"rows": rows, "cols": cols, "hwc8": blob.add(t_hwc), "chw32": blob.add(t_chw)})
    blob.save("canvas.bin")
    with open(os.path.join(OUT, "canvas.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
