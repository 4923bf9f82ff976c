"""The figures that say whether two vector sets have alike neighbourhoods (pure numpy + hnswlib).

- recall@k against ef of one hnswlib graph (space "ip" over unit blocks: cosine; the service's
  M and ef_construction) built over the set less its queries, searched with those queries;
  found items that tie the k-th exact score count as correct (Fashion-MNIST holds duplicate
  images, whose exact order is arbitrary);
- the gap between the k-th and the (k+1)-th exact neighbour's score of each query, whose
  median, 10th and 90th percentiles the report gives: a small gap is what makes a top-k hard
  to get exactly.

Each is measured per block: `image` (the CNN features), `text` (the text block) and `fused`
(the stored vector: its inner product is the mean of the two cosines, a 1:1 fused query).
"""
from __future__ import annotations

from dataclasses import dataclass

import hnswlib
import numpy as np

BLOCKS = ("image", "text", "fused")
TIE = 1e-6       # scores this close to the k-th exact score count as a tie


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def block(vectors: np.ndarray, image_dim: int, name: str) -> np.ndarray:
    """One block of fused vectors as unit rows (`fused`: the stored vectors themselves)."""
    if name == "image":
        return unit_rows(vectors[:, :image_dim])
    if name == "text":
        return unit_rows(vectors[:, image_dim:])
    if name == "fused":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    raise ValueError(f"block must be one of {BLOCKS}, got {name!r}")


def split(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base rows, query rows): `queries` rows drawn without replacement, the rest the base."""
    if not 0 < queries < n:
        raise ValueError(f"need 0 < queries < n, got {queries} of {n}")
    rng = np.random.default_rng(seed)
    picked = np.zeros(n, bool)
    picked[rng.choice(n, queries, replace=False)] = True
    return np.flatnonzero(~picked), np.flatnonzero(picked)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of each query's k highest inner products with `base`, best first."""
    if k > len(base):
        raise ValueError(f"k={k} exceeds the {len(base)} base rows")
    rows = np.empty((len(queries), k), np.int64)
    scores = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ base.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        scores[start:start + chunk] = np.take_along_axis(top_scores, order, axis=1)
    return rows, scores


@dataclass(frozen=True)
class Spread:
    median: float
    p10: float
    p90: float

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {"median": round(self.median, digits), "p10": round(self.p10, digits), "p90": round(self.p90, digits)}


def spread(values: np.ndarray) -> Spread:
    p10, median, p90 = np.percentile(np.asarray(values, np.float64), [10, 50, 90])
    return Spread(float(median), float(p10), float(p90))


def gaps(exact_scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Per query, the k-th exact score less the (k+1)-th (`exact_scores` best first, >= k+1 columns)."""
    if exact_scores.shape[1] < k + 1:
        raise ValueError(f"need the top {k + 1} scores, got {exact_scores.shape[1]}")
    return exact_scores[:, k - 1] - exact_scores[:, k]


def recall(base: np.ndarray, queries: np.ndarray, found: np.ndarray, kth_score: np.ndarray) -> float:
    """Mean share of each query's k found rows that score at least its k-th exact score (ties
    included); `found` is queries x k rows of `base` (-1 for a missing answer)."""
    k = found.shape[1]
    valid = found >= 0
    scores = np.einsum("qd,qkd->qk", queries, base[np.where(valid, found, 0)])
    hits = valid & (scores >= kth_score[:, None] - TIE)
    return float(np.minimum(hits.sum(axis=1), k).mean() / k)


def build_graph(base: np.ndarray, M: int, ef_construction: int, threads: int, seed: int = 100) -> hnswlib.Index:
    index = hnswlib.Index(space="ip", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=M, ef_construction=ef_construction, random_seed=seed)
    index.add_items(base, np.arange(len(base)), num_threads=threads)
    return index


def recall_curve(index: hnswlib.Index, base: np.ndarray, queries: np.ndarray, kth_score: np.ndarray,
                 efs: list[int], k: int, threads: int) -> dict[int, float]:
    """recall@k of the graph at each ef (below k hnswlib searches with ef = k)."""
    out = {}
    for ef in efs:
        index.set_ef(max(ef, k))
        found, _ = index.knn_query(queries, k=k, num_threads=threads)
        out[ef] = recall(base, queries, found.astype(np.int64), kth_score)
    return out


def ef_for(curve: dict[int, float], target: float) -> int | None:
    """The smallest ef of the curve reaching `target` (None: none does)."""
    return next((ef for ef in sorted(curve) if curve[ef] >= target), None)
