"""bench.quality.captions_first's scoring: top-1 counts only a strict first place, a caption
shared by two items asks nothing of either, and the mix is chosen by the issue's targets."""
from __future__ import annotations

import numpy as np

from bench.quality.captions_first import MixScores, choose, own_captions, top1


def test_top1_needs_the_own_item_strictly_first() -> None:
    items = np.eye(3)
    queries = np.asarray([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0.2, 0.9]])
    assert top1(items, queries, np.asarray([0, 1, 2])) == 2 / 3  # the tie of query 1 is a miss


def test_only_captions_of_their_own_ask() -> None:
    shared, alone = np.ones(2, np.float32), np.asarray([1, 0], np.float32)
    assert own_captions([shared, shared.copy(), None, alone]).tolist() == [False, False, False, True]


def test_the_mix_keeps_p10_and_the_plain_caption_top1() -> None:
    rows = {0.0: MixScores(0.9, 0.9, 0.3, 0.3), 0.1: MixScores(0.95, 0.95, 0.3, 0.3),
            0.25: MixScores(0.95, 0.99, 0.29, 0.3),  # loses P@10
            0.5: MixScores(0.85, 0.99, 0.31, 0.31),  # loses caption top-1
            1.0: MixScores(0.85, 0.9, 0.3, 0.3)}
    assert choose(rows) == 0.1
    rows[1.0] = MixScores(0.85, 0.9, 0.4, 0.4)  # nothing keeps v1's P@10 but v1, which loses caption top-1
    assert choose(rows) == 1.0
