"""Merging the per-shard top-k lists of one search into the global top-k.

Each shard answers with its hits sorted by score, best first; the query worker merges them
with a k-way heap merge. An id that more than one shard returns (e.g. while an item moves
between shards) is kept once, at its best score. Ties are broken stably: the earlier shard
in the input, then the earlier rank within that shard, so equal inputs give equal outputs.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any


def merge_topk(per_shard: Sequence[Sequence[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """The best `k` hits (dicts with "id" and "score") of lists sorted by score, descending."""
    if k <= 0:
        return []
    # Heap entries: (-score, shard, rank); the two indices make the order total and stable.
    heap = [(-hits[0]["score"], shard, 0) for shard, hits in enumerate(per_shard) if hits]
    heapq.heapify(heap)
    merged: list[dict[str, Any]] = []
    seen: set[Any] = set()
    while heap and len(merged) < k:
        _, shard, rank = heapq.heappop(heap)
        hits = per_shard[shard]
        hit = hits[rank]
        if hit["id"] not in seen:
            seen.add(hit["id"])
            merged.append(hit)
        if rank + 1 < len(hits):
            heapq.heappush(heap, (-hits[rank + 1]["score"], shard, rank + 1))
    return merged
