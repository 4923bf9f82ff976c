"""The floor of the search benchmark: the same vectors in one in-process `ShardIndex`,
searched one query at a time with the same query vectors as the service."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.search.queries import K, Query, recall, top1
from bench.service import latency_ms
from shared.index.layouts import DEFAULT_LAYOUT
from shared.index.shard_index import ItemRecord, ShardIndex

INDEX_BATCH = 1000  # rows per ShardIndex.upsert when building the floor


def floor(vectors: np.ndarray, ids: list[str], metadata: list[dict[str, Any]], image_dim: int,
          queries: dict[str, list[Query]], exact: dict[str, list[list[str]]], repeats: int,
          layout: str = DEFAULT_LAYOUT) -> dict[str, Any]:
    """One in-process ShardIndex of all vectors (the first `len(metadata)` with that metadata), of
    `layout` (`shared.index.layouts`):
    build time and its vector and graph bytes (`stats()`); per query kind latency, recall@10
    and top-1, and exact search's top-1."""
    index = ShardIndex(vectors.shape[1], image_dim=image_dim, layout=layout)
    t0 = time.perf_counter()
    for start in range(0, len(ids), INDEX_BATCH):
        batch = ids[start:start + INDEX_BATCH]
        index.upsert(batch, vectors[start:start + INDEX_BATCH],
                     [ItemRecord(i, metadata=metadata[start + j] if start + j < len(metadata) else {})
                      for j, i in enumerate(batch)])
    stats = index.stats()
    out: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 1), "vector_bytes": stats["vector_bytes"],
                           "graph_bytes": stats["graph_bytes"], "bytes": stats["bytes"]}
    for kind, qs in queries.items():
        seconds, recalls, firsts = [], [], []
        for _ in range(repeats):
            for q, truth in zip(qs, exact[kind]):
                t = time.perf_counter()
                hits = index.search(q.vector, K, filter=q.filter, return_vectors=True)
                seconds.append(time.perf_counter() - t)
                recalls.append(recall([h.id for h in hits], truth))
                firsts.append(hits[0].id if hits else None)
        out[kind] = {**latency_ms(seconds), "recall_at_10": round(float(np.mean(recalls)), 4),
                     "top1": top1(qs * repeats, firsts), "exact_top1": top1(qs, [t[0] for t in exact[kind]])}
    return out
