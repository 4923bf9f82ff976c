"""The queries of the search benchmark, every one distinct, with their vectors computed here,
and scoring answers against exact search: recall@10 and the top-1 rate.

Two families of kinds (`KINDS`):

- near, the headline: queries like the collection's own items, the way an ANN benchmark holds
  out part of its data. Images are Fashion-MNIST test images left out of the base the synthetic
  items are derived from (`HeldOut`), sent as the PNG a client would upload; words are a
  clothing class name. Kinds: text only (the class name in a phrase), image only, fused 1:1
  (the image and its class name), the weighted mixes image 1 : text 0.25 and 0.25 : 1, and fused
  1:1 restricted by a metadata filter that 1% or 0.01% of the items meet (the synthetic items
  carry `{"bucket": i % 10000}`; `FILTER_1PCT`, `FILTER_001PCT`).
- far: queries unlike every item, whose top 10 after the first are near-ties: text phrases
  about other things ("a dog on the beach"), and crops of the benchmark photos alone and with a
  word for what they show (the photo itself should come first: the top-1 rate).

Each kind has a pool of distinct queries (phrases between prefixes and suffixes, other images,
other crop boxes), and every run takes the next unused ones, so no timed query repeats one that
the result cache could answer.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from bench.datasets import tags_of
from bench.photos import Photo
from shared.encoding.fusion import build_query
from shared.encoding.imagedecode import decode_image

K = 10
BUCKETS = 10_000                                # synthetic item i has metadata {"bucket": i % BUCKETS}
FILTER_1PCT = {"bucket": {"$lt": 100}}          # 1% of the synthetic items
FILTER_001PCT = {"bucket": 4321}                # 0.01%
FAR_PHRASES = (
    "a dog on the beach", "a cat", "a cup of coffee", "fresh strawberries", "a red car",
    "birds on a wire", "an old cannon", "a snare drum", "a rocket launch", "an astronaut",
    "a motorcycle", "a thatched cottage", "geese on the grass", "a black leather shoe",
    "tents among pine trees", "a beetle on a leaf",
)
CLASS_WORDS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")  # Fashion-MNIST's classes, as a user would type them
TEXT_PREFIXES = ("", "a photo of ", "a picture of ", "an image of ", "a snapshot of ", "a close-up of ")
TEXT_SUFFIXES = ("", " outdoors", " at noon", " in colour", " in the city", " on a table", " for sale")


@dataclass(frozen=True)
class Kind:
    """A kind of query: which blocks it has, their weights, its filter, near or far."""

    name: str
    image: bool
    text: bool
    weights: dict[str, float] | None = None
    filter: dict[str, Any] | None = None
    far: bool = False


KIND_SPECS = (
    Kind("text", image=False, text=True),
    Kind("image", image=True, text=False),
    Kind("fused", image=True, text=True),
    Kind("fused 1:0.25", image=True, text=True, weights={"image": 1.0, "text": 0.25}),
    Kind("fused 0.25:1", image=True, text=True, weights={"image": 0.25, "text": 1.0}),
    Kind("fused 1% filter", image=True, text=True, filter=FILTER_1PCT),
    Kind("fused 0.01% filter", image=True, text=True, filter=FILTER_001PCT),
    Kind("far text", image=False, text=True, far=True),
    Kind("far image", image=True, text=False, far=True),
    Kind("far fused", image=True, text=True, far=True),
)
KINDS = tuple(kind.name for kind in KIND_SPECS)


@dataclass(frozen=True)
class HeldOut:
    """Real items kept out of the synthetic items' base, to query with: image uploads and the
    word for what each shows."""

    uploads: list[bytes]
    words: list[str]


@dataclass(frozen=True)
class Query:
    kind: str
    text: str | None
    image: bytes | None
    vector: np.ndarray
    expect: str | None                    # the photo a crop query should find first
    weights: dict[str, float] | None = None
    filter: dict[str, Any] | None = None


def crop_boxes(n: int) -> list[tuple[float, float, float, float]]:
    """`n` distinct crops (top, bottom, left, right as fractions), each 75% of each side."""
    offsets = np.linspace(0.0, 0.25, 6)
    boxes = [(top, top + 0.75, left, left + 0.75) for top, left in itertools.product(offsets, offsets)]
    if n > len(boxes):
        raise ValueError(f"at most {len(boxes)} crops per photo, {n} asked")
    return boxes[:n]


def query_crop(data: bytes, box: tuple[float, float, float, float]) -> bytes:
    """A recompressed crop of the photo (`box`, then 2/3 scale, JPEG quality 60)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    top, bottom, left, right = box
    crop = bgr[int(h * top):int(h * bottom), int(w * left):int(w * right)]
    crop = cv2.resize(crop, (crop.shape[1] * 2 // 3, crop.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 60])
    if not ok:
        raise ValueError("OpenCV could not encode the crop")
    return buf.tobytes()


def phrases(words: tuple[str, ...], n: int) -> list[str]:
    """`n` distinct phrases: each word between a prefix and a suffix."""
    out = [prefix + word + suffix for prefix, suffix, word in itertools.product(TEXT_PREFIXES, TEXT_SUFFIXES, words)]
    if n > len(out):
        raise ValueError(f"at most {len(out)} phrases of {len(words)} words, {n} asked")
    return out[:n]


class _Builder:
    """Queries of every kind with their vectors, timing the encodings."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.queries: dict[str, list[Query]] = {kind.name: [] for kind in KIND_SPECS}
        self.seconds: dict[str, list[float]] = {"text": [], "image": []}

    def texts(self, kind: str, texts: list[str]) -> None:
        for text in texts:
            t0 = time.perf_counter()
            fused = self.encoder.query(None, text, None)
            self.seconds["text"].append(time.perf_counter() - t0)
            self.queries[kind].append(Query(kind, text, None, fused.vector, None))

    def images(self, kinds: list[Kind], upload: bytes, word: str, expect: str | None) -> None:
        """One image (and its word) in each of `kinds`."""
        t0 = time.perf_counter()
        both = self.encoder.query(decode_image(upload), word, None)
        self.seconds["image"].append(time.perf_counter() - t0)
        for kind in kinds:
            fused = build_query(both.image, both.text if kind.text else None, both.image_dim,
                                len(both.vector) - both.image_dim, kind.weights)
            self.queries[kind.name].append(Query(kind.name, word if kind.text else None, upload, fused.vector,
                                                 None if kind.filter else expect, kind.weights, kind.filter))


def build_queries(encoder: Any, photos: list[Photo], held_out: HeldOut,
                  per_kind: int) -> tuple[dict[str, list[Query]], dict[str, float]]:
    """`per_kind` distinct queries of each kind with their vectors; mean in-process encode ms
    of a text query and of an image (decoded and encoded)."""
    if per_kind > len(held_out.uploads):
        raise ValueError(f"{len(held_out.uploads)} held-out images for {per_kind} queries per kind")
    build = _Builder(encoder)
    build.texts("text", phrases(CLASS_WORDS, per_kind))
    build.texts("far text", phrases(FAR_PHRASES, per_kind))
    near = [kind for kind in KIND_SPECS if kind.image and not kind.far]
    for upload, word in zip(held_out.uploads[:per_kind], held_out.words):
        build.images(near, upload, word, None)
    far = [kind for kind in KIND_SPECS if kind.image and kind.far]
    crops = [(photo, box) for box in crop_boxes(-(-per_kind // len(photos))) for photo in photos][:per_kind]
    for photo, box in crops:
        build.images(far, query_crop(photo.read_bytes(), box), (tags_of(photo) or ("photo",))[0], photo.name)
    return build.queries, {what: round(float(np.mean(s)) * 1000, 2) for what, s in build.seconds.items()}


def encode_photos(encoder: Any, photos: list[Photo]) -> np.ndarray:
    """Fused vectors of uncaptioned photos, as the encode workers make them."""
    return np.stack([e.vector for e in encoder.encode_items([decode_image(p.read_bytes()) for p in photos],
                                                            [None] * len(photos))])


def bucket_metadata(n: int) -> list[dict[str, int]]:
    """The metadata of the first `n` synthetic items, which the filters select from."""
    return [{"bucket": i % BUCKETS} for i in range(n)]


def filter_rows(kind_filter: dict[str, Any] | None, synthetic: int) -> np.ndarray | None:
    """Row numbers of the items a kind's filter keeps (None: no filter); only synthetic items
    (the first `synthetic` rows) have a bucket."""
    if kind_filter is None:
        return None
    buckets = np.arange(synthetic) % BUCKETS
    if kind_filter == FILTER_1PCT:
        return np.flatnonzero(buckets < FILTER_1PCT["bucket"]["$lt"])
    if kind_filter == FILTER_001PCT:
        return np.flatnonzero(buckets == FILTER_001PCT["bucket"])
    raise ValueError(f"no exact answer for filter {kind_filter}")


def exact_top(vectors: np.ndarray, ids: list[str], queries: list[Query], rows: np.ndarray | None = None,
              block: int = 50_000) -> list[list[str]]:
    """Each query's exact top-K ids by inner product, over `rows` of `vectors` (all by
    default), reading `block` rows at a time (the vectors may be a memory-mapped file)."""
    q = np.stack([query.vector for query in queries]).astype(np.float32)
    rows = np.arange(len(vectors)) if rows is None else rows
    best_scores = np.full((len(q), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        scores = q @ np.asarray(vectors[part], np.float32).T
        scores = np.concatenate([best_scores, scores], axis=1)
        candidates = np.concatenate([best_rows, np.broadcast_to(part, (len(q), len(part)))], axis=1)
        keep = np.argpartition(-scores, K - 1, axis=1)[:, :K] if scores.shape[1] > K else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(candidates, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return [[ids[j] for j in row] for row in np.take_along_axis(best_rows, order, axis=1)]


def recall(found: list[str], exact: list[str]) -> float:
    return len(set(found) & set(exact)) / len(exact) if exact else float(not found)


def top1(queries: list[Query], firsts: list[str | None]) -> float | None:
    """Share of the queries with an expected photo whose first hit is that photo."""
    pairs = [(q.expect, first) for q, first in zip(queries, firsts) if q.expect]
    return round(sum(e == f for e, f in pairs) / len(pairs), 3) if pairs else None
