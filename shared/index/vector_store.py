"""A shard's stored vectors outside hnswlib: one growable numpy array per block (the dims each of
the shard's graphs holds), one row per live item, label -> row.

hnswlib 0.8's `get_items` costs 200-550 us per 1280-d vector; a row here is read in under a
microsecond, so the exact scores of any set of items (the fused join, filtered exact search,
hits' block scores, calibration) come from here. Rows are kept as `dtype` (float16 by default:
half the bytes of the float32 copy each graph keeps, so the shard stays within 1.5x of vectors
plus graphs) and scored in float32; a narrow span (at most SCANNED_WIDTH dims: the text block)
is kept in float32 whatever `dtype` says, so that every row of it can be scored at once
(`top` over the whole store): a scan that converted float16 rows would cost ten times as much.
A new item takes a deleted item's row before a fresh one;
when fewer than half of the rows are in use the arrays are compacted. The caller holds the
shard's lock (the write side for `put` and `remove`).
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from shared.index.graph import GROW_MIN, GROWTH, Graph
from shared.runtime.allocator import HANDED_BACK_BYTES

DTYPES = ("float16", "float32")
SCANNED_WIDTH = 64  # spans this narrow are stored in float32 (module doc)
# Bytes of float32 rows converted at a time when scoring: they stay in cache, and below the shard
# workers' mmap threshold, whose blocks are faulted in, zeroed, each time (shared.runtime.allocator).
_SCORE_BYTES = HANDED_BACK_BYTES // 4
_SCAN_ROWS = 65536  # float32 rows scored at a time by a scan of the whole store


def span_dtype(width: int, dtype: str) -> str:
    """How a store of `dtype` keeps a span `width` dims wide (module doc)."""
    return "float32" if width <= SCANNED_WIDTH else dtype


def as_float32(rows: np.ndarray) -> np.ndarray:
    """Stored rows (float16 or float32) in float32. OpenCV converts float16 with the CPU's F16C
    instructions; numpy 2.4's astype does not, and took 5.3 ms for 2,500 rows of 1280 dims where
    OpenCV takes 0.43: most of a filtered exact search at 1M items on 4 shards (2,500 items per
    shard at 1%) went to it."""
    if rows.dtype != np.float16 or rows.ndim != 2 or not rows.size:
        return rows.astype(np.float32, copy=False)
    return cv2.convertFp16(np.ascontiguousarray(rows).view(np.int16))


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best k scores, best first, ties in index order; every index that reaches
    the k-th score competes for the last places, not just those argpartition picked."""
    if k < len(scores):
        chosen = np.argpartition(-scores, k - 1)[:k]
        chosen = np.flatnonzero(scores >= scores[chosen].min())
    else:
        chosen = np.arange(len(scores))
    return chosen[np.argsort(-scores[chosen], kind="stable")[:k]]


class VectorStore:
    """Rows of the dims [start, stop) of each span, by label."""

    def __init__(self, spans: list[tuple[int, int]], *, dtype: str = "float16", capacity: int = GROW_MIN) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"vector dtype must be one of {DTYPES}, got {dtype!r}")
        self.spans = spans
        self.dtype = dtype
        self.dtypes = [span_dtype(stop - start, dtype) for start, stop in spans]  # as each part is kept
        capacity = max(1, capacity)
        self._parts = [np.zeros((capacity, stop - start), part_dtype)
                       for (start, stop), part_dtype in zip(spans, self.dtypes)]
        self._labels = np.zeros(capacity, np.uint64)  # the label of each row in use
        self._rows: dict[int, int] = {}
        self._free: list[int] = []  # rows below _used that no item holds
        self._used = 0              # rows ever handed out since the last compaction

    @classmethod
    def of(cls, spans: list[tuple[int, int]], labels: list[int], parts: list[np.ndarray], dtype: str) -> VectorStore:
        """A store holding `labels` in rows 0..n-1; `parts`: one array of their rows per span (of
        any float type: each is kept as its span is)."""
        store = cls(spans, dtype=dtype, capacity=1)
        store._parts = [np.ascontiguousarray(part, part_dtype) for part, part_dtype in zip(parts, store.dtypes)]
        store._labels = np.asarray(labels, np.uint64)
        store._rows = {label: row for row, label in enumerate(labels)}
        store._used = len(labels)
        if len(store._rows) != len(labels) or any(len(p) != len(labels) for p in store._parts):
            raise ValueError("a store needs one row per distinct label in every part")
        return store

    @classmethod
    def from_graphs(cls, graphs: list[Graph], blocks: dict[int, int], dtype: str) -> VectorStore:
        """A store of the items of `blocks` (label -> bits of the graphs that hold it), their
        blocks read back out of the graphs (`Graph.stored`); a block in no graph is zeros."""
        labels = list(blocks)
        parts = []
        for graph in graphs:
            part = np.zeros((len(labels), graph.stop - graph.start), np.float32)
            rows = [i for i, label in enumerate(labels) if blocks[label] & graph.bit]
            if rows:
                part[rows] = graph.stored([labels[i] for i in rows])
            parts.append(part)
        return cls.of([(graph.start, graph.stop) for graph in graphs], labels, parts, dtype)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def capacity(self) -> int:
        return len(self._labels)

    def bytes(self) -> int:
        """Bytes allocated for the rows (every row of capacity) and their labels."""
        return sum(part.nbytes for part in self._parts) + self._labels.nbytes

    # -- writes --------------------------------------------------------------------------------
    def put(self, labels: list[int], vectors: np.ndarray) -> None:
        """Store each label's vector (`vectors`: one whole vector per label, distinct labels)."""
        new = sum(1 for label in labels if label not in self._rows)
        self._reserve(self._used + max(0, new - len(self._free)))
        rows = np.empty(len(labels), np.int64)
        for i, label in enumerate(labels):
            row = self._rows.get(label)
            if row is None:
                if self._free:
                    row = self._free.pop()
                else:
                    row, self._used = self._used, self._used + 1
                self._rows[label] = row
                self._labels[row] = label
            rows[i] = row
        for part, (start, stop) in zip(self._parts, self.spans):
            part[rows] = vectors[:, start:stop]

    def remove(self, labels: Iterable[int]) -> None:
        """Forget the labels' rows (unknown labels are ignored); compacts when most rows are free."""
        for label in labels:
            row = self._rows.pop(label, None)
            if row is not None:
                self._free.append(row)
        if len(self._free) > GROW_MIN and 2 * len(self._rows) < self._used:
            self._compact()

    def _reserve(self, rows: int) -> None:
        """Room for `rows` rows, growing by GROWTH (at least GROW_MIN)."""
        if rows <= self.capacity:
            return
        capacity = max(rows, int(self.capacity * GROWTH), self.capacity + GROW_MIN)
        self._move(np.arange(self._used), capacity)

    def _compact(self) -> None:
        """Move the live rows to the front of arrays sized for them."""
        rows = np.fromiter(self._rows.values(), np.int64, count=len(self._rows))
        self._move(rows, max(GROW_MIN, int(len(rows) * GROWTH)))
        self._rows = {int(label): row for row, label in enumerate(self._labels[:len(rows)].tolist())}
        self._free = []

    def _move(self, rows: np.ndarray, capacity: int) -> None:
        """New arrays of `capacity` rows holding `rows` of the old ones at 0..len(rows)-1."""
        parts = []
        for part in self._parts:
            moved = np.zeros((capacity, part.shape[1]), part.dtype)
            moved[:len(rows)] = part[rows]
            parts.append(moved)
        labels = np.zeros(capacity, np.uint64)
        labels[:len(rows)] = self._labels[rows]
        self._parts, self._labels, self._used = parts, labels, len(rows)

    # -- reads ---------------------------------------------------------------------------------
    def rows(self, labels: Iterable[int], count: int = -1) -> np.ndarray:
        """The rows of stored labels (KeyError for one not stored)."""
        return np.fromiter((self._rows[label] for label in labels), np.int64, count=count)

    def part(self, block: int, labels: list[int]) -> np.ndarray:
        """A copy of the stored dims of span `block` of `labels`, as stored (`dtype`)."""
        return self._parts[block][self.rows(labels, len(labels))]

    def vectors(self, labels: list[int], dim: int) -> np.ndarray:
        """The stored whole vectors (`dim` dims) of `labels`, in float32."""
        out = np.zeros((len(labels), dim), np.float32)
        rows = self.rows(labels, len(labels))
        for part, (start, stop) in zip(self._parts, self.spans):
            out[:, start:stop] = part[rows]
        return out

    def scores(self, block: int, labels: list[int], query: np.ndarray) -> np.ndarray:
        """Inner products of span `block` of the whole query with the stored rows of `labels`."""
        return self._scores(block, self.rows(labels, len(labels)), query)

    def _scores(self, block: int, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        start, stop = self.spans[block]
        q = np.ascontiguousarray(query[start:stop], np.float32)
        part = self._parts[block]
        out = np.empty(len(rows), np.float32)
        step = max(1, _SCORE_BYTES // (4 * (stop - start)))
        for s in range(0, len(rows), step):
            chunk = as_float32(part[rows[s:s + step]])
            # numpy's own loop, not BLAS: BLAS's threaded gemv stalls for milliseconds when the
            # cores are busy (with other searches), where this takes well under one.
            out[s:s + step] = np.einsum("ij,j->i", chunk, q)
        return out

    def top(self, query: np.ndarray, labels: list[int], k: int) -> list[tuple[int, float]]:
        """Exact best k (label, score) of `labels` by inner product with the whole query, best
        first (ties in the order of `labels`); only the spans where the query is non-zero are read."""
        rows = self.rows(labels, len(labels))
        scores = np.zeros(len(rows), np.float32)
        for block, (start, stop) in enumerate(self.spans):
            if query[start:stop].any():
                scores += self._scores(block, rows, query)
        return [(labels[i], float(scores[i])) for i in _best(scores, k)]

    def scannable(self, query: np.ndarray) -> bool:
        """Whether every span where the query is non-zero is kept in float32 (`top_of_all`
        then reads the rows as they are)."""
        return all(part_dtype == "float32" for (start, stop), part_dtype in zip(self.spans, self.dtypes)
                   if query[start:stop].any())

    def top_of_all(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Exact best k (label, score) of every stored item, as `top`, by one pass over the rows in
        use (ties in row order); for a query that is `scannable`, else as slow as converting them."""
        scores = np.zeros(self._used, np.float32)
        for part, (start, stop) in zip(self._parts, self.spans):
            if query[start:stop].any():
                q = np.ascontiguousarray(query[start:stop], np.float32)
                for s in range(0, self._used, _SCAN_ROWS):  # numpy's loop, not BLAS (see _scores)
                    scores[s:s + _SCAN_ROWS] = np.einsum("ij,j->i", part[s:min(s + _SCAN_ROWS, self._used)], q)
        if self._free:
            scores[self._free] = -np.inf  # rows no item holds
        best = _best(scores, min(k, len(self._rows)))
        return [(int(label), float(scores[i])) for i, label in zip(best, self._labels[best].tolist())]
