"""Items and queries of one collection -> fused vectors, with the collection's models.

An item's image block is the CNN's pooled features; its text block is the caption's GloVe
vector, the image's ConSE vector (uncaptioned images), or for a captioned image both mixed
(`text_block`). Every value that shapes these vectors (the caption/ConSE mix, ConSE's classes
and temperature, SIF's a...) comes from the collection's encoder setting
(shared.encoding.encoder_settings), so a collection keeps encoding as it was created. Used by the
encode workers (items) and the query workers (image queries). The image model runs in the
collection's precision behind the process's one batching front (shared.encoding.model_batcher),
so concurrent tasks and queries share model batches.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from shared.store.catalog import IMAGE_MODEL_DIMS
from shared.encoding.conse import ConSE, create_conse
from shared.encoding.encoder_settings import LEGACY_ENCODER_SETTING, encoder_setting
from shared.encoding.fusion import FusedQuery, build_query, fuse
from shared.encoding.imagedecode import resize_for_model
from shared.encoding.text_encoder import create_text_model

if TYPE_CHECKING:
    from shared.encoding.model_batcher import BatchingImageModel


@dataclass
class EncodedItem:
    vector: np.ndarray
    has_image: bool


def text_block(caption: np.ndarray | None, conse: np.ndarray | None, mix: float) -> np.ndarray | None:
    """An item's text block before normalisation: `caption + mix * conse` for a captioned image,
    else whichever of the two it has (None for neither). A zero ConSE vector counts as none."""
    if conse is not None and not conse.any():
        conse = None
    if caption is not None and conse is not None:
        return caption + mix * conse
    return caption if caption is not None else conse


class CollectionEncoder:
    """The image model, text model and ConSE mapping of one (image_model, text_model, precision,
    encoder setting)."""

    def __init__(self, image_model: str, text_model: str, precision: str = "fp32",
                 setting_name: str = LEGACY_ENCODER_SETTING) -> None:
        self.image_model_name = image_model
        self.precision = precision
        self.setting_name = setting_name
        self.setting = encoder_setting(setting_name)
        self.text_model = create_text_model(text_model, self.setting.sif_a)
        self.image_dim = IMAGE_MODEL_DIMS[image_model]
        self.text_dim = self.text_model.dim

    @functools.cached_property
    def image_model(self) -> "BatchingImageModel":
        """Loaded on first image (text-only queries never import torch)."""
        from shared.encoding.image_models import create_image_model
        from shared.encoding.model_batcher import batching

        return batching(create_image_model(self.image_model_name, self.precision))

    @functools.cached_property
    def conse(self) -> ConSE:
        return create_conse(self.text_model.name, self.setting)

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        """Load every model and derived table now, compiling the image model's batch shapes
        (workers call this at start); `progress` hears each step."""
        report = progress or (lambda stage: None)
        report(f"loading text model {self.text_model.name}")
        self.text_model.encode("warm up")
        report(f"loading image model {self.image_model_name} ({self.precision})")
        self.image_model.warm_up(progress)
        report("building the ConSE table")
        self.conse.vectors(np.full((1, 1000), 1e-3, np.float32))

    def prepare_image(self, rgb: np.ndarray) -> np.ndarray:
        """The image as the image model takes it (callers may do this ahead, in their own thread)."""
        size = self.image_model.input_size
        return rgb if rgb.shape[:2] == (size, size) else resize_for_model(rgb, size)

    def _image_blocks(self, images: list[np.ndarray], timeout: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        enc = self.image_model.encode([self.prepare_image(img) for img in images], timeout=timeout)
        return enc.features, self.conse.vectors(enc.probs)

    def encode_items(self, images: list[np.ndarray | None], texts: list[str | None],
                     timeout: float | None = None) -> list[EncodedItem | None]:
        """Fused vectors of items; None for an item left with no block (no image, no known word).
        TimeoutError when the image model has not answered within `timeout` seconds."""
        with_image = [i for i, img in enumerate(images) if img is not None]
        feats, semantics = self._image_blocks([images[i] for i in with_image], timeout) if with_image else ([], [])
        image_block = dict(zip(with_image, feats))
        conse_block = dict(zip(with_image, semantics))
        out: list[EncodedItem | None] = []
        for i, text in enumerate(texts):
            caption = self.text_model.encode(text) if text else None
            text_vec = text_block(caption, conse_block.get(i), self.setting.caption_conse_mix)
            image_vec = image_block.get(i)
            if image_vec is None and text_vec is None:
                out.append(None)
                continue
            out.append(EncodedItem(fuse(image_vec, text_vec, self.image_dim, self.text_dim), image_vec is not None))
        return out

    def query(self, image: np.ndarray | None, text: str | None, weights: dict[str, float] | None) -> FusedQuery:
        """The weighted query of a search; ValueError when it has no usable block."""
        image_vec = self._image_blocks([image])[0][0] if image is not None else None
        text_vec = self.text_model.encode(text) if text else None
        return build_query(image_vec, text_vec, self.image_dim, self.text_dim, weights)


def collection_encoder(image_model: str, text_model: str, precision: str = "fp32",
                       setting_name: str = LEGACY_ENCODER_SETTING) -> CollectionEncoder:
    """The process's one encoder of a collection's models, precision and encoder setting (models
    load once, and are shared by the settings that use them); ValueError for an unknown setting."""
    return _encoder(image_model, text_model, precision, setting_name)


@functools.lru_cache(maxsize=None)
def _encoder(image_model: str, text_model: str, precision: str, setting_name: str) -> CollectionEncoder:
    return CollectionEncoder(image_model, text_model, precision, setting_name)
