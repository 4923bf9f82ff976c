"""An item's own caption, as a text-only query, finds that item first: the 26 real photos of
bench.photos captioned in both styles of bench.quality.captions, encoded with the default
setting (v1) and the real models, ranked by exact inner product over the fused vectors."""
from __future__ import annotations

import numpy as np
import pytest

from bench.photos import all_photos
from bench.quality.captions import casual_captions, literal_captions
from shared.encoding.encoders import collection_encoder
from shared.encoding.imagedecode import decode_image


@pytest.mark.parametrize("captions", [literal_captions, casual_captions], ids=["literal", "casual"])
def test_a_caption_query_finds_its_own_item_first(captions) -> None:
    encoder = collection_encoder("efficientnet_lite0", "glove-6b-50d", "fp32", "v1")
    photos = all_photos()
    table = captions()
    texts = [table.get(p.name) for p in photos]
    items = encoder.encode_items([decode_image(p.read_bytes()) for p in photos], texts)
    vectors = np.stack([item.vector for item in items])
    asked = [i for i, t in enumerate(texts)  # a caption of its own with a known word
             if t is not None and texts.count(t) == 1 and encoder.text_model.encode(t) is not None]
    assert len(asked) >= 20
    misses = []
    for i in asked:
        scores = vectors @ encoder.query(None, texts[i], None).vector
        own, scores[i] = scores[i], -np.inf
        if not own > scores.max():
            misses.append(f"{photos[i].name}: {texts[i]!r} -> {photos[int(scores.argmax())].name}")
    assert not misses
