"""Fusion of the image and text blocks into one stored vector, and query-time scoring.

Stored vector = [image / sqrt(2), text / sqrt(2)] with each block L2-normalised (zeros when an
item lacks it), so the inner product of two stored vectors is the mean of the two cosines.
A query scales its blocks by the request's weights so that an inner-product search ranks by

    score = (w_image * cos_image + w_text * cos_text) / (sum of the weights of the blocks the query has)

without re-ingesting anything; `score_parts` recovers both cosines of a hit for `scores`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

SQRT2 = math.sqrt(2.0)
BLOCKS = ("image", "text")


def _unit(vec: np.ndarray | None, dim: int, block: str) -> np.ndarray:
    if vec is None:
        return np.zeros(dim, np.float32)
    vec = np.asarray(vec, np.float32).reshape(-1)
    if vec.shape[0] != dim:
        raise ValueError(f"{block} block has {vec.shape[0]} dims, expected {dim}")
    norm = float(np.linalg.norm(vec))
    if not math.isfinite(norm) or norm == 0.0:
        return np.zeros(dim, np.float32)
    return vec / norm


def fuse(image: np.ndarray | None, text: np.ndarray | None, image_dim: int, text_dim: int) -> np.ndarray:
    """The stored vector of one item; a missing block is stored as zeros."""
    if image is None and text is None:
        raise ValueError("an item needs an image block, a text block or both")
    return np.concatenate([_unit(image, image_dim, "image"), _unit(text, text_dim, "text")]) / SQRT2


@dataclass(frozen=True)
class FusedQuery:
    """A query vector for inner-product search plus what is needed to explain each hit."""

    vector: np.ndarray
    image_dim: int
    image: np.ndarray | None = None
    text: np.ndarray | None = None
    weights: dict[str, float] = field(default_factory=dict)

    @functools.cached_property
    def _scales(self) -> dict[str, float]:
        """The norm of each block the query has in `vector` (its weight's share times sqrt 2);
        computed once per query, not per hit."""
        parts = {"image": self.vector[: self.image_dim], "text": self.vector[self.image_dim:]}
        return {block: float(np.linalg.norm(parts[block]))
                for block, unit in (("image", self.image), ("text", self.text)) if unit is not None}

    @property
    def explained_by_blocks(self) -> bool:
        """Whether `block_scores` can explain a hit: every block the query has is weighted."""
        return all(scale > 0 for scale in self._scales.values())

    def block_scores(self, blocks: dict[str, float]) -> dict[str, float | None]:
        """cos_image and cos_text of a hit from its per-block inner products with `vector` (a
        shard's `SearchHit.blocks`), as `score_parts` gives them from the stored vector."""
        parts: dict[str, float | None] = {"image": None, "text": None}
        for block, scale in self._scales.items():
            parts[block] = blocks[block] * SQRT2 / scale
        return parts

    def score_parts(self, stored: np.ndarray) -> dict[str, float | None]:
        """cos_image and cos_text of a stored vector (None for a block the query lacks)."""
        stored = np.asarray(stored, np.float32)
        parts: dict[str, float | None] = {"image": None, "text": None}
        if self.image is not None:
            parts["image"] = float(np.dot(stored[: self.image_dim], self.image) * SQRT2)
        if self.text is not None:
            parts["text"] = float(np.dot(stored[self.image_dim:], self.text) * SQRT2)
        return parts


def build_query(image: np.ndarray | None, text: np.ndarray | None, image_dim: int, text_dim: int,
                weights: dict[str, float] | None = None) -> FusedQuery:
    """Weighted query vector; raises ValueError when no usable block is left."""
    weights = {"image": 1.0, "text": 1.0, **(weights or {})}
    for name, w in weights.items():
        if name not in BLOCKS or not math.isfinite(w) or w < 0:
            raise ValueError(f"weight {name!r} must be a finite number >= 0 for 'image' or 'text'")
    img = None if image is None else _unit(image, image_dim, "image")
    txt = None if text is None else _unit(text, text_dim, "text")
    if img is not None and not img.any():
        img = None
    if txt is not None and not txt.any():
        txt = None
    present = [b for b, v in (("image", img), ("text", txt)) if v is not None]
    total = sum(weights[b] for b in present)
    if not present or total == 0:
        raise ValueError("the query has no usable block: give an image and/or a text with a "
                         "known word, with a weight above 0")
    scale = {b: SQRT2 * weights[b] / total for b in BLOCKS}
    vector = np.concatenate([
        img * scale["image"] if img is not None else np.zeros(image_dim, np.float32),
        txt * scale["text"] if txt is not None else np.zeros(text_dim, np.float32),
    ]).astype(np.float32)
    return FusedQuery(vector, image_dim, img, txt, {b: weights[b] for b in present})
