"""Exact scores for a search over a shard's per-block graphs (`shared.index.graph`).

A query with both blocks searches the image and the text graph with the same list size;
`join` scores the candidates exactly: the block scores hnswlib returned, plus the other block
of a candidate found in one list only, read from its graph, best bound first (its known score
plus that other list's lowest score) and only while the bound can still reach the k-th score
found so far (hnswlib reads vectors slowly, the larger image blocks most of all). Items in no
searched graph score exactly 0 and come after the positive scores (`with_zeros`); `by_block`
splits a hit's score into the inner products of the query's blocks with the item's.

`blocks` maps each live label to the bits of the graphs that hold it; the caller holds the
shard's read lock.
"""
from __future__ import annotations

import heapq
from typing import Iterable

import numpy as np

from shared.index.graph import Graph

_JOIN_BATCH = 16    # blocks read from hnswlib at a time when joining fused candidates

Found = tuple[list[int], list[float]]
"""One graph's candidates: labels and scores, best first."""


def join(query: np.ndarray, k: int, graphs: list[Graph], blocks: dict[int, int], images: Found,
         texts: Found) -> list[tuple[int, float]]:
    """Best k (label, exact score) of the image and the text candidates of `graphs` (the image
    graph, then the text one), best first."""
    parts = (dict(zip(*images)), dict(zip(*texts)))
    # An item that has a block but is missing from that block's list is expected to score
    # there at most the list's last (lowest) score: the list did not hold every such item.
    ceilings = [found[1][-1] if found[1] else 0.0 for found in (images, texts)]
    total: dict[int, float] = {}
    unknown: list[tuple[float, int, int]] = []  # (upper bound, label, graph to read it from)
    for label in parts[0].keys() | parts[1].keys():
        missing = [i for i, graph in enumerate(graphs)
                   if label not in parts[i] and blocks[label] & graph.bit]
        if missing:
            i = missing[0]
            unknown.append((parts[1 - i][label] + ceilings[i], label, i))
        else:
            total[label] = parts[0].get(label, 0.0) + parts[1].get(label, 0.0)
    # Best bound first, a few at a time, while a bound can still reach the k-th score.
    unknown.sort(key=lambda entry: -entry[0])
    best: list[float] = heapq.nlargest(k, total.values())
    heapq.heapify(best)
    start = 0
    while start < len(unknown) and (len(best) < k or unknown[start][0] >= best[0]):
        batch = unknown[start:start + _JOIN_BATCH]
        start += len(batch)
        for i, graph in enumerate(graphs):
            labels = [label for _, label, g in batch if g == i]
            if not labels:
                continue
            for label, score in zip(labels, graph.scores(labels, query).tolist()):
                total[label] = parts[1 - i][label] + score
                if len(best) < k:
                    heapq.heappush(best, total[label])
                else:
                    heapq.heappushpop(best, total[label])
    return sorted(total.items(), key=lambda item: -item[1])[:k]


def with_zeros(ranked: list[tuple[int, float]], k: int, graphs: list[Graph], blocks: dict[int, int],
               labels: Iterable[int]) -> list[tuple[int, float]]:
    """Best k of `ranked` and the items of `labels` in none of the searched `graphs` (which
    score 0)."""
    if len(ranked) >= k and ranked[k - 1][1] >= 0.0:
        return ranked[:k]
    searched = sum(graph.bit for graph in graphs)
    zeros: list[tuple[int, float]] = []
    for label in labels:
        if len(zeros) == k:
            break
        if not blocks[label] & searched:
            zeros.append((label, 0.0))
    return sorted(ranked + zeros, key=lambda item: -item[1])[:k]


def by_block(query: np.ndarray, every: list[Graph], searched: list[Graph], blocks: dict[int, int],
             ranked: list[tuple[int, float]]) -> list[dict[str, float]]:
    """Each ranked item's score split by block (graph name of `every` graph), given the graphs
    the query searched: a block the query lacks scores 0; with both, the smaller block is read
    back and the larger one is the rest."""
    out = [{graph.name: 0.0 for graph in every} for _ in ranked]
    if len(searched) == 1:
        for parts, (_, score) in zip(out, ranked):
            parts[searched[0].name] = score
    else:
        small, large = sorted(searched, key=lambda graph: graph.stop - graph.start)
        rows = [i for i, (label, _) in enumerate(ranked) if blocks[label] & small.bit]
        if rows:
            scores = small.scores([ranked[i][0] for i in rows], query)
            for i, score in zip(rows, scores.tolist()):
                out[i][small.name] = score
        for parts, (_, score) in zip(out, ranked):
            parts[large.name] = score - parts[small.name]
    return out
