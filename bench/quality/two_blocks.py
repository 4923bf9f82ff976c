"""Measurement 6b, captions first with two text blocks (bench only: the index has one text
block): a captioned item keeps its SIF caption and its ConSE vector apart, each unit-length, and
a text query scores an item by

- `sum a`: a * cos(query, caption) + (1 - a) * cos(query, ConSE), an inner product over the two
  blocks (the query's words in both, weighted a and 1 - a at query time), or
- `max`: the better of the two cosines (two graphs searched, each item kept at its best score);

an uncaptioned item's caption block is its ConSE vector, so it scores cos(query, ConSE) under
both. A fused query adds the image cosine with the default weights (the mean of the two). The
figures are measurement 6's, on the same queries and galleries.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from bench.quality.captions_first import MixScores, own_captions, strict_top1
from bench.quality.crossmodal import ranked_scores
from bench.quality.features import unit_rows

SUM_WEIGHTS = (0.5, 0.67, 0.8)
Scheme = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (caption cosines, ConSE cosines) -> text scores


def schemes() -> dict[str, Scheme]:
    """The text score of each scheme from the two blocks' cosines (queries x items)."""
    out: dict[str, Scheme] = {f"sum a={a:g}": (lambda c, s, a=a: a * c + (1 - a) * s) for a in SUM_WEIGHTS}
    out["max"] = np.maximum
    return out


def scheme_scores(scheme: Scheme, features: np.ndarray, semantic: np.ndarray, captions: list[np.ndarray | None],
                  edited: np.ndarray, fused_rows: np.ndarray, words: tuple[dict, dict]) -> MixScores:
    """Measurement 6's four figures of one two-block scheme for one caption style."""
    conse = unit_rows(semantic)
    text_rows = np.flatnonzero(own_captions(captions))
    relevant, word_vectors = words

    def text_scores(queries: np.ndarray, captioned: np.ndarray) -> np.ndarray:
        caption_block = unit_rows(np.stack([c if keep and c is not None else s
                                            for c, s, keep in zip(captions, semantic, captioned)]))
        q = unit_rows(queries)
        return scheme(q @ caption_block.T, q @ conse.T)

    everyone = np.ones(len(captions), bool)
    half = np.arange(len(captions)) % 2 == 0
    none = np.zeros(semantic.shape[1], np.float32)  # no known word: the fused query is its photo alone
    caption_queries = np.stack([captions[i] for i in text_rows])
    fused_text = text_scores(np.stack([none if captions[i] is None else captions[i] for i in fused_rows]), everyone)
    fused = (unit_rows(edited) @ unit_rows(features).T + fused_text) / 2
    word_list = list(relevant)
    word_matrix = np.stack([word_vectors[w] for w in word_list])
    by_gallery = [dict(zip(word_list, text_scores(word_matrix, g))) for g in (everyone, half)]
    return MixScores(strict_top1(text_scores(caption_queries, everyone), text_rows),
                     strict_top1(fused, fused_rows),
                     ranked_scores(by_gallery[0], relevant).p10, ranked_scores(by_gallery[1], relevant).p10)
