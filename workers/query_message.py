"""The query as the shards get it: the query image decoded, the query encoded with the
collection's models, and its unit blocks, their dims and the weights as a JSON message.

The shards fuse the vector again from the unit blocks: a text query sends 50 floats, not the
mostly-zero fused vector.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import redis

from shared.encoding.sources import load_image_bytes
from shared.errors import MMSearchError
from shared.runtime.config import Settings
from shared.store import staging
from shared.store.catalog import Collection
from shared.store.serializers import vector_to_b64
from workers.search_refused import SearchRefused

log = logging.getLogger(__name__)


def decode_image(image: dict[str, Any], r: redis.Redis, cfg: Settings) -> np.ndarray:
    """The query image's pixels (a staged upload is released); refused when it cannot be read."""
    from shared.encoding.imagedecode import decode_image as decode

    try:
        return decode(load_image_bytes(image, r, cfg), max_pixels=cfg.max_image_pixels,
                      max_bytes=cfg.max_image_bytes)
    except MMSearchError as exc:
        raise SearchRefused("invalid_item", f"query image: {exc}") from exc
    except Exception as exc:  # a decoder failure we did not foresee is still the image's fault
        log.exception("query image could not be decoded")
        raise SearchRefused("invalid_item", "query image: not a decodable image") from exc
    finally:
        if "staged" in image:
            staging.release(r, [image["staged"]])


def encode(coll: Collection, rgb: np.ndarray | None, text: str | None,
           weights: dict[str, float] | None) -> dict[str, Any]:
    """The search message of a query; refused when the query has no usable block."""
    from shared.encoding.encoders import collection_encoder

    try:
        fused = collection_encoder(coll.image_model, coll.text_model, coll.precision,
                                   coll.encoder_setting).query(rgb, text, weights)
    except ValueError as exc:
        raise SearchRefused("invalid_request", str(exc)) from exc
    return {"image_dim": fused.image_dim, "text_dim": len(fused.vector) - fused.image_dim,
            "image": vector_to_b64(fused.image) if fused.image is not None else None,
            "text": vector_to_b64(fused.text) if fused.text is not None else None,
            "weights": fused.weights}
