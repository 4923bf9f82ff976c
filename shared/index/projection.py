"""The projection of a shard's wide graph onto fewer dims: what its hnswlib graph holds in place
of each item's vector, learned from the shard's own items.

A search of the fused graph (1330 dims) spends most of its time in hnswlib's inner products.
Once the graph holds PROJECT_AT items, it holds instead each item's projection onto the
PROJECTED_DIMS leading eigenvectors of the second-moment matrix of a sample of the shard's
items (uncentred: the projections' inner products then approximate the vectors' own, which a
centred projection's do not). The shard ranks the head of the list the graph returns
(RERANK_DEPTH) exactly, from its vector store (`shared.index.shard_index`), so every score it
gives is exact. At 250,000 items the real near queries' true top 10 were all among the first
128 by the projections, and reading and scoring the whole list of 1024 took as long as the
graph search that found it.

At 250,000 items of `bench.search`'s 1M collection (one shard, its real queries) the 1330-d
graph took 3.18 ms for fused recall@10 0.998 and the 256-d projection with the exact rerank
1.09 ms for 0.997 (directions keeping 0.977 of the second moment); with directions centred on
the mean, the graph's recall fell to 0.52-0.72. The graph's vectors take 1 KB per item
instead of 5.3 KB.

Directions that keep less than MIN_KEPT of the sample's second moment (vectors with no few
dominant directions: a projection would lose their neighbourhoods) are not used: the graph keeps
its whole dims. Either way, the directions are learned again from a new sample once the graph
has grown REPROJECT_GROWTH times past the size they were last learned at, so that the first
items do not decide for good.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROJECTED_DIMS = 256     # dims a wide graph holds once projected
PROJECT_AT = 10_000      # a graph is projected once it holds this many items
SAMPLE_ROWS = 20_000     # items the directions are learned from, at most
REPROJECT_GROWTH = 8     # learned again once the graph holds this many times the items it was learned at
MIN_KEPT = 0.95          # the share of the second moment that directions must keep to be used
RERANK_DEPTH = 128       # a projected graph's list is ranked exactly down to this depth (at k = 10, scaled like ef)


@dataclass(frozen=True)
class Projection:
    """Orthonormal directions (rows of `directions`, dims x width, float32) onto which a graph's
    vectors are projected; `kept`: the share of the second moment of the sample they were
    learned from that they keep."""

    directions: np.ndarray
    kept: float = 1.0

    @classmethod
    def learn(cls, rows: np.ndarray, dims: int) -> Projection:
        """The `dims` leading uncentred principal directions of `rows` (a sample of a graph's
        vectors, float32)."""
        rows = np.asarray(rows, dtype=np.float32)
        if not 0 < dims < rows.shape[1]:
            raise ValueError(f"dims must be in (0, {rows.shape[1]}), got {dims}")
        moment = (rows.T @ rows).astype(np.float64)
        values, vectors = np.linalg.eigh(moment)  # eigenvalues ascending
        directions = np.ascontiguousarray(vectors[:, ::-1][:, :dims].T, dtype=np.float32)
        total = float(values.sum())
        return cls(directions, float(values[::-1][:dims].sum()) / total if total > 0 else 0.0)

    @property
    def dims(self) -> int:
        return self.directions.shape[0]

    @property
    def width(self) -> int:
        return self.directions.shape[1]

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        """The projections of `vectors` (one vector or rows of `width` dims), float32."""
        return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32) @ self.directions.T)


def due(width: int, count: int, learned_at: int, *, dims: int = PROJECTED_DIMS, project_at: int = PROJECT_AT) -> bool:
    """Whether directions are to be learned now for a graph `width` dims wide holding `count`
    items, whose directions were last learned at `learned_at` items (0: never): it is at least
    twice `dims` wide and has reached `project_at` items and REPROJECT_GROWTH times `learned_at`."""
    return width >= 2 * dims and count >= max(project_at, REPROJECT_GROWTH * learned_at)


def sample(labels: list[int], seed: int) -> list[int]:
    """At most SAMPLE_ROWS of `labels`, drawn at random (reproducibly for a seed)."""
    if len(labels) <= SAMPLE_ROWS:
        return labels
    rng = np.random.default_rng(seed)
    return [labels[i] for i in np.sort(rng.choice(len(labels), SAMPLE_ROWS, replace=False))]
