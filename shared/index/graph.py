"""One hnswlib graph (space "ip") over some dims of a shard's stored vectors: the dims it holds,
which items it holds, how a batch of writes and a search reach it, and an estimate of its memory.

An item's block bits say which of its blocks are non-zero (IMAGE, TEXT; a one-graph shard's
whole vectors count as IMAGE). A graph holds the items that have any of its own bits
(`shared.index.layouts`: the text graph holds the items with a text block, a fused graph
over the whole vectors, bits IMAGE | TEXT, every item). Labels are
`shared.index.labels.label_for(id)`. A projected graph (`shared.index.projection`) holds each
item's projection instead of its dims, and scores a search by the projections. The caller holds
the shard's lock: hnswlib must never write (`add_items`, `mark_deleted`, `resize_index`)
alongside a search.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import hnswlib
import numpy as np

from shared.index.projection import Projection

IMAGE, TEXT = 1, 2        # block bits; a one-graph shard's whole vectors count as IMAGE
GROWTH = 1.25             # capacity grows by this factor...
GROW_MIN = 1024           # ...and by at least this many slots

# hnswlib's memory per element besides level 0 (vector, 2M links + count, label): per slot of
# capacity a link-list mutex (40), an upper-levels pointer (8), a level (4) and a visited-list
# mark (2); per stored element a label-map entry (~40) and, on 1/(M-1) upper levels on average,
# M links + count.
_SLOT_OVERHEAD = 40 + 8 + 4 + 2
_LOOKUP_BYTES = 40


@dataclass
class Block:
    """The dims [start, stop) of the stored vectors that `name` spans, and the block bits of the
    items it concerns (for a graph: the items that have any of them)."""

    name: str
    bit: int
    start: int
    stop: int

    def part(self, vector: np.ndarray) -> np.ndarray:
        """These dims of a vector (or of each row)."""
        return vector[..., self.start:self.stop]


@dataclass
class Graph(Block):
    """One hnswlib graph over the dims [start, stop) of the stored vectors (over their
    projections by `projection`, when it has one)."""

    index: hnswlib.Index = field(kw_only=True)
    live: int = 0  # items stored and not deleted
    projection: Projection | None = field(default=None, kw_only=True)
    learned_at: int = field(default=0, kw_only=True)  # items here when directions were last learned (0: never)

    @classmethod
    def empty(cls, name: str, bit: int, start: int, stop: int, *, capacity: int, M: int,
              ef_construction: int, projection: Projection | None = None) -> Graph:
        index = hnswlib.Index(space="ip", dim=stop - start if projection is None else projection.dims)
        # allow_replace_deleted: new items reuse the slots of deleted ones instead of growing.
        index.init_index(max_elements=max(1, capacity), M=M, ef_construction=ef_construction,
                         allow_replace_deleted=True)
        return cls(name, bit, start, stop, index=index, projection=projection)

    def points(self, vectors: np.ndarray) -> np.ndarray:
        """What the graph holds of `vectors` (one vector or rows): their dims here, projected
        when the graph is."""
        part = self.part(vectors)
        return np.ascontiguousarray(part) if self.projection is None else self.projection(part)

    def stored(self, labels: list[int]) -> np.ndarray:
        """The blocks of `labels` (live here) as hnswlib stores them, copied out of the index in
        one piece (its pickle state): far faster than `get_items` per item, for rebuilding a
        shard's vector store from a snapshot that has none."""
        state = self.index.__getstate__()[0]
        n, size = state["cur_element_count"], state["size_data_per_element"]
        raw = state["data_level0"][:n * size].view(np.uint8).reshape(n, size)
        start, label_at = state["offset_data"], state["label_offset"]
        live = np.flatnonzero(raw[:, 2] & 1 == 0)  # hnswlib's delete mark: bit 0 of byte 2 of a slot's links
        slots = dict(zip(raw[live, label_at:label_at + 8].view(np.uint64)[:, 0].tolist(), live.tolist()))
        rows = [slots[label] for label in labels]
        return raw[rows, start:start + 4 * (self.stop - self.start)].view(np.float32)

    def rebuilt(self, projection: Projection, labels: list[int], read: Callable[[list[int]], np.ndarray],
                batch: int) -> Graph:
        """A graph of the same settings holding `labels` (every item live here), projected by
        `projection`; `read(labels)`: their stored vectors, read `batch` at a time."""
        graph = Graph.empty(self.name, self.bit, self.start, self.stop, capacity=len(labels), M=self.index.M,
                            ef_construction=self.index.ef_construction, projection=projection)
        graph.learned_at = len(labels)
        for start in range(0, len(labels), batch):
            chunk = labels[start:start + batch]
            graph.index.add_items(graph.points(read(chunk)), np.asarray(chunk, dtype=np.uint64))
        graph.live = len(labels)
        return graph

    def apply(self, latest: dict[int, int], blocks: dict[int, int], stored: dict[int, int],
              vectors: np.ndarray) -> None:
        """Bring the graph in line with a batch: add, update, revive or remove each item's block.

        `latest`: label -> row of `vectors`; `blocks`: label -> the item's new block bits;
        `stored`: label -> the bits it has now (absent: a new item).
        """
        update: list[int] = []  # labels live in the graph once tombstones are revived
        new: list[int] = []
        gone: list[int] = []
        revived = 0
        for label in latest:
            here = stored.get(label, 0) & self.bit
            if not blocks[label] & self.bit:
                if here:
                    gone.append(label)
                continue
            if here:
                update.append(label)
                continue
            try:  # a deleted block whose slot is still its own: revive it, then update it
                self.index.unmark_deleted(label)
            except RuntimeError:  # never stored here, or its slot was reused since
                new.append(label)
            else:
                update.append(label)
                revived += 1
        for label in gone:
            self.index.mark_deleted(label)
        self.live += revived + len(new) - len(gone)
        # New labels fill the slots of deleted items first, then fresh ones.
        capacity = self.index.get_max_elements()
        if self.live > capacity:
            self.index.resize_index(max(self.live, int(capacity * GROWTH), capacity + GROW_MIN))
        for labels, replace_deleted in ((update, False), (new, True)):
            if not labels:
                continue
            rows = [latest[label] for label in labels]
            # replace_deleted only for labels absent from the graph: hnswlib would
            # otherwise give a live label a second slot and return it twice.
            self.index.add_items(self.points(vectors[rows]), np.asarray(labels, dtype=np.uint64),
                                 replace_deleted=replace_deleted)

    def remove(self, label: int) -> None:
        """Delete a live item's block (its slot is reused by a later new item)."""
        self.index.mark_deleted(label)
        self.live -= 1

    def knn(self, query: np.ndarray, size: int, allowed: set[int] | None,
            blocks: dict[int, int]) -> tuple[list[int], list[float]]:
        """The best `size` (labels, scores) of the query's part, clamped to the items here
        (those of `allowed`, when given; `blocks`: label -> block bits); in a projected graph,
        by the projections' scores."""
        # hnswlib searches with a candidate list of max(ef, k) and returns the best k of it,
        # so asking for `size` results is a search with ef = size. This leaves the index's
        # shared `ef` setting alone, which concurrent searches could not change.
        pool = self.live if allowed is None else sum(1 for label in allowed if blocks[label] & self.bit)
        size = min(size, pool)
        if size == 0:
            return [], []
        labels, distances = self.index.knn_query(
            self.points(query), k=size, num_threads=1, filter=None if allowed is None else allowed.__contains__)
        return labels[0].tolist(), (1.0 - distances[0]).tolist()  # "ip" distance is 1 - <q, v>

    def sizes(self) -> dict[str, int]:
        """Live items, allocated slots, tombstones, the dims of its part of the vectors ("dim")
        and the dims each item takes in the graph ("graph_dim": fewer once projected)."""
        return {"count": self.live, "capacity": self.index.get_max_elements(),
                "deleted": self.index.get_current_count() - self.live, "dim": self.stop - self.start,
                "graph_dim": self.index.dim}


def estimated_bytes(M: int, sizes: list[dict[str, int]]) -> tuple[int, int]:
    """For graphs of `sizes` (`Graph.sizes`) built with M: what hnswlib keeps per live item
    besides its vector (links, label, bookkeeping), and all it allocated (every slot of
    capacity with its vector, and the stored items), in bytes."""
    links = (2 * M + 1) * 4 + 8 + _SLOT_OVERHEAD  # level 0 links, label, per-slot bookkeeping
    per_item = _LOOKUP_BYTES + (M + 1) * 4 / max(M - 1, 1)  # label map, upper levels
    graph_bytes = sum(g["count"] * (links + per_item) for g in sizes)
    allocated = sum(g["capacity"] * (g["graph_dim"] * 4 + links) + (g["count"] + g["deleted"]) * per_item
                    for g in sizes)
    return int(graph_bytes), int(allocated)
