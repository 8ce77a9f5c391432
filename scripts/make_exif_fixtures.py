#!/usr/bin/env python3
"""Tiny EXIF-oriented images for the browser-vs-Node orientation test (test/e2e/exif-orientation-in-chromium.test.ts).

9x6 RGB (non-square, so orientations 5..8 transpose the size) with EXIF orientation 1..8 as
JPEG (4:4:4, quality 95), a few as lossless WebP and as PNG (eXIf chunk), and one RGBA PNG.
Deterministic.
Run: /usr/bin/python3 scripts/make_exif_fixtures.py
"""
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "vision", "exif")


def pattern(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def main():
    os.makedirs(OUT, exist_ok=True)
    for o in range(1, 9):
        im = Image.fromarray(pattern(9, 6, o), "RGB")
        exif = Image.Exif()
        exif[0x0112] = o
        im.save(os.path.join(OUT, f"orient{o}_9x6.jpg"), exif=exif.tobytes(), quality=95, subsampling=0)
        if o in (3, 6, 8):
            im.save(os.path.join(OUT, f"orient{o}_9x6.webp"), exif=exif.tobytes(), lossless=True)
            im.save(os.path.join(OUT, f"orient{o}_9x6.png"), exif=exif.tobytes())
    # Alpha that must move with the pixels (loadImage's alphaBackground composites after orienting).
    rgba = np.concatenate([pattern(9, 6, 20), (np.arange(54).reshape(6, 9, 1) * 4 + 20).astype(np.uint8)], -1)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgba, "RGBA").save(os.path.join(OUT, "rgba_orient6_9x6.png"), exif=exif.tobytes())


if __name__ == "__main__":
    main()
