"""Exact scores for a search over a shard's per-block graphs (`shared.index.graph`).

A query with both blocks searches the image and the text graph, each with a list first
`FUSED_DEPTH` times as long as its own block's queries need (`ShardIndex._list_sizes`), then
longer until `deeper` finds that no item outside the lists can outscore the k-th; `join`
scores the union of their candidates exactly: the block scores hnswlib returned, plus, for a
candidate found in one list only, its other block read from the shard's vector store
(`shared.index.vector_store`: a numpy row, not hnswlib's slow `get_items`, so every candidate
is scored). Items in no searched graph score exactly 0 and
come after the positive scores (`with_zeros`); `by_block` splits a hit's score into the inner
products of the query's blocks with the item's.

`blocks` maps each live label to the bits of the graphs that hold it; the caller holds the
shard's read lock.
"""
from __future__ import annotations

import heapq
from operator import itemgetter
from typing import Iterable

import numpy as np

from shared.index.graph import Graph
from shared.index.vector_store import VectorStore

Found = tuple[list[int], list[float]]
"""One graph's candidates: labels and scores, best first."""


def join(query: np.ndarray, k: int, graphs: list[Graph], blocks: dict[int, int], store: VectorStore,
         found: list[Found], scored: dict[int, float] | None = None) -> list[tuple[int, float]]:
    """Best k (label, exact score) of the candidates `found` in each of `graphs` (every graph of
    the shard, in the store's span order), best first. `scored` holds the exact scores of the
    candidates of earlier rounds of the same search (label -> score), which are not read again;
    the new ones are added to it."""
    scored = {} if scored is None else scored
    parts = [dict(zip(*one)) for one in found]
    new = [label for label in dict.fromkeys(label for labels, _ in found for label in labels) if label not in scored]
    for label in new:
        scored[label] = sum(part.get(label, 0.0) for part in parts)
    for i, graph in enumerate(graphs):
        missing = [label for label in new if label not in parts[i] and blocks[label] & graph.bit]
        if missing:
            for label, score in zip(missing, store.scores(i, missing, query).tolist()):
                scored[label] += score
    return heapq.nlargest(k, scored.items(), key=itemgetter(1))


def deeper(ranked: list[tuple[int, float]], k: int, found: list[Found], sizes: list[int], costs: list[int],
           cap: int) -> list[int] | None:
    """The list sizes for another round of a search over several graphs whose lists (`found`,
    asked for `sizes` items each) `join` ranked as `ranked`; None when its best k stand.

    They stand when no item outside every list can outscore the k-th (Fagin's threshold
    algorithm): such an item scores at most the sum, over the lists, of each list's last score
    (at least 0, an item's missing block scoring 0; a list shorter than asked holds its whole
    graph, adding 0), or when no list may grow past `cap`. A list grows twice as long, which
    lowers its last score by about as much again as its whole list spans. Only lists whose
    scores still fall grow, unless none does (a flat list, ties of one caption shared by
    thousands of items, lowers the threshold by nothing when it grows): the cheapest of them
    (`costs`: a graph's dimensions) alone when that may close the gap, else all of them.
    """
    full = [len(labels) == size for (labels, _), size in zip(found, sizes)]
    threshold = sum(max(scores[-1], 0.0) for (_, scores), more in zip(found, full) if more and scores)
    kth = ranked[k - 1][1] if len(ranked) >= k else -np.inf
    if kth >= threshold:
        return None
    growable = [i for i, (more, size) in enumerate(zip(full, sizes)) if more and size < cap]
    falling = [i for i in growable if found[i][1][0] > found[i][1][-1]]
    grow = sorted(falling or growable, key=lambda i: costs[i])
    if not grow:
        return None
    cheapest = grow[0]
    if found[cheapest][1][0] - found[cheapest][1][-1] >= threshold - kth:
        grow = [cheapest]
    return [min(2 * size, cap) if i in grow else size for i, size in enumerate(sizes)]


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
             store: VectorStore, ranked: list[tuple[int, float]]) -> list[dict[str, float]]:
    """Each ranked item's score split by block (graph name of `every` graph), given the graphs
    the query searched: a block the query lacks scores 0; with both, the smaller block is read
    from the store and the larger one is the rest."""
    out = [{graph.name: 0.0 for graph in every} for _ in ranked]
    if len(searched) == 1:
        for parts, (_, score) in zip(out, ranked):
            parts[searched[0].name] = score
    else:
        small, large = sorted(searched, key=lambda graph: graph.stop - graph.start)
        rows = [i for i, (label, _) in enumerate(ranked) if blocks[label] & small.bit]
        if rows:
            scores = store.scores(every.index(small), [ranked[i][0] for i in rows], query)
            for i, score in zip(rows, scores.tolist()):
                out[i][small.name] = score
        for parts, (_, score) in zip(out, ranked):
            parts[large.name] = score - parts[small.name]
    return out
