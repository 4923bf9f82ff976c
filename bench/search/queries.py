"""The queries of the search benchmark (text, image crops, fused) with their vectors computed
here, and scoring answers against exact search: recall@10 and the top-1 rate."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bench.datasets import tags_of
from bench.photos import Photo
from shared.encoding.imagedecode import decode_image

K = 10
TEXT_QUERIES = (
    "a dog on the beach", "a cat", "a cup of coffee", "fresh strawberries", "a red car",
    "birds on a wire", "an old cannon", "a snare drum", "a rocket launch", "an astronaut",
    "a motorcycle", "a thatched cottage", "geese on the grass", "a black leather shoe",
    "tents among pine trees", "a beetle on a leaf",
)
KINDS = ("text", "image", "fused")
# Query variants: each (kind, clients) run of a collection sends its own, so the first pass of
# every run is searched (repeats within a run come from the result cache, reported apart), and
# the warm-up sends the last. Text: the phrase after a prefix; images: another crop box.
TEXT_PREFIXES = ("", "a photo of ", "a picture of ", "an image of ")
CROP_BOXES = ((0.15, 0.9, 0.1, 0.85), (0.1, 0.85, 0.15, 0.9), (0.05, 0.8, 0.05, 0.8), (0.2, 0.95, 0.2, 0.95))
VARIANTS = len(TEXT_PREFIXES)


@dataclass(frozen=True)
class Query:
    kind: str
    text: str | None
    image: bytes | None
    vector: np.ndarray
    expect: str | None  # the photo a crop query should find first


def query_crop(data: bytes, variant: int = 0) -> bytes:
    """A recompressed off-centre crop (75% of each side from CROP_BOXES[variant], 2/3 scale,
    JPEG quality 60)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    top, bottom, left, right = CROP_BOXES[variant]
    crop = bgr[int(h * top):int(h * bottom), int(w * left):int(w * right)]
    crop = cv2.resize(crop, (crop.shape[1] * 2 // 3, crop.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 60])
    if not ok:
        raise ValueError("OpenCV could not encode the crop")
    return buf.tobytes()


def build_queries(encoder: Any, photos: list[Photo]) -> tuple[dict[str, list[list[Query]]], dict[str, float]]:
    """The queries of each kind, VARIANTS lists of them, with their vectors; mean in-process
    encode ms per kind."""
    queries: dict[str, list[list[Query]]] = {kind: [[] for _ in range(VARIANTS)] for kind in KINDS}
    encode_s: dict[str, list[float]] = {kind: [] for kind in KINDS}
    encoder.query(decode_image(query_crop(photos[0].read_bytes())), "a cat", None)  # warm-up

    def add(kind: str, variant: int, text: str | None, image: bytes | None, expect: str | None) -> None:
        t0 = time.perf_counter()
        fused = encoder.query(decode_image(image) if image is not None else None, text, None)
        encode_s[kind].append(time.perf_counter() - t0)
        queries[kind][variant].append(Query(kind, text, image, fused.vector, expect))

    for variant, prefix in enumerate(TEXT_PREFIXES):
        for text in TEXT_QUERIES:
            add("text", variant, prefix + text, None, None)
    for photo in photos:
        data = photo.read_bytes()
        for variant in range(VARIANTS):
            crop = query_crop(data, variant)
            add("image", variant, None, crop, photo.name)
            add("fused", variant, (tags_of(photo) or ("photo",))[0], crop, photo.name)
    return queries, {kind: round(float(np.mean(s)) * 1000, 2) for kind, s in encode_s.items()}


def encode_photos(encoder: Any, photos: list[Photo]) -> np.ndarray:
    """Fused vectors of uncaptioned photos, as the encode workers make them."""
    return np.stack([e.vector for e in encoder.encode_items([decode_image(p.read_bytes()) for p in photos],
                                                            [None] * len(photos))])


def top1(queries: list[Query], firsts: list[str | None]) -> float | None:
    """Share of the queries with an expected photo whose first hit is that photo."""
    pairs = [(q.expect, first) for q, first in zip(queries, firsts) if q.expect]
    return round(sum(e == f for e, f in pairs) / len(pairs), 3) if pairs else None


def exact_top(vectors: np.ndarray, ids: list[str], queries: list[Query]) -> list[list[str]]:
    scores = np.stack([q.vector for q in queries]) @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return [[ids[j] for j in row] for row in top]


def recall(found: list[str], exact: list[str]) -> float:
    return len(set(found) & set(exact)) / len(exact)
