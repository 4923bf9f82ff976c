"""The photo sets of `bench.ingest`, built in memory from the bench photos.

- photos500: foolbox's, scikit-image's and opencv-doc's photos scaled to 500 px on the long
  side, JPEG quality 90, repeated under distinct ids, no captions;
- mixed: the same photos at 1024 px, alternately a JPEG and a PNG cut-out (RGBA, everything
  outside a centred ellipse transparent), each with a caption;
- wallpapers: the Plasma wallpapers' JPEGs (`make bench-data`), each file `copies` times.
"""
from __future__ import annotations

import cv2
import numpy as np

from bench.datasets import tags_of, wallpapers
from bench.service import Upload, jpeg_with_long_side, real_photos


def photos500(count: int) -> list[Upload]:
    """The real photos at 500 px (JPEG q90), repeated under distinct ids to `count` items."""
    distinct = [(p.name, jpeg_with_long_side(p.read_bytes(), 500)) for p in real_photos()]
    return [Upload(f"{distinct[i % len(distinct)][0]}-{i}", distinct[i % len(distinct)][1]) for i in range(count)]


def cutout_png(jpeg: bytes) -> bytes:
    """The photo as a PNG with an alpha channel: opaque inside a centred ellipse, transparent outside."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    height, width = bgr.shape[:2]
    alpha = np.zeros((height, width), np.uint8)
    cv2.ellipse(alpha, (width // 2, height // 2), (width * 2 // 5, height * 2 // 5), 0, 0, 360, 255, -1)
    ok, buf = cv2.imencode(".png", np.dstack([bgr, alpha]))
    if not ok:
        raise ValueError("OpenCV could not encode the PNG")
    return buf.tobytes()


def mixed_set(count: int) -> list[Upload]:
    """`count` items of the real photos at 1024 px, every other one a PNG cut-out, all captioned."""
    distinct = []
    for n, photo in enumerate(real_photos()):
        jpeg = jpeg_with_long_side(photo.read_bytes(), 1024)
        caption = "a photo of " + (" and ".join(tags_of(photo)) or photo.path.stem.replace("_", " "))
        distinct.append((photo.name, cutout_png(jpeg) if n % 2 else jpeg, caption))
    picks = [distinct[i % len(distinct)] for i in range(count)]
    return [Upload(f"{name}-{i}", image, caption) for i, (name, image, caption) in enumerate(picks)]


def wallpaper_set(copies: int) -> list[Upload]:
    """Each Plasma wallpaper JPEG `copies` times under distinct ids (empty without bench data)."""
    files = [(p.name, p.read_bytes()) for p in wallpapers("largest")]
    return [Upload(f"{name}-{c}", data) for c in range(copies) for name, data in files]
