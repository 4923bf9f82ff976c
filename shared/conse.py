"""Cross-modal semantics (ConSE, Norouzi et al. 2014): an image's place in GloVe space.

From the CNN's ImageNet class probabilities, the probability-weighted mean of the word vectors
of the top predicted class names. This gives an uncaptioned image a text block, so that a
text-only query finds it. `top_k` and the softmax `temperature` were chosen with
`bench/quality.py` (see the resolving note of the retrieval-core issue).
"""
from __future__ import annotations

import functools

import numpy as np

from shared.text_encoder import TextEncoder, create_text_model

DEFAULT_TOP_K = 10
DEFAULT_TEMPERATURE = 1.0


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k classes as WordNet synonym lists ("tiger cat, Felis tigrina"), in
    class-id order, as timm ships them; they matched word queries better than torchvision's
    short names (class-name mAP 0.544 vs 0.458 for GloVe word queries)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_descriptions())


class ConSE:
    """Maps class-probability vectors to unit vectors in a text model's space."""

    def __init__(self, text_model: TextEncoder, class_names: list[str], top_k: int = DEFAULT_TOP_K,
                 temperature: float = DEFAULT_TEMPERATURE) -> None:
        self.top_k = top_k
        self.temperature = temperature
        rows = []
        for name in class_names:
            vec = text_model.phrase_vector(name)
            rows.append(np.zeros(text_model.dim, np.float32) if vec is None else vec)
        self.class_vectors = np.stack(rows).astype(np.float32)
        self.known = np.linalg.norm(self.class_vectors, axis=1) > 0

    def vectors(self, probs: np.ndarray) -> np.ndarray:
        """One unit vector per row of `probs` (n x classes); zero rows where nothing is known."""
        probs = np.asarray(probs, np.float64)
        if self.temperature != 1.0:
            logp = np.log(np.clip(probs, 1e-12, None)) / self.temperature
            probs = np.exp(logp - logp.max(axis=1, keepdims=True))
        probs = probs * self.known
        k = min(self.top_k, probs.shape[1])
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        weights = np.zeros_like(probs)
        np.put_along_axis(weights, top, np.take_along_axis(probs, top, axis=1), axis=1)
        mixed = (weights @ self.class_vectors).astype(np.float32)
        norms = np.linalg.norm(mixed, axis=1, keepdims=True)
        return np.divide(mixed, norms, out=np.zeros_like(mixed), where=norms > 0)


@functools.lru_cache(maxsize=None)
def create_conse(text_model: str, top_k: int = DEFAULT_TOP_K,
                 temperature: float = DEFAULT_TEMPERATURE) -> ConSE:
    return ConSE(create_text_model(text_model), imagenet_class_names(), top_k, temperature)
