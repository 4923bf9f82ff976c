"""Image features for the quality benchmark: the two preprocessings compared (the service's
whole-image resize and a centre crop), batched encoding and flip-averaged features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from shared.encoding.imagedecode import resize_for_model

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel

SIZE = 224
BATCH = 8


def centre_crop(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Shorter side scaled to `size`, then the central size x size square."""
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    img = cv2.resize(rgb, (nw, nh), interpolation=interpolation)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "resize": lambda rgb: resize_for_model(rgb, SIZE),  # the service's pipeline
    "centre-crop": centre_crop,
}


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class Encoded:
    features: np.ndarray  # n x dim, unit rows
    probs: np.ndarray     # n x 1000


def encode_images(model: ImageModel, images: list[np.ndarray]) -> Encoded:
    """Features and class probabilities of 224x224 RGB images, in batches of BATCH."""
    feats, probs = [], []
    for start in range(0, len(images), BATCH):
        enc = model.encode(images[start:start + BATCH])
        feats.append(enc.features)
        probs.append(enc.probs)
    return Encoded(np.concatenate(feats), np.concatenate(probs))


def encode_variants(model: ImageModel, rgbs: list[np.ndarray]) -> tuple[dict[str, np.ndarray], Encoded]:
    """Features for each preprocessing, plain and flip-averaged ({"resize": ..., "resize+flip-avg":
    ...}), and the plain encoding of the service's pipeline (resize)."""
    out, pipeline = {}, None
    for name, prep in PREPROCESS.items():
        imgs = [prep(rgb) for rgb in rgbs]
        plain = encode_images(model, imgs)
        mirrored = encode_images(model, [np.ascontiguousarray(i[:, ::-1]) for i in imgs]).features
        out[name] = plain.features
        out[f"{name}+flip-avg"] = unit_rows(plain.features + mirrored)
        pipeline = pipeline or plain
    assert pipeline is not None
    return out, pipeline
