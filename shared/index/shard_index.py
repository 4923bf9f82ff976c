"""One shard's searchable index: hnswlib graphs (inner-product space), one per vector block, plus
item records.

Items are fused vectors `[image / sqrt2, text / sqrt2]` (`shared.encoding.fusion`; a missing block is
zeros). With `image_dim` (0 < image_dim < dim) the shard keeps one hnswlib graph per block: the
image graph holds the image blocks of the items that have one, the text graph the text blocks of
the items that have one; a block that is all zeros is in no graph. Each vector is stored once,
split in two, and a stored vector is read back by joining its blocks. Without `image_dim` one
graph holds the whole vectors (every item, zeros included).

Every search ranks by the inner product of the query with the fused stored vector (a missing
block counts 0). A query with one non-zero block searches only that block's graph, whose metric
is then the query's own; items without that block score exactly 0 and come after the positive
scores. A query with both blocks (or none) searches both graphs with the same list size, joins
the candidates and scores them exactly: the block scores hnswlib returned, plus the other block
of a candidate found in one list only, read from its graph, best bound first (its known score
plus that other list's lowest score) and only while the bound can still reach the k-th score
found so far (hnswlib reads vectors slowly: about 5 us per 50-d and 80 us per 1280-d vector).

The search list size (ef) of a top-k query is a calibrated ef at k = CALIBRATION_K scaled by
k / CALIBRATION_K, per query kind ("image", "text", "fused"; "vector" for a one-graph shard).
The shard calibrates itself against exact search. The queries are CALIBRATION_QUERIES of its
own stored items that have the kind's blocks, each turned towards the difference of two other
stored items until it is as close to the item as the item's nearest other item is (like a new
item among similar ones). Exact top-k comes from a matmul over every live item's block vectors
(copied out of hnswlib in one piece under the read lock, then computed outside it). `ef` is the
smallest rung of EF_LADDER whose recall@k reaches the `recall_target` with a margin for the
sample (it may miss only CALIBRATION_MARGIN of what the target allows: 99.5% for 99%), the
last rung if none does;
`far_below` is the median exact k-th score of the calibration queries per unit of query norm
(FAR_QUANTILE; the lowest left real text queries that were only a little farther than the
calibration ones at ef, with recall 0.96-0.99 at 25k items). A query farther from the items
than that (its k-th score below far_below x its norm: e.g. a text whose words no caption has,
or a photo unlike any stored one, whose top k are near-ties that a graph finds only with a
longer list), or whose search went astray, is searched again with the kind's `far_ef`. That
one is calibrated the same way on far queries: the same stored items turned towards random
directions (cosine FAR_COSINES with the item), those of them whose exact k-th score is below
far_below; it is EF_FAR where none reach the target. A kind whose graphs hold
fewer than CALIBRATE_MIN items keeps EF_DEFAULT and is never searched again; a single-block
search among at most CALIBRATE_MIN items uses a list as long as they are many (the whole graph).
Writes trigger a recalibration, run by the writing thread after it released the write lock,
once the shard reaches CALIBRATE_MIN items and then whenever it has doubled, or updates and
deletes reached RECALIBRATE_CHANGED of its size, since the last calibration. Searches go on
meanwhile; the new ef values replace the old ones at once.

Only the shard's owner writes it (upserts and deletes from the shard's log, in bounded
batches); any number of threads search it. hnswlib must never run `add_items`, `mark_deleted`
or `resize_index` alongside `knn_query`, so writes hold the write side of a `RWLock` and
searches the read side. Snapshots are single files written atomically, with a checksum and the
log position they cover, by a forked child (searches here go on meanwhile); a snapshot that fails
any check is never loaded.

Snapshot file layout (little-endian), format version 2:
    header   magic b"MMSHARD\\0", u32 format version, u32 dim, u64 count (live items),
             u32 position length, u64 payload length, 32-byte SHA-256
    position the log position the snapshot covers, UTF-8
    payload  u64 n + n bytes of JSON {"image_dim", "recall_target", "calibrated_at",
             "tuning": {kind: {"ef", "far_below" (null: never)}}},
             per graph (image then text; or the one graph): u64 n + n bytes of hnswlib
             `save_index` output,
             u64 n + n bytes of JSON records [{"id", "text", "metadata", "has_image",
             "thumbnail": [offset, length] | null, "blocks"}] (blocks: 1 image graph,
             2 text graph, 3 both, 0 neither (all zeros); 1 in a one-graph shard),
             u64 n + n bytes of thumbnails, concatenated
The SHA-256 covers every byte after the magic except the digest itself: the header fields,
the position and the payload. Version 1 (one graph over the whole vectors; payload: graph,
records without "blocks", thumbnails) still loads; `load(path, image_dim=...)` rebuilds a
shard of another layout from its vectors.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import struct
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import hnswlib
import numpy as np

from shared.runtime.allocator import release_free_memory
from shared.errors import SnapshotError
from shared.runtime.forked import ForkFailed, run_forked
from shared.index.labels import label_for
from shared.index.rwlock import RWLock

log = logging.getLogger(__name__)

EXACT_FILTER_MAX = 4096  # a filter that matches at most this many items is answered exactly

CALIBRATION_K = 10        # the k that ef is calibrated for; other k scale it
EF_DEFAULT = 256          # ef at CALIBRATION_K until a kind is calibrated
EF_LADDER = (CALIBRATION_K, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
EF_FAR = 4096             # far ef (at k = CALIBRATION_K) where no rung of EF_LADDER is enough
FAR_COSINES = (0.1, 0.9)  # far calibration queries: cosine with the stored item they turn away from
FAR_QUANTILE = 0.5        # far_below: this quantile of the calibration queries' k-th score per norm
CALIBRATION_QUERIES = 64  # stored items used as queries per kind
CALIBRATE_MIN = 1000      # a kind is calibrated once its graphs hold this many items
CALIBRATION_MARGIN = 0.5  # calibration queries may miss this share of what the target allows
RECALIBRATE_CHANGED = 0.2  # updated + deleted items, as a share of the size at the last calibration
GROWTH = 1.25             # capacity grows by this factor...
GROW_MIN = 1024           # ...and by at least this many slots
REBUILD_BATCH = 10_000    # items per upsert when rebuilding a snapshot in another layout

IMAGE, TEXT = 1, 2        # block bits; a one-graph shard stores every item in graph bit 1
KINDS_BLOCKS = ("image", "text", "fused")
KINDS_WHOLE = ("vector",)

MAGIC = b"MMSHARD\0"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sIIQIQ32s")
_DIGEST_AT = _HEADER.size - 32
_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20
_SYNC_EVERY = 1 << 20     # snapshot bytes written between two fdatasyncs
SNAPSHOT_NICENESS = 10    # the snapshot writer yields the CPU to the searches
_SCORE_ROWS = 8192  # rows per matmul when scoring a whole graph
_JOIN_BATCH = 16    # blocks read from hnswlib at a time when joining fused candidates
_MISSING = object()

# hnswlib's memory per element besides level 0 (vector, 2M links + count, label): per slot of
# capacity a link-list mutex (40), an upper-levels pointer (8), a level (4) and a visited-list
# mark (2); per stored element a label-map entry (~40) and, on 1/(M-1) upper levels on average,
# M links + count.
_SLOT_OVERHEAD = 40 + 8 + 4 + 2
_LOOKUP_BYTES = 40


def ef_for(k: int, ef_at_k10: int = EF_DEFAULT) -> int:
    """The search list size for a top-k query, given the ef calibrated at k = CALIBRATION_K."""
    return max(k, ef_at_k10, -(-ef_at_k10 * k // CALIBRATION_K))


@dataclass(frozen=True)
class Tuning:
    """A query kind's calibrated search (see the module doc); ef values are at k = CALIBRATION_K."""

    ef: int = EF_DEFAULT
    far_below: float | None = None  # per unit of query norm; None: never search again
    far_ef: int = EF_FAR            # ef of a query whose k-th score is below far_below


@dataclass(frozen=True)
class ItemRecord:
    """What a shard stores about an item besides its vector."""

    id: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    has_image: bool = False
    thumbnail: bytes | None = None


@dataclass
class SearchHit:
    """One result of a shard search; `score` is the inner product with the query, `blocks` its
    parts: per block ("image", "text") the inner product of the query's block with the item's
    (None in a one-graph shard)."""

    id: str
    label: int
    score: float
    record: ItemRecord
    vector: np.ndarray | None = None
    blocks: dict[str, float] | None = None


@dataclass
class _Graph:
    """One hnswlib graph over the dims [start, stop) of the stored vectors."""

    name: str
    bit: int
    start: int
    stop: int
    index: hnswlib.Index
    live: int = 0  # items stored and not deleted

    def part(self, vector: np.ndarray) -> np.ndarray:
        return vector[..., self.start:self.stop]


@dataclass
class _Dump:
    """A copy of one graph's stored vectors: rows of every slot, the live ones marked."""

    labels: np.ndarray   # uint64, one per row
    live: np.ndarray     # bool, one per row
    vectors: np.ndarray  # float32 rows (a strided view into the copy)


def _new_index(dim: int, capacity: int, M: int, ef_construction: int) -> hnswlib.Index:
    index = hnswlib.Index(space="ip", dim=dim)
    # allow_replace_deleted: new items reuse the slots of deleted ones instead of growing.
    index.init_index(max_elements=max(1, capacity), M=M, ef_construction=ef_construction,
                     allow_replace_deleted=True)
    return index


def _matches(metadata: dict[str, Any], conditions: dict[str, Any]) -> bool:
    return all(metadata.get(key, _MISSING) == value for key, value in conditions.items())


def _top(scores: dict[int, float], k: int) -> list[tuple[int, float]]:
    return sorted(scores.items(), key=lambda item: -item[1])[:k]


def _off_node(stored: np.ndarray, nearest: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Calibration queries: each stored vector turned towards a direction (the difference of two
    other stored vectors: one along which the items themselves vary) until it is as close to it
    as its nearest other item is, so that it lies between stored items like a new item would.
    A query that sits on a stored item would be answered by that item's own links, at a list
    size far too small for any other query."""
    noise = directions.astype(np.float32)
    norms2 = np.einsum("ij,ij->i", stored, stored)[:, None]
    noise -= np.einsum("ij,ij->i", noise, stored)[:, None] / norms2 * stored
    length = np.linalg.norm(noise, axis=1, keepdims=True)  # 0 where the two items were equal
    noise *= np.divide(np.sqrt(norms2), length, out=np.zeros_like(length), where=length > 1e-12)
    cosine = np.clip(nearest[:, None] / norms2, 0.0, 0.999)
    return (cosine * stored + np.sqrt(1.0 - cosine ** 2) * noise).astype(np.float32)


class ShardIndex:
    """hnswlib graphs (space "ip") of one shard plus its item records, keyed by `label_for(id)`.

    `get`, `len` and `in` read a dict without taking the lock (atomic under the GIL);
    everything that touches hnswlib takes the lock.
    """

    def __init__(self, dim: int, *, image_dim: int = 0, M: int = 16, ef_construction: int = 200,
                 initial_capacity: int = 1024, recall_target: float = 0.99) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if image_dim < 0:
            raise ValueError(f"image_dim must be >= 0, got {image_dim}")
        if not 0.0 < recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
        self.dim = dim
        self.image_dim = image_dim if image_dim < dim else 0
        self.recall_target = recall_target
        if self.image_dim:
            spans = [("image", IMAGE, 0, self.image_dim), ("text", TEXT, self.image_dim, dim)]
            self.kinds = KINDS_BLOCKS
        else:
            spans = [("vector", IMAGE, 0, dim)]
            self.kinds = KINDS_WHOLE
        self._graphs = [_Graph(name, bit, start, stop, _new_index(stop - start, initial_capacity, M, ef_construction))
                        for name, bit, start, stop in spans]
        self._records: dict[int, ItemRecord] = {}
        self._blocks: dict[int, int] = {}  # label -> bits of the graphs that hold the item
        self._lock = RWLock()
        # Calibration state: replaced whole (tuning) or changed under _meta; one calibration at a time.
        self._tuning: dict[str, Tuning] = {kind: Tuning() for kind in self.kinds}
        self._calibrated_at = 0  # live items at the last calibration (0: never)
        self._inserted = 0       # new items since then
        self._changed = 0        # updated and deleted items since then
        self._meta = threading.Lock()
        self._calibrating = threading.Lock()

    # -- writes ------------------------------------------------------------------------------
    def upsert(self, ids: list[str], vectors: np.ndarray, records: list[ItemRecord]) -> None:
        """Insert or replace items; an id given twice in one call keeps its last vector and record."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"vectors must have shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        if len(records) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(records)} records")
        for item_id, record in zip(ids, records):
            if record.id != item_id:
                raise ValueError(f"record id {record.id!r} does not match item id {item_id!r}")
        latest = {label_for(item_id): row for row, item_id in enumerate(ids)}  # last one wins
        if not latest:
            return
        with self._lock.write():
            blocks = {label: self._blocks_of(vectors[row]) for label, row in latest.items()}
            for graph in self._graphs:
                self._write(graph, latest, blocks, vectors)
            inserted = 0
            for label, row in latest.items():
                inserted += label not in self._records
                self._records[label] = records[row]
                self._blocks[label] = blocks[label]
        with self._meta:
            self._inserted += inserted
            self._changed += len(latest) - inserted
        self._calibrate_if_due()

    def _blocks_of(self, vector: np.ndarray) -> int:
        if not self.image_dim:
            return IMAGE
        return sum(g.bit for g in self._graphs if g.part(vector).any())

    def _write(self, graph: _Graph, latest: dict[int, int], blocks: dict[int, int],
               vectors: np.ndarray) -> None:
        """Bring one graph in line with a batch: add, update, revive or remove each item's block."""
        update: list[int] = []  # labels live in the graph once tombstones are revived
        new: list[int] = []
        gone: list[int] = []
        revived = 0
        for label in latest:
            stored = self._blocks.get(label, 0) & graph.bit
            if not blocks[label] & graph.bit:
                if stored:
                    gone.append(label)
                continue
            if stored:
                update.append(label)
                continue
            try:  # a deleted block whose slot is still its own: revive it, then update it
                graph.index.unmark_deleted(label)
            except RuntimeError:  # never stored here, or its slot was reused since
                new.append(label)
            else:
                update.append(label)
                revived += 1
        for label in gone:
            graph.index.mark_deleted(label)
        graph.live += revived + len(new) - len(gone)
        # New labels fill the slots of deleted items first, then fresh ones.
        capacity = graph.index.get_max_elements()
        if graph.live > capacity:
            graph.index.resize_index(max(graph.live, int(capacity * GROWTH), capacity + GROW_MIN))
        for labels, replace_deleted in ((update, False), (new, True)):
            if not labels:
                continue
            rows = [latest[label] for label in labels]
            # replace_deleted only for labels absent from the graph: hnswlib would
            # otherwise give a live label a second slot and return it twice.
            graph.index.add_items(np.ascontiguousarray(graph.part(vectors[rows])),
                                  np.asarray(labels, dtype=np.uint64), replace_deleted=replace_deleted)

    def delete(self, ids: list[str]) -> int:
        """Delete items; unknown ids are ignored. Returns how many were deleted."""
        labels = {label_for(item_id) for item_id in ids}
        deleted = 0
        with self._lock.write():
            for label in labels:
                if label in self._records:
                    blocks = self._blocks.pop(label)
                    for graph in self._graphs:
                        if blocks & graph.bit:
                            graph.index.mark_deleted(label)
                            graph.live -= 1
                    del self._records[label]
                    deleted += 1
        with self._meta:
            self._changed += deleted
        self._calibrate_if_due()
        return deleted

    # -- reads -------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, *, filter: dict[str, Any] | None = None,
               return_vectors: bool = False) -> list[SearchHit]:
        """Top-k items by inner product, best first; k is clamped to the items that qualify.

        `filter` keeps items whose metadata equals every given key's value. A filter that
        matches few items is answered by exact search over them; otherwise hnswlib searches
        with the filter. Deleted items are never returned. `SearchHit.vector` (with
        `return_vectors`) is the stored fused vector; `SearchHit.blocks` needs no vector read
        but the smaller block's, and that only when the query has both blocks.
        """
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (self.dim,):
            raise ValueError(f"query must have {self.dim} dimensions, got {query.shape[0]}")
        if k <= 0:
            return []
        graphs = self._graphs_for(query)
        tuning = self._tuning[self._kind(graphs)]
        far_below = None if tuning.far_below is None else tuning.far_below * float(np.linalg.norm(query))
        with self._lock.read():
            allowed: set[int] | None = None
            if filter:
                allowed = {label for label, record in self._records.items()
                           if _matches(record.metadata, filter)}
            pool = len(self._records) if allowed is None else len(allowed)
            if pool == 0:
                return []
            k = min(k, pool)
            if allowed is not None and pool <= EXACT_FILTER_MAX:
                ranked = self._exact(query, list(allowed), k)
            else:
                try:
                    # One graph of at most CALIBRATE_MIN items is searched whole (its list holds
                    # every item it reaches): cheap, and duplicates far from every other item (copies
                    # of one photo among unlike ones) hang off the graph where a shorter list misses
                    # them. Not a fused search: its join would read hundreds of blocks back.
                    whole = len(graphs) == 1 and pool <= CALIBRATE_MIN
                    ef = pool if whole else ef_for(k, tuning.ef)
                    ranked = self._approximate(query, graphs, k, ef, allowed)
                    if not whole and far_below is not None and ranked[-1][1] < far_below \
                            and tuning.far_ef > tuning.ef:
                        far_ef = min(ef_for(k, tuning.far_ef), max(EF_FAR, 2 * k))
                        ranked = self._approximate(query, graphs, k, far_ef, allowed)
                except RuntimeError:  # hnswlib reached fewer than k qualifying items
                    ranked = self._exact(query, list(self._records if allowed is None else allowed), k)
            labels = [label for label, _ in ranked]
            vectors = self._vectors(labels) if return_vectors else None
            blocks = self._block_scores(query, graphs, ranked)
            return [SearchHit(id=self._records[label].id, label=label, score=float(score),
                              record=self._records[label],
                              vector=None if vectors is None else vectors[i],
                              blocks=None if blocks is None else blocks[i])
                    for i, (label, score) in enumerate(ranked)]

    def _block_scores(self, query: np.ndarray, graphs: list[_Graph],
                      ranked: list[tuple[int, float]]) -> list[dict[str, float]] | None:
        """Each ranked item's score split by block (None in a one-graph shard), given the graphs
        the query searched (`_graphs_for`): a block the query lacks scores 0; with both, the
        smaller block is read back and the larger one is the rest."""
        if not self.image_dim:
            return None
        out = [{graph.name: 0.0 for graph in self._graphs} for _ in ranked]
        if len(graphs) == 1:
            for parts, (_, score) in zip(out, ranked):
                parts[graphs[0].name] = score
        else:
            small, large = sorted(graphs, key=lambda graph: graph.stop - graph.start)
            rows = [i for i, (label, _) in enumerate(ranked) if self._blocks[label] & small.bit]
            if rows:
                scores = small.index.get_items([ranked[i][0] for i in rows]) @ small.part(query)
                for i, score in zip(rows, scores.tolist()):
                    out[i][small.name] = score
            for parts, (_, score) in zip(out, ranked):
                parts[large.name] = score - parts[small.name]
        return out

    def _graphs_for(self, query: np.ndarray) -> list[_Graph]:
        """The graphs a query searches: its one non-zero block's, else all of them."""
        present = [g for g in self._graphs if g.part(query).any()]
        return present if len(present) == 1 else self._graphs

    def _kind(self, graphs: list[_Graph]) -> str:
        if not self.image_dim:
            return "vector"
        return graphs[0].name if len(graphs) == 1 else "fused"

    def _approximate(self, query: np.ndarray, graphs: list[_Graph], k: int, ef: int,
                     allowed: set[int] | None) -> list[tuple[int, float]]:
        """Best k (label, score) by hnswlib with list size ef; caller holds the read lock."""
        size = max(k, ef)
        found = [self._knn(graph, query, size, allowed) for graph in graphs]
        if len(found) == 1:
            ranked = list(zip(*found[0]))
        else:
            ranked = self._join(query, k, *found)
        return self._with_zeros(ranked, k, graphs, allowed)

    def _knn(self, graph: _Graph, query: np.ndarray, size: int,
             allowed: set[int] | None) -> tuple[list[int], list[float]]:
        # hnswlib searches with a candidate list of max(ef, k) and returns the best k of it,
        # so asking for `size` results is a search with ef = size. This leaves the index's
        # shared `ef` setting alone, which concurrent searches could not change.
        pool = graph.live if allowed is None else sum(1 for label in allowed if self._blocks[label] & graph.bit)
        size = min(size, pool)
        if size == 0:
            return [], []
        labels, distances = graph.index.knn_query(
            graph.part(query), k=size, num_threads=1, filter=None if allowed is None else allowed.__contains__)
        return labels[0].tolist(), (1.0 - distances[0]).tolist()  # "ip" distance is 1 - <q, v>

    def _join(self, query: np.ndarray, k: int, images: tuple[list[int], list[float]],
              texts: tuple[list[int], list[float]]) -> list[tuple[int, float]]:
        """Exact scores of the best of the image and the text candidates (see the module doc)."""
        graphs = self._graphs
        parts = (dict(zip(*images)), dict(zip(*texts)))
        # An item that has a block but is missing from that block's list is expected to score
        # there at most the list's last (lowest) score: the list did not hold every such item.
        ceilings = [found[1][-1] if found[1] else 0.0 for found in (images, texts)]
        total: dict[int, float] = {}
        unknown: list[tuple[float, int, int]] = []  # (upper bound, label, graph to read it from)
        for label in parts[0].keys() | parts[1].keys():
            missing = [i for i, graph in enumerate(graphs)
                       if label not in parts[i] and self._blocks[label] & graph.bit]
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
                scores = graph.index.get_items(labels) @ graph.part(query)
                for label, score in zip(labels, scores.tolist()):
                    total[label] = parts[1 - i][label] + score
                    if len(best) < k:
                        heapq.heappush(best, total[label])
                    else:
                        heapq.heappushpop(best, total[label])
        return _top(total, k)

    def _with_zeros(self, ranked: list[tuple[int, float]], k: int, graphs: list[_Graph],
                    allowed: set[int] | None) -> list[tuple[int, float]]:
        """Best k of `ranked` and the items in none of the searched graphs (which score 0)."""
        if len(ranked) >= k and ranked[k - 1][1] >= 0.0:
            return ranked[:k]
        searched = sum(graph.bit for graph in graphs)
        zeros: list[tuple[int, float]] = []
        for label in self._records if allowed is None else allowed:
            if len(zeros) == k:
                break
            if not self._blocks[label] & searched:
                zeros.append((label, 0.0))
        return sorted(ranked + zeros, key=lambda item: -item[1])[:k]

    def _exact(self, query: np.ndarray, labels: list[int], k: int) -> list[tuple[int, float]]:
        scores = np.zeros(len(labels), np.float32)
        for graph in self._graphs:
            part = graph.part(query)
            rows = [i for i, label in enumerate(labels) if self._blocks[label] & graph.bit]
            if rows and part.any():
                scores[rows] += graph.index.get_items([labels[i] for i in rows]) @ part
        top = np.argsort(-scores, kind="stable")[:k]
        return [(labels[i], float(scores[i])) for i in top]

    def _vectors(self, labels: list[int]) -> np.ndarray:
        """The stored fused vectors of live items, joined from their blocks."""
        out = np.zeros((len(labels), self.dim), np.float32)
        for graph in self._graphs:
            rows = [i for i, label in enumerate(labels) if self._blocks[label] & graph.bit]
            if rows:
                out[rows, graph.start:graph.stop] = graph.index.get_items([labels[i] for i in rows])
        return out

    def get(self, item_id: str) -> ItemRecord | None:
        """The item's record, or None if it is not (or no longer) here."""
        record = self._records.get(label_for(item_id))
        return record if record is not None and record.id == item_id else None

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def count(self) -> int:
        """Live (not deleted) items."""
        return len(self._records)

    def stats(self) -> dict[str, Any]:
        """Sizes and search settings of the index.

        `vector_bytes`: the live items' fused vectors as float32 (count x dim x 4);
        `graph_bytes`: what hnswlib keeps per live item besides its vector (links, label,
        bookkeeping), all graphs together; `bytes`: an estimate of the whole index, with every
        graph's allocated capacity and the records (ids, texts, thumbnails; not metadata).
        `ef`, `far_below` and `far_ef` (ef values at k = CALIBRATION_K): each query kind's tuning;
        `calibrated_at`: live items at the last calibration (0: not calibrated).
        """
        with self._lock.read():
            graphs = {g.name: {"count": g.live, "capacity": g.index.get_max_elements(),
                               "deleted": g.index.get_current_count() - g.live, "dim": g.stop - g.start}
                      for g in self._graphs}
            live = len(self._records)
            M = self._graphs[0].index.M
            ef_construction = self._graphs[0].index.ef_construction
            record_bytes = sum(len(r.id) + len(r.text or "") + len(r.thumbnail or b"")
                               for r in self._records.values())
        links = (2 * M + 1) * 4 + 8 + _SLOT_OVERHEAD  # level 0 links, label, per-slot bookkeeping
        per_item = _LOOKUP_BYTES + (M + 1) * 4 / max(M - 1, 1)  # label map, upper levels
        graph_bytes = sum(g["count"] * (links + per_item) for g in graphs.values())
        allocated = sum(g["capacity"] * (g["dim"] * 4 + links) + (g["count"] + g["deleted"]) * per_item
                        for g in graphs.values())
        with self._meta:
            tuning, calibrated_at = dict(self._tuning), self._calibrated_at
        return {"count": live, "capacity": sum(g["capacity"] for g in graphs.values()),
                "deleted": sum(g["deleted"] for g in graphs.values()), "dim": self.dim,
                "image_dim": self.image_dim, "M": M, "ef_construction": ef_construction,
                "recall_target": self.recall_target, "ef": {kind: t.ef for kind, t in tuning.items()},
                "far_below": {kind: t.far_below for kind, t in tuning.items()},
                "far_ef": {kind: t.far_ef for kind, t in tuning.items()}, "calibrated_at": calibrated_at,
                "graphs": graphs, "vector_bytes": live * self.dim * 4, "graph_bytes": int(graph_bytes),
                "bytes": int(allocated + record_bytes)}

    # -- calibration -------------------------------------------------------------------------
    def _calibration_due(self) -> bool:
        with self._meta:
            if len(self._records) < CALIBRATE_MIN:
                return False
            return (not self._calibrated_at or self._inserted >= self._calibrated_at
                    or self._changed >= RECALIBRATE_CHANGED * self._calibrated_at)

    def _calibrate_if_due(self) -> None:
        if self._calibration_due() and self._calibrating.acquire(blocking=False):
            try:
                self._calibrate()
            finally:
                self._calibrating.release()

    def calibrate(self) -> dict[str, Tuning]:
        """Tune each query kind's search now (see the module doc); returns the tuning per kind."""
        with self._calibrating:
            return self._calibrate()

    def _calibrate(self) -> dict[str, Tuning]:
        with self._lock.read():  # one consistent copy of every graph's vectors
            dumps = {graph.name: self._dump(graph) for graph in self._graphs}
            count = len(self._records)
            with self._meta:
                inserted, changed = self._inserted, self._changed
        rng = np.random.default_rng(count)
        chosen = dict(self._tuning)
        for kind in self.kinds:
            tuning = self._calibrate_kind(kind, dumps, rng)
            if tuning is not None:
                chosen[kind] = tuning
        with self._meta:
            self._tuning = chosen
            self._calibrated_at = count
            self._inserted -= inserted
            self._changed -= changed
        del dumps
        release_free_memory()  # the copies of every vector, or the process keeps their pages
        return dict(chosen)

    def _dump(self, graph: _Graph) -> _Dump:
        """Copy a graph's stored vectors out of hnswlib in one piece (its pickle state); the
        per-item `get_items` would take seconds per 100k items. Caller holds the lock."""
        state = graph.index.__getstate__()[0]
        n, size = state["cur_element_count"], state["size_data_per_element"]
        raw = state["data_level0"][:n * size].view(np.uint8).reshape(n, size)
        start, label_at = state["offset_data"], state["label_offset"]
        labels = raw[:, label_at:label_at + 8].view(np.uint64)[:, 0].copy()
        vectors = raw[:, start:start + 4 * (graph.stop - graph.start)].view(np.float32)
        live = np.fromiter((label for label, bits in self._blocks.items() if bits & graph.bit),
                           np.uint64, count=graph.live)
        return _Dump(labels, np.isin(labels, live), vectors)

    def _calibrate_kind(self, kind: str, dumps: dict[str, _Dump], rng: np.random.Generator) -> Tuning | None:
        """The tuning of `kind` (see the module doc), None when it has too few items to measure."""
        graphs = [g for g in self._graphs if g.name == kind] or self._graphs  # "fused"/"vector": all
        labels = [dumps[g.name].labels[dumps[g.name].live] for g in graphs]
        if min(len(x) for x in labels) < CALIBRATE_MIN:
            return None
        # Queries near stored items that have every searched block.
        candidates = labels[0]
        for more in labels[1:]:
            candidates = np.intersect1d(candidates, more)
        if len(candidates) < 3 * CALIBRATION_K:
            return None
        count = min(CALIBRATION_QUERIES, len(candidates) // 3)
        picks = rng.choice(candidates, size=3 * count, replace=False)
        chosen = self._stored(graphs, dumps, picks)
        picks, stored = picks[:count], chosen[:count]
        universe = np.unique(np.concatenate(labels))
        neighbours = self._exact_scores(graphs, dumps, universe, stored)
        neighbours[np.searchsorted(universe, picks), np.arange(count)] = -np.inf
        queries = _off_node(stored, neighbours.max(axis=0), chosen[count:2 * count] - chosen[2 * count:])
        top, scores = self._exact_top(graphs, dumps, universe, queries)
        far_below = float(np.quantile(scores.min(axis=0) / np.linalg.norm(queries, axis=1), FAR_QUANTILE))
        ef = self._smallest_ef(graphs, queries, universe, top, EF_LADDER[0], EF_LADDER[-1])
        # Far queries: the same items turned towards random directions, those that end up far.
        directions = np.zeros_like(stored)
        for graph in graphs:
            directions[:, graph.start:graph.stop] = rng.standard_normal((count, graph.stop - graph.start))
        cosines = rng.uniform(*FAR_COSINES, count)
        far = _off_node(stored, cosines * np.einsum("ij,ij->i", stored, stored), directions)
        far_top, far_scores = self._exact_top(graphs, dumps, universe, far)
        beyond = far_scores.min(axis=0) / np.linalg.norm(far, axis=1) < far_below
        far_ef = self._smallest_ef(graphs, far[beyond], universe, far_top[:, beyond], ef, EF_FAR) if beyond.any() else ef
        return Tuning(ef, far_below, far_ef)

    def _exact_top(self, graphs: list[_Graph], dumps: dict[str, _Dump], universe: np.ndarray,
                   queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (into `universe`) of each query's exact top CALIBRATION_K, one column per query,
        and their scores."""
        scores = self._exact_scores(graphs, dumps, universe, queries)
        top = np.argpartition(-scores, CALIBRATION_K - 1, axis=0)[:CALIBRATION_K]
        return top, scores[top, np.arange(len(queries))]

    def _smallest_ef(self, graphs: list[_Graph], queries: np.ndarray, universe: np.ndarray,
                     top: np.ndarray, start: int, otherwise: int) -> int:
        """The smallest rung of EF_LADDER from `start` on whose recall@CALIBRATION_K on `queries`
        (exact top: rows `top` of `universe`) reaches the target with the margin; `otherwise` if
        none does (the ladder's last rung for `ef`, EF_FAR for `far_ef`)."""
        truth = [set(universe[column].tolist()) for column in top.T]
        needed = (1.0 - (1.0 - self.recall_target) * CALIBRATION_MARGIN) * CALIBRATION_K * len(queries)
        for ef in (rung for rung in EF_LADDER if rung >= start):
            found = 0
            for query, expected in zip(queries, truth):
                try:
                    with self._lock.read():
                        ranked = self._approximate(query, graphs, CALIBRATION_K, ef, None)
                except RuntimeError:  # hnswlib reached too few items: `search` answers exactly
                    found += CALIBRATION_K
                    continue
                found += len(expected.intersection(label for label, _ in ranked))
            if found >= needed:
                return ef
        return otherwise

    def _stored(self, graphs: list[_Graph], dumps: dict[str, _Dump], labels: np.ndarray) -> np.ndarray:
        """The stored vectors of `labels` from the dumps; each label is live in every graph."""
        vectors = np.zeros((len(labels), self.dim), np.float32)
        for graph in graphs:
            dump = dumps[graph.name]
            rows = np.flatnonzero(dump.live)
            order = np.argsort(dump.labels[rows])
            at = rows[order[np.searchsorted(dump.labels[rows][order], labels)]]
            vectors[:, graph.start:graph.stop] = dump.vectors[at]
        return vectors

    @staticmethod
    def _exact_scores(graphs: list[_Graph], dumps: dict[str, _Dump], universe: np.ndarray,
                      queries: np.ndarray) -> np.ndarray:
        """Inner products (one row per label of `universe`, one column per query) of the
        queries with the dumped vectors of the items in `graphs` (a missing block counts 0)."""
        scores = np.zeros((len(universe), len(queries)), np.float32)
        for graph in graphs:
            dump = dumps[graph.name]
            rows = np.flatnonzero(dump.live)
            where = np.searchsorted(universe, dump.labels[rows])
            part = np.ascontiguousarray(graph.part(queries).T)
            for s in range(0, len(rows), _SCORE_ROWS):
                chunk = rows[s:s + _SCORE_ROWS]
                scores[where[s:s + _SCORE_ROWS]] += np.ascontiguousarray(dump.vectors[chunk]) @ part
        return scores

    # -- snapshots ---------------------------------------------------------------------------
    def save(self, path: Path, log_position: str, *, forked: bool = True) -> None:
        """Write a snapshot covering the log up to `log_position`; atomic and durable.

        The file is written by a forked child (`shared.runtime.forked`): hnswlib's `save_index` holds
        the GIL throughout, and in this process it would stall every search thread. The read
        and tuning locks are held across the fork only, so the child writes the graphs and
        records as they were at that moment while writes here go on. The child runs niced and
        syncs every _SYNC_EVERY bytes: one fsync of the whole file at the end made Redis's
        own fsyncs (appendfsync always) wait behind it, and searches with them. When no child
        can be forked, or with `forked=False`, this process writes it, holding the locks.
        """
        path = Path(path)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        graph_files = [tmp.with_suffix(f".{graph.name}.hnsw") for graph in self._graphs]

        def write() -> None:
            self._write_snapshot(tmp, graph_files, log_position.encode("utf-8"))

        try:
            if forked:
                try:
                    run_forked(write, self._frozen(), niceness=SNAPSHOT_NICENESS)
                except ForkFailed as exc:  # a snapshot still beats a log that grows without end
                    log.warning("no snapshot writer could be forked (%s); writing %s here, searches wait", exc, path)
                    forked = False
            if not forked:
                with self._frozen():
                    write()
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
            for graph_file in graph_files:
                graph_file.unlink(missing_ok=True)

    @contextmanager
    def _frozen(self) -> Iterator[None]:
        """Held across a snapshot's fork: no write and no tuning update is half done."""
        with self._lock.read(), self._meta:
            yield

    def _write_snapshot(self, tmp: Path, graph_files: list[Path], position: bytes) -> None:
        """The snapshot file's bytes, written to `tmp` and synced (run in the forked child)."""
        for graph, graph_file in zip(self._graphs, graph_files):
            graph.index.save_index(str(graph_file))
        meta = {"image_dim": self.image_dim, "recall_target": self.recall_target,
                "calibrated_at": self._calibrated_at,
                "tuning": {kind: asdict(t) for kind, t in self._tuning.items()}}
        entries, thumbnails, offset = [], [], 0
        for label, r in self._records.items():
            thumb = None
            if r.thumbnail is not None:
                thumb = [offset, len(r.thumbnail)]
                offset += len(r.thumbnail)
                thumbnails.append(r.thumbnail)
            entries.append({"id": r.id, "text": r.text, "metadata": r.metadata,
                            "has_image": r.has_image, "thumbnail": thumb, "blocks": self._blocks[label]})
        records_json = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        meta_json = json.dumps(meta, separators=(",", ":")).encode("utf-8")
        graph_sizes = [graph_file.stat().st_size for graph_file in graph_files]
        payload_size = ((3 + len(graph_files)) * _U64.size + len(meta_json) + sum(graph_sizes)
                        + len(records_json) + offset)
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, self.dim, len(entries), len(position),
                              payload_size, bytes(32))
        digest = hashlib.sha256(header[len(MAGIC):_DIGEST_AT])
        with open(tmp, "wb") as out:
            unsynced = 0

            def emit(data: bytes) -> None:
                nonlocal unsynced
                out.write(data)
                unsynced += len(data)
                if unsynced >= _SYNC_EVERY:  # write back as it goes: no burst for others' fsyncs to wait behind
                    out.flush()
                    os.fdatasync(out.fileno())
                    unsynced = 0
                digest.update(data)

            out.write(header)
            emit(position)
            emit(_U64.pack(len(meta_json)))
            emit(meta_json)
            for graph_file, graph_size in zip(graph_files, graph_sizes):
                emit(_U64.pack(graph_size))
                with open(graph_file, "rb") as graph:
                    while chunk := graph.read(_CHUNK):
                        emit(chunk)
            emit(_U64.pack(len(records_json)))
            emit(records_json)
            emit(_U64.pack(offset))
            for thumbnail in thumbnails:
                emit(thumbnail)
            out.seek(_DIGEST_AT)
            out.write(digest.digest())
            out.flush()
            os.fsync(out.fileno())

    @classmethod
    def load(cls, path: Path, *, image_dim: int | None = None,
             recall_target: float | None = None) -> tuple[ShardIndex, str]:
        """Load a snapshot; returns the index and the log position it covers.

        `image_dim`: the layout wanted (see the constructor); a snapshot of another layout (a
        version 1 snapshot is one graph over the whole vectors) is rebuilt from its vectors.
        None keeps the snapshot's layout. `recall_target`: None keeps the snapshot's; another
        one recalibrates. Raises SnapshotError, having built nothing, if the file is missing,
        truncated, of another format or version, or fails its checksum.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                version, dim, count, payload_size, position = _verify(f, path)
                if version == 1:
                    meta: dict[str, Any] = {"image_dim": 0, "recall_target": 0.99, "calibrated_at": 0,
                                            "tuning": {KINDS_WHOLE[0]: asdict(Tuning())}}
                else:
                    meta = json.loads(_read_exact(f, _read_u64(f)))
                stored_image_dim = meta["image_dim"] if 0 < meta["image_dim"] < dim else 0
                spans = [(0, stored_image_dim), (stored_image_dim, dim)] if stored_image_dim else [(0, dim)]
                indexes = [_load_graph(f, path, stop - start) for start, stop in spans]
                entries = json.loads(_read_exact(f, _read_u64(f)))
                thumbnails = _read_exact(f, _read_u64(f))
                if f.tell() != _HEADER.size + len(position.encode("utf-8")) + payload_size:
                    raise SnapshotError(f"snapshot {path}: payload sections do not add up")
            records: dict[int, ItemRecord] = {}
            blocks: dict[int, int] = {}
            for e in entries:
                thumb = e["thumbnail"]
                label = label_for(e["id"])
                records[label] = ItemRecord(
                    id=e["id"], text=e["text"], metadata=e["metadata"], has_image=e["has_image"],
                    thumbnail=None if thumb is None else thumbnails[thumb[0]:thumb[0] + thumb[1]])
                blocks[label] = e.get("blocks", IMAGE)
            shard = cls(dim, image_dim=stored_image_dim, M=indexes[0].M,
                        ef_construction=indexes[0].ef_construction, initial_capacity=1,
                        recall_target=float(meta["recall_target"]))
            if set(meta["tuning"]) != set(shard.kinds):
                raise SnapshotError(f"snapshot {path}: tuning of {sorted(meta['tuning'])}, expected {sorted(shard.kinds)}")
            tuning = {kind: Tuning(**t) for kind, t in meta["tuning"].items()}
        except SnapshotError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"cannot load snapshot {path}: {exc}") from exc
        if len(records) != count:
            raise SnapshotError(f"snapshot {path}: header says {count} items, payload has {len(records)}")
        for graph, index in zip(shard._graphs, indexes):
            graph.index = index
            graph.live = sum(1 for bits in blocks.values() if bits & graph.bit)
        shard._records = records
        shard._blocks = blocks
        shard._tuning = tuning
        shard._calibrated_at = int(meta["calibrated_at"])
        if image_dim is not None and (image_dim if 0 < image_dim < dim else 0) != shard.image_dim:
            shard = shard._relayout(image_dim)
        if recall_target is not None and recall_target != shard.recall_target:
            shard.recall_target = recall_target
            shard._calibrated_at = 0
        shard._calibrate_if_due()
        return shard, position

    def _relayout(self, image_dim: int) -> ShardIndex:
        """A new shard of another layout holding the same items (vectors read back from here)."""
        M, ef_construction = self._graphs[0].index.M, self._graphs[0].index.ef_construction
        shard = ShardIndex(self.dim, image_dim=image_dim, M=M, ef_construction=ef_construction,
                           initial_capacity=len(self._records), recall_target=self.recall_target)
        labels = list(self._records)
        for start in range(0, len(labels), REBUILD_BATCH):
            batch = labels[start:start + REBUILD_BATCH]
            records = [self._records[label] for label in batch]
            shard.upsert([r.id for r in records], self._vectors(batch), records)
        return shard

    @staticmethod
    def read_position(path: Path) -> str:
        """The log position a snapshot covers, after verifying the whole file (SnapshotError if bad)."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                return _verify(f, path)[4]
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc


def _load_graph(f: BinaryIO, path: Path, dim: int) -> hnswlib.Index:
    """One graph section of a snapshot, via a temporary file (hnswlib loads only from files)."""
    size = _read_u64(f)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".load")
    try:
        with os.fdopen(fd, "wb") as graph:
            for start in range(0, size, _CHUNK):
                graph.write(_read_exact(f, min(_CHUNK, size - start)))
        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(name, allow_replace_deleted=True)
    finally:
        os.unlink(name)
    return index


def _verify(f: BinaryIO, path: Path) -> tuple[int, int, int, int, str]:
    """Check header, length and checksum; returns (version, dim, count, payload size, position)
    and leaves `f` at the start of the payload."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise SnapshotError(f"snapshot {path} is truncated: {len(header)} bytes, shorter than its header")
    magic, version, dim, count, position_size, payload_size, digest = _HEADER.unpack(header)
    if magic != MAGIC:
        raise SnapshotError(f"{path} is not a shard snapshot (bad magic {magic!r})")
    if version not in READABLE_VERSIONS:
        raise SnapshotError(f"snapshot {path} has format version {version}; this build reads {READABLE_VERSIONS}")
    expected = _HEADER.size + position_size + payload_size
    actual = os.fstat(f.fileno()).st_size
    if actual != expected:
        raise SnapshotError(f"snapshot {path} is {'truncated' if actual < expected else 'too long'}: "
                            f"{actual} bytes, header says {expected}")
    check = hashlib.sha256(header[len(MAGIC):_DIGEST_AT])
    while chunk := f.read(_CHUNK):
        check.update(chunk)
    if check.digest() != digest:
        raise SnapshotError(f"snapshot {path} fails its SHA-256 checksum (corrupt)")
    f.seek(_HEADER.size)
    position = _read_exact(f, position_size).decode("utf-8")
    return version, dim, count, payload_size, position


def _read_exact(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise SnapshotError(f"snapshot ends early: wanted {size} bytes, got {len(data)}")
    return data


def _read_u64(f: BinaryIO) -> int:
    return _U64.unpack(_read_exact(f, _U64.size))[0]


def fsync_dir(directory: Path) -> None:
    """Make the entries of `directory` (a file just renamed into it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
