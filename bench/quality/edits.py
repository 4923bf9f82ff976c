"""Edited copies of a photo for the near-duplicate measurements: rotated, cropped, maybe
mirrored, downscaled, captioned with an overlay text and re-encoded as a low-quality JPEG; the
combined edit always mirrors and rotates by 3-10 degrees either way."""
from __future__ import annotations

import cv2
import numpy as np

OVERLAY_TEXTS = ("@holiday_pics", "SALE -50%", "(c) 2019 J. Smith", "best day ever!!", "#tbt",
                 "Photo: Reuters", "lol", "Summer 2021", "www.example.com", "DO NOT COPY")


def make_variant(rgb: np.ndarray, rng: np.random.Generator, combined: bool = False) -> bytes:
    """JPEG bytes of an edited copy: rotate, crop, maybe mirror, downscale, caption, re-encode.
    `combined`: every edit at once, the mirror always and a rotation of 3-10 degrees."""
    h, w = rgb.shape[:2]
    angle = float(rng.choice((-1.0, 1.0)) * rng.uniform(3, 10)) if combined else float(rng.uniform(-8, 8))
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    img = cv2.warpAffine(rgb, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    fx, fy = rng.uniform(0.5, 0.85, size=2)
    cw, ch = max(16, int(w * fx)), max(16, int(h * fy))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img[y0:y0 + ch, x0:x0 + cw]
    if combined or rng.random() < 0.5:
        img = img[:, ::-1]
    long_side = int(rng.integers(256, 641))
    scale = min(1.0, long_side / max(img.shape[:2]))
    if scale < 1.0:
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    text = OVERLAY_TEXTS[int(rng.integers(len(OVERLAY_TEXTS)))]
    ih, iw = img.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, _), _ = cv2.getTextSize(text, font, 1.0, 2)
    font_scale = float(rng.uniform(0.35, 0.7)) * iw / tw  # text spans 35-70% of the width
    thickness = max(1, round(2 * font_scale))
    (tw, th), _ = cv2.getTextSize(text, font, font_scale, thickness)
    org = (int(rng.integers(0, max(1, iw - tw))), int(rng.integers(th, max(th + 1, ih))))
    cv2.putText(img, text, org, font, font_scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    quality = int(rng.integers(30, 61))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()
