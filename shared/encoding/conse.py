"""Cross-modal semantics (ConSE, Norouzi et al. 2014): an image's place in GloVe space.

From the CNN's ImageNet class probabilities, the probability-weighted mean of the word vectors
of the top predicted class names. This gives an uncaptioned image a text block, so that a
text-only query finds it. A class's vector is its name's vector plus those of its nearest
WordNet hypernyms (shared/encoding/data/imagenet_hypernyms.tsv), so that "bird" reaches a
goldfinch and "cat" a tabby even where 50-d GloVe barely tells the breeds' names apart. The
number of classes mixed (`top_k`), the softmax `temperature` and the hypernym levels and weight
are a collection's encoder setting (shared.encoding.encoder_settings); v1's were chosen with
`python -m bench.quality` (README, Benchmarks).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from shared.encoding.encoder_settings import EncoderSetting
from shared.encoding.text_encoder import TextEncoder, create_text_model

HYPERNYMS_FILE = Path(__file__).resolve().parent / "data" / "imagenet_hypernyms.tsv"


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k classes as WordNet synonym lists ("tiger cat, Felis tigrina"), in
    class-id order, as timm ships them; they matched GloVe word queries better than
    torchvision's short names (README, Benchmarks)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_descriptions())


def imagenet_hypernyms() -> list[list[str]]:
    """Per class, the lemma lists of its WordNet hypernym chain, nearest first."""
    levels = []
    for line in HYPERNYMS_FILE.read_text(encoding="utf-8").splitlines():
        chain = line.split("\t")[2]
        levels.append([level.replace(",", " ") for level in chain.split("|")] if chain else [])
    return levels


def class_vectors(text_model: TextEncoder, class_names: list[str], hypernyms: list[list[str]] | None,
                  levels: int, weight: float) -> np.ndarray:
    """Unit vector per class: its name plus `weight` times each of its first `levels` hypernyms."""
    def phrase(text: str) -> np.ndarray:
        vec = text_model.phrase_vector(text)
        return np.zeros(text_model.dim, np.float64) if vec is None else vec.astype(np.float64)

    rows = np.stack([phrase(name) for name in class_names])
    if hypernyms is not None:
        for c, chain in enumerate(hypernyms):
            for level in chain[:levels]:
                rows[c] += weight * phrase(level)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0).astype(np.float32)


def imagenet_class_vectors(text_model: TextEncoder, setting: EncoderSetting) -> np.ndarray:
    """The ImageNet classes' vectors with the hypernym levels and weight of an encoder setting."""
    return class_vectors(text_model, imagenet_class_names(), imagenet_hypernyms(), setting.hypernym_levels,
                         setting.hypernym_weight)


class ConSE:
    """Maps class-probability vectors to unit vectors in a text model's space."""

    def __init__(self, class_vectors: np.ndarray, top_k: int, temperature: float) -> None:
        self.top_k = top_k
        self.temperature = temperature
        self.class_vectors = class_vectors
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
def create_conse(text_model: str, setting: EncoderSetting) -> ConSE:
    """The process-wide ConSE mapping of `text_model` with the values of an encoder setting."""
    vectors = imagenet_class_vectors(create_text_model(text_model, setting.sif_a), setting)
    return ConSE(vectors, setting.conse_top_k, setting.conse_temperature)
