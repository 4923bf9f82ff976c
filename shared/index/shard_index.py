"""One shard's searchable index: hnswlib graphs (inner-product space) over its items' fused
vectors, plus item records.

Items are fused vectors `[image / sqrt2, text / sqrt2]` (`shared.encoding.fusion`; a missing
block is zeros). Which graphs a shard keeps and which of them a query searches is its layout
(`shared.index.layouts`): by default a graph over the whole vectors, which image and fused
queries search, beside a graph over the text blocks for text queries. Every item's vector is
also in the shard's vector store (`shared.index.vector_store`, float16 by default), where
exact scores and stored vectors are read (filtered exact search, hits' block scores,
calibration): hnswlib's `get_items` is far too slow for it. A wide graph searched alone (the
fused one) holds, once it has enough items, their projections onto fewer dims learned from the
shard's own items, rebuilt beside the old one while searches go on (`shared.index.projection`);
the head of its list is then ranked exactly from the store.

Every search ranks by the inner product of the query with the fused stored vector (a missing
block counts 0); items outside the graph searched (those without a text block, for a text
query) score exactly 0 and come after the positive scores. In the per-block layout of older
snapshots a fused query searches both graphs, joins the candidates and scores them exactly from
the store (`shared.index.join`), each graph's list first FUSED_DEPTH times its own block's
calibrated one, then longer until no item outside the lists can outscore the k-th.

The list size (ef) of a search is calibrated per query kind ("image", "text", "fused"; "vector"
for a one-graph shard) by the shard itself (`shared.index.calibration`), and a query far from
every item is searched again with a longer list, its distance band's (at once, while most of
its kind's searches need that list). Where the store keeps every block the query
has in float32 (a text query: `shared.index.vector_store`) and the list would be long for the
shard's size (SCAN_ROWS_PER_EF), an unfiltered search scans the store exactly instead: at
25,000 items a text query found far took 2 ms at its far list of 4096, the scan 0.25 ms.
A search of one graph among at most CALIBRATE_MIN items uses a list as long as they are many
(the whole graph). A per-block fused query found far has its first lists lengthened to the far
ones instead of a second search. Writes trigger a recalibration when one is due, run by the
writing thread after it released the write lock.

Only the shard's owner writes it (upserts and deletes from the shard's log, in bounded
batches); any number of threads search it. hnswlib must never run `add_items`, `mark_deleted`
or `resize_index` alongside `knn_query`, so writes hold the write side of a `RWLock` and
searches the read side. Snapshots (`shared.index.snapshot`) are single files written
atomically, with a checksum and the log position they cover, by a forked child (searches here
go on meanwhile); a snapshot that fails any check is never loaded, and `load(path,
image_dim=..., layout=...)` rebuilds a shard of another layout from its vectors.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shared.errors import SnapshotError
from shared.index import calibration, layouts, projection, snapshot
from shared.index.query_sample import QuerySample, mix_of
from shared.index.filters import MetadataIndex
from shared.index.graph import Graph, estimated_bytes
from shared.index.join import by_block, deeper, join, with_zeros
from shared.index.labels import label_for
from shared.index.projection import Projection
from shared.index.records import ItemRecord
from shared.index.rwlock import RWLock
from shared.index.vector_store import VectorStore
from shared.runtime.allocator import release_free_memory

__all__ = ["EXACT_FILTER_MAX", "ItemRecord", "SearchHit", "ShardIndex"]

EXACT_FILTER_MAX = 4096  # a filter that matches at most this many items is answered exactly
FUSED_DEPTH = 2          # a fused search's first list in each block's graph, times the block's own calibrated one
REBUILD_BATCH = 10_000    # items per upsert when rebuilding a snapshot in another layout
# A search with list size ef costs about as much as an exact scan of this many float32 rows of
# its dims (50-d text blocks: about 0.5 us per list entry against 10 ns per row, 2 cores):
SCAN_ROWS_PER_EF = 50


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


class ShardIndex:
    """hnswlib graphs (space "ip") of one shard plus its item records, keyed by `label_for(id)`.

    `get`, `len` and `in` read a dict without taking the lock (atomic under the GIL);
    everything that touches hnswlib takes the lock.
    """

    def __init__(self, dim: int, *, image_dim: int = 0, layout: str = layouts.DEFAULT_LAYOUT, M: int = 16,
                 ef_construction: int = 200, initial_capacity: int = 1024, recall_target: float = 0.99,
                 vector_dtype: str = "float16", project_at: int = projection.PROJECT_AT,
                 projected_dims: int = projection.PROJECTED_DIMS, sampled_lists: bool = True) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if image_dim < 0:
            raise ValueError(f"image_dim must be >= 0, got {image_dim}")
        if not 0.0 < recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
        self.dim = dim
        self.image_dim = image_dim if image_dim < dim else 0
        self.layout = layouts.check(layout, self.image_dim)
        self.recall_target = recall_target
        self.kinds = layouts.kinds(self.layout)
        self._parts = layouts.blocks(dim, self.image_dim)
        self._graphs = [Graph.empty(g.name, g.bit, g.start, g.stop, capacity=initial_capacity, M=M,
                                    ef_construction=ef_construction)
                        for g in layouts.graphs(self.layout, dim, self.image_dim)]
        self._store = VectorStore([(p.start, p.stop) for p in self._parts], dtype=vector_dtype,
                                  capacity=initial_capacity)
        self._records: dict[int, ItemRecord] = {}
        self._blocks: dict[int, int] = {}  # label -> bits of the graphs that hold the item
        self._metadata = MetadataIndex()  # labels by metadata value, for filters
        self._lock = RWLock()
        self._writing = threading.Lock()  # one write (or projection) at a time; searches go on
        self._calibration = calibration.Calibration(self.kinds)
        self._sample = QuerySample(self.kinds)  # recent unfiltered queries, to measure the lists on
        self.sampled_lists = sampled_lists  # whether it samples them and searches with their lists
        self._project_at, self._projected_dims = project_at, projected_dims

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
        with self._writing:
            inserted = self._put(latest, vectors, records)
            self._calibration.wrote(inserted, len(latest) - inserted)
            self._project_if_due()
        self._calibrate_if_due()

    def _put(self, latest: dict[int, int], vectors: np.ndarray, records: list[ItemRecord]) -> int:
        """Write a batch (`latest`: label -> row) under the write lock; returns how many items are new."""
        with self._lock.write():
            blocks = {label: layouts.bits_of(self._parts, vectors[row]) for label, row in latest.items()}
            for graph in self._graphs:
                graph.apply(latest, blocks, self._blocks, vectors)
            self._store.put(list(latest), vectors[list(latest.values())])
            inserted = 0
            for label, row in latest.items():
                old = self._records.get(label)
                inserted += old is None
                if old is not None:
                    self._metadata.remove(label, old.metadata)
                self._records[label] = records[row]
                self._metadata.add(label, records[row].metadata)
                self._blocks[label] = blocks[label]
        return inserted

    def delete(self, ids: list[str]) -> int:
        """Delete items; unknown ids are ignored. Returns how many were deleted."""
        labels = {label_for(item_id) for item_id in ids}
        deleted = 0
        with self._writing:
            with self._lock.write():
                for label in labels:
                    if label in self._records:
                        blocks = self._blocks.pop(label)
                        for graph in self._graphs:
                            if blocks & graph.bit:
                                graph.remove(label)
                        self._metadata.remove(label, self._records.pop(label).metadata)
                        deleted += 1
                self._store.remove(labels)
            self._calibration.wrote(0, deleted)
        self._calibrate_if_due()
        return deleted

    # -- reads -------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, *, filter: dict[str, Any] | None = None,
               return_vectors: bool = False) -> list[SearchHit]:
        """Top-k items by inner product, best first; k is clamped to the items that qualify.

        `filter` keeps the items whose metadata meets every condition (`shared.index.filters`:
        equality, `in`, numeric ranges), found in the shard's metadata index. A filter that
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
        bits = layouts.bits_of(self._parts, query)
        kind = layouts.kind_of(self.layout, bits)
        parts = layouts.parts_of(self._parts, kind)  # the blocks the query has
        graphs = layouts.searched(self._graphs, bits)
        mix = mix_of(parts, query)
        tuning = self._calibration.tuning[kind]
        if self.sampled_lists:
            tuning = tuning.at(mix)
            if not filter:
                self._sample.add(kind, mix, query)
        query_scale = float(calibration.scale(parts, query))
        with self._lock.read():
            allowed: set[int] | None = None
            if filter:
                allowed = self._metadata.matching(filter)
            pool = len(self._records) if allowed is None else len(allowed)
            if pool == 0:
                return []
            k = min(k, pool)
            counted = False  # whether this search counts towards its kind's shares of the lists needed
            if allowed is not None and pool <= EXACT_FILTER_MAX:
                ranked = self._store.top(query, list(allowed), k)
            else:
                try:
                    # One graph of at most CALIBRATE_MIN items is searched whole (its list holds
                    # every item it reaches): cheap, and duplicates far from every other item (copies
                    # of one photo among unlike ones) hang off the graph where a shorter list misses
                    # them. Not a per-block fused search: its join would read hundreds of blocks back.
                    whole = len(graphs) == 1 and pool <= calibration.CALIBRATE_MIN
                    banded = not whole and tuning.far_ef > tuning.ef
                    counted = banded and allowed is None  # the running shares are of unfiltered searches
                    ef = (pool if whole else
                          calibration.ef_for(k, self._calibration.first_ef((kind, mix), tuning) if counted else tuning.ef))
                    far = ((tuning.far_below * query_scale, calibration.far_ef_for(k, tuning.far_ef))
                           if banded and len(graphs) > 1 else None)
                    # An unfiltered search of one graph whose dims the store keeps in float32
                    # scans the store instead wherever that is the cheaper of the two.
                    scans = allowed is None and len(graphs) == 1 and self._store.scannable(query)
                    if scans and pool <= SCAN_ROWS_PER_EF * ef:
                        ranked = self._store.top_of_all(query, k)
                    else:
                        ranked = self._approximate(query, graphs, k, ef, allowed, far)
                        longer = (calibration.far_ef_for(k, tuning.lists()[tuning.needs(ranked[-1][1] / query_scale)])
                                  if banded and len(graphs) == 1 else ef)
                        if longer > ef:
                            ranked = (self._store.top_of_all(query, k) if scans and pool <= SCAN_ROWS_PER_EF * longer
                                      else self._approximate(query, graphs, k, longer, allowed))
                except RuntimeError:  # hnswlib reached fewer than k qualifying items
                    ranked = self._store.top(query, list(self._records if allowed is None else allowed), k)
                if counted and ranked:
                    self._calibration.saw((kind, mix), tuning, tuning.needs(ranked[-1][1] / query_scale))
            labels = [label for label, _ in ranked]
            vectors = self._store.vectors(labels, self.dim) if return_vectors else None
            blocks = (by_block(query, self._parts, parts, self._blocks, self._store, ranked)
                      if self.image_dim else None)
            return [SearchHit(id=self._records[label].id, label=label, score=float(score),
                              record=self._records[label],
                              vector=None if vectors is None else vectors[i],
                              blocks=None if blocks is None else blocks[i])
                    for i, (label, score) in enumerate(ranked)]

    def _approximate(self, query: np.ndarray, graphs: list[Graph], k: int, ef: int,
                     allowed: set[int] | None, far: tuple[float, int] | None = None) -> list[tuple[int, float]]:
        """Best k (label, score) by hnswlib with list size ef (in a fused search: first
        `_list_sizes`, then as long as `join.deeper` asks); caller holds the read lock. `far`:
        (far_below as a score, far ef), with which a fused search whose first k-th score is below
        it lengthens its lists to the far ef's (a single-graph caller searches again itself)."""
        if len(graphs) == 1:
            labels, scores = graphs[0].knn(query, max(k, ef), allowed, self._blocks)
            # A projected graph's scores are approximate: the head of its list is ranked again exactly.
            ranked = (self._store.top(query, labels[:calibration.ef_for(k, projection.RERANK_DEPTH)], k)
                      if graphs[0].projection is not None and labels else list(zip(labels, scores)))
        else:
            sizes = self._list_sizes(graphs, k, ef)
            cap = max(*sizes, calibration.ef_for(k, calibration.EF_FAR))
            found = [graph.knn(query, size, allowed, self._blocks) for graph, size in zip(graphs, sizes)]
            scored: dict[int, float] = {}  # exact scores of the candidates met so far
            while True:
                ranked = join(query, k, self._graphs, self._blocks, self._store, found, scored)
                grown = None
                if far is not None and (len(ranked) < k or ranked[k - 1][1] < far[0]):
                    grown = [max(size, longer) for size, longer in zip(sizes, self._list_sizes(graphs, k, far[1]))]
                far = None
                if grown is None or grown == sizes:
                    grown = deeper(ranked, k, found, sizes, [g.stop - g.start for g in graphs], cap)
                if grown is None:
                    break
                found = [graph.knn(query, new, allowed, self._blocks) if new != size else one
                         for graph, one, size, new in zip(graphs, found, sizes, grown)]
                sizes = grown
        return with_zeros(ranked, k, graphs, self._blocks, self._records if allowed is None else allowed)

    def _list_sizes(self, graphs: list[Graph], k: int, ef: int) -> list[int]:
        """The first list size of each block's graph in a fused search with list size `ef`: at
        least FUSED_DEPTH times the list that block's own queries are calibrated to (an
        image-and-words query's top items match neither block best, so they rank deeper than the
        calibration's queries show); `_approximate` then grows them as `join.deeper` asks."""
        tuning = self._calibration.tuning
        return [max(k, ef, FUSED_DEPTH * calibration.ef_for(k, tuning[graph.name].ef)) for graph in graphs]

    def get(self, item_id: str) -> ItemRecord | None:
        """The item's record, or None if it is not (or no longer) here."""
        record = self._records.get(label_for(item_id))
        return record if record is not None and record.id == item_id else None

    def ids(self) -> list[str]:
        """Every id the index holds, in no order: a copy of the records taken in one step."""
        return [record.id for record in self._records.copy().values()]

    def with_vectors(self, ids: list[str]) -> list[tuple[ItemRecord, np.ndarray]]:
        """The records of those of `ids` still here (a replaced one as it is now) with their stored
        whole vectors (float32, at the store's precision), read under the read lock as searches are."""
        with self._lock.read():
            current = [record for record in map(self.get, ids) if record is not None]
            vectors = self._store.vectors([label_for(record.id) for record in current], self.dim)
        return list(zip(current, vectors))

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
        bookkeeping), all graphs together; `store_bytes`: the vector store's allocated rows
        (`vector_dtype`); `bytes`: an estimate of the whole index, with every graph's and the
        store's allocated capacity and the records (ids, texts, thumbnails; not metadata).
        `ef`, `far_below`, `far_ef` and `far_bands` (ef values at k = CALIBRATION_K): each query
        kind's tuning (`shared.index.calibration.Tuning`; `far_bands` as [below, ef] pairs,
        `sampled` as [ef, reached] per mix measured on real queries);
        `calibrated_at`: live items at the last calibration (0: not calibrated).
        """
        with self._lock.read():
            graphs = {g.name: g.sizes() for g in self._graphs}
            live = len(self._records)
            M = self._graphs[0].index.M
            ef_construction = self._graphs[0].index.ef_construction
            record_bytes = sum(len(r.id) + len(r.text or "") + len(r.thumbnail or b"")
                               for r in self._records.values())
            store_bytes = self._store.bytes()
        graph_bytes, allocated = estimated_bytes(M, list(graphs.values()))
        with self._calibration.lock:
            tuning, calibrated_at = dict(self._calibration.tuning), self._calibration.calibrated_at
        return {"count": live, "layout": self.layout, "capacity": sum(g["capacity"] for g in graphs.values()),
                "deleted": sum(g["deleted"] for g in graphs.values()), "dim": self.dim,
                "image_dim": self.image_dim, "M": M, "ef_construction": ef_construction,
                "recall_target": self.recall_target, "ef": {kind: t.ef for kind, t in tuning.items()},
                "far_below": {kind: t.far_below for kind, t in tuning.items()},
                "far_ef": {kind: t.far_ef for kind, t in tuning.items()},
                "far_bands": {kind: [list(band) for band in t.bands] for kind, t in tuning.items()},
                "sampled": {kind: [list(mix) for mix in t.mixes] for kind, t in tuning.items()},
                "calibrated_at": calibrated_at,
                "graphs": graphs, "vector_bytes": live * self.dim * 4, "graph_bytes": graph_bytes,
                "vector_dtype": self._store.dtype, "store_bytes": store_bytes,
                "bytes": allocated + store_bytes + record_bytes}

    # -- calibration -------------------------------------------------------------------------
    def calibrate(self) -> dict[str, calibration.Tuning]:
        """Tune each query kind's search now (`shared.index.calibration`); returns the tuning per kind."""
        with self._calibration.running:
            return self._calibrate()

    def settle(self) -> bool:
        """Calibrate now if the shard has grown by `calibration.SETTLE_SHARE` since the last
        calibration (or a calibration is due anyway), else measure the lists on the sampled real
        queries if they are due (`shared.index.query_sample`); whether it did either. For the
        caller that knows the shard is at rest: its writes have stopped."""
        if self._calibrate_if_due(at_rest=True):
            return True
        if self.sampled_lists and self._sample.due() and self._calibration.running.acquire(blocking=False):
            try:
                self._calibrate(items=False)
            finally:
                self._calibration.running.release()
            return True
        return False

    def _calibrate_if_due(self, *, at_rest: bool = False) -> bool:
        if self._calibration.due(len(self._records), at_rest=at_rest) and \
                self._calibration.running.acquire(blocking=False):
            try:
                self._calibrate()
            finally:
                self._calibration.running.release()
            return True
        return False

    def _calibrate(self, *, items: bool = True) -> dict[str, calibration.Tuning]:
        """Measure each kind's tuning on the shard's items (`items`; else keep it), then its
        mixes on the sampled real queries where they are enough."""
        with self._lock.read():  # one consistent copy of every block's vectors
            copies = {part.name: calibration.copy_vectors(part, i, self._store, self._blocks)
                      for i, part in enumerate(self._parts)}
            count = len(self._records)
            pending = self._calibration.pending()
        rng = np.random.default_rng(count)
        measured: dict[str, calibration.Tuning | None] = {}
        for kind in self.kinds:
            parts = layouts.parts_of(self._parts, kind)
            tuning = (calibration.measure(parts, copies, self.dim, self.recall_target, self._search_unfiltered, rng)
                      if items else self._calibration.tuning[kind])
            groups = self._sample.take(kind, only_due=not items) if self.sampled_lists else [None]
            if tuning is not None and any(group is not None for group in groups):
                tuning = calibration.sampled(parts, copies, groups, self.recall_target, self._search_unfiltered, tuning)
            measured[kind] = tuning
        tuning = (self._calibration.calibrated(count, pending, measured) if items
                  else self._calibration.retuned(measured))
        del copies
        release_free_memory()  # the copies of every vector, or the process keeps their pages
        return tuning

    def _project_if_due(self) -> None:
        """Project each wide graph that is due (`shared.index.projection`) and have the shard
        recalibrated: a new graph is built beside it from the stored vectors, then takes its place.
        The caller holds `_writing`, so no write comes between the items read and the swap, while
        searches go on in the graph replaced."""
        if not layouts.projectable(self.layout):
            return
        for i, graph in enumerate(self._graphs):
            if not projection.due(graph.stop - graph.start, graph.live, graph.learned_at,
                                  dims=self._projected_dims, project_at=self._project_at):
                continue
            labels = [label for label, bits in self._blocks.items() if bits & graph.bit]
            sample = graph.part(self._store.vectors(projection.sample(labels, len(labels)), self.dim))
            learned = Projection.learn(sample, self._projected_dims)
            del sample
            if learned.kept < projection.MIN_KEPT:
                graph.learned_at = len(labels)
                continue
            rebuilt = graph.rebuilt(learned, labels, lambda batch: self._store.vectors(batch, self.dim), REBUILD_BATCH)
            with self._lock.write():
                self._graphs[i] = rebuilt
            with self._calibration.lock:
                self._calibration.calibrated_at = 0
            release_free_memory()

    def _search_unfiltered(self, query: np.ndarray, k: int, ef: int) -> list[tuple[int, float]]:
        graphs = layouts.searched(self._graphs, layouts.bits_of(self._parts, query))
        with self._lock.read():
            return self._approximate(query, graphs, k, ef, None)

    # -- snapshots (`shared.index.snapshot`) ---------------------------------------------------
    def save(self, path: Path, log_position: str, *, forked: bool = True) -> None:
        """Write a snapshot covering the log up to `log_position`; atomic and durable. A forked
        child writes it while writes and searches here go on; with `forked=False` (or when no
        child can be forked) this process writes it, holding the locks."""
        snapshot.save(path, log_position, self._state, self._frozen, forked=forked)

    @contextmanager
    def _frozen(self) -> Iterator[None]:
        """Held across a snapshot's fork: no write and no tuning update is half done."""
        with self._lock.read(), self._calibration.lock:
            yield

    def _state(self) -> snapshot.ShardState:
        """What a snapshot holds of this shard; the caller holds `_frozen`."""
        return snapshot.ShardState(self.dim, self.image_dim, self.layout, self.recall_target, self._calibration.calibrated_at,
                                   self._calibration.tuning, [graph.index for graph in self._graphs],
                                   self._records, self._blocks, self._store,
                                   [(graph.projection, graph.learned_at) for graph in self._graphs])

    @classmethod
    def load(cls, path: Path, *, image_dim: int | None = None, layout: str | None = None,
             recall_target: float | None = None, sampled_lists: bool = True) -> tuple[ShardIndex, str]:
        """Load a snapshot; returns the index and the log position it covers.

        `image_dim` and `layout`: the layout wanted (see the constructor); a snapshot of another
        one (a version 1 snapshot is one graph over the whole vectors, versions 2 and 3 are
        "blocks") is rebuilt from its vectors. None keeps the snapshot's. `recall_target`: None keeps the snapshot's; another
        one recalibrates. Raises SnapshotError, having built nothing, if the file is missing,
        truncated, of another format or version, or fails its checksum.
        """
        state, position = snapshot.load(path)
        try:
            shard = cls._restored(state)
        except ValueError as exc:
            raise SnapshotError(f"cannot load snapshot {path}: {exc}") from exc
        wanted_dim = shard.image_dim if image_dim is None else (image_dim if 0 < image_dim < shard.dim else 0)
        wanted = layouts.check(layout or (shard.layout if shard.image_dim else layouts.DEFAULT_LAYOUT), wanted_dim)
        if (wanted_dim, wanted) != (shard.image_dim, shard.layout):
            shard = shard._relayout(wanted_dim, wanted)
        shard.sampled_lists = sampled_lists
        if recall_target is not None and recall_target != shard.recall_target:
            shard.recall_target = recall_target
            shard._calibration.calibrated_at = 0
        with shard._writing:
            shard._project_if_due()  # a snapshot of before projections, or one now due
        shard._calibrate_if_due()
        return shard, position

    @classmethod
    def _restored(cls, state: snapshot.ShardState) -> ShardIndex:
        """The shard a snapshot holds; ValueError if its settings cannot be."""
        first = state.graphs[0]
        dtype = "float16" if state.store is None else state.store.dtype
        shard = cls(state.dim, image_dim=state.image_dim, layout=state.layout, M=first.M,
                    ef_construction=first.ef_construction,
                    initial_capacity=1, recall_target=state.recall_target, vector_dtype=dtype)
        if state.tuning is not None:
            if set(state.tuning) != set(shard.kinds):
                raise ValueError(f"tuning of {sorted(state.tuning)}, expected {sorted(shard.kinds)}")
            shard._calibration.tuning = state.tuning
        shard._calibration.calibrated_at = state.calibrated_at
        for graph, index, (projected, learned_at) in zip(shard._graphs, state.graphs, state.projections):
            graph.index, graph.projection, graph.learned_at = index, projected, learned_at
            graph.live = sum(1 for bits in state.blocks.values() if bits & graph.bit)
        shard._records = state.records
        shard._blocks = state.blocks
        for label, record in shard._records.items():
            shard._metadata.add(label, record.metadata)
        # Format versions 1 and 2 kept no store: every item's blocks are read back out of the graphs.
        shard._store = state.store or VectorStore.from_graphs(shard._graphs, shard._blocks, dtype)
        return shard

    def _relayout(self, image_dim: int, layout: str) -> ShardIndex:
        """A new shard of another layout holding the same items (vectors read back from here)."""
        M, ef_construction = self._graphs[0].index.M, self._graphs[0].index.ef_construction
        shard = ShardIndex(self.dim, image_dim=image_dim, layout=layout, M=M, ef_construction=ef_construction,
                           initial_capacity=len(self._records), recall_target=self.recall_target,
                           vector_dtype=self._store.dtype)
        labels = list(self._records)
        for start in range(0, len(labels), REBUILD_BATCH):
            batch = labels[start:start + REBUILD_BATCH]
            records = [self._records[label] for label in batch]
            shard.upsert([r.id for r in records], self._store.vectors(batch, self.dim), records)
        return shard

    @staticmethod
    def read_position(path: Path) -> str:
        """The log position a snapshot covers, after verifying the whole file (SnapshotError if bad)."""
        return snapshot.read_position(path)
