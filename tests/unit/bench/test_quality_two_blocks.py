"""bench.quality.two_blocks: with two text blocks an item's exact caption finds it first even when
its ConSE vector points elsewhere, and an uncaptioned item is scored by its ConSE vector."""
from __future__ import annotations

import numpy as np

from bench.quality.two_blocks import scheme_scores, schemes


def test_exact_captions_find_their_items_and_words_find_conse() -> None:
    eye = np.eye(4, dtype=np.float32)
    captions = [eye[0], eye[1], None]
    semantic = np.stack([eye[3], eye[3], eye[2]])  # the captioned items' ConSE points elsewhere
    features = np.eye(3, dtype=np.float32)
    words = ({"thing": np.asarray([False, False, True])}, {"thing": eye[2]})
    for name, scheme in schemes().items():
        scores = scheme_scores(scheme, features, semantic, captions, features[:2], np.arange(2), words)
        assert scores.caption_top1 == 1.0 and scores.fused_top1 == 1.0, name
        assert np.isclose(scores.p10, 1 / 3) and np.isclose(scores.p10_half, 1 / 3), name  # first of 3
