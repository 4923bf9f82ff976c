"""One shard's searchable index: an hnswlib graph (inner-product space) plus item records.

Only the shard's owner writes it (upserts and deletes from the shard's log, in bounded
batches); any number of threads search it. hnswlib must never run `add_items`,
`mark_deleted` or `resize_index` alongside `knn_query`, so writes hold the write side of a
`RWLock` and searches the read side. Snapshots are single files written atomically, with a
checksum and the log position they cover; a snapshot that fails any check is never loaded.

Snapshot file layout (little-endian):
    header   magic b"MMSHARD\\0", u32 format version, u32 dim, u64 count (live items),
             u32 position length, u64 payload length, 32-byte SHA-256
    position the log position the snapshot covers, UTF-8
    payload  u64 n + n bytes of hnswlib `save_index` output,
             u64 n + n bytes of JSON records [{"id", "text", "metadata", "has_image",
             "thumbnail": [offset, length] | null}],
             u64 n + n bytes of thumbnails, concatenated
The SHA-256 covers every byte after the magic except the digest itself: the header fields,
the position and the payload.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import hnswlib
import numpy as np

from shared.errors import SnapshotError
from shared.labels import label_for
from shared.rwlock import RWLock

EF_MIN = 256
EF_PER_K = 10
EXACT_FILTER_MAX = 4096  # a filter that matches at most this many items is answered exactly

MAGIC = b"MMSHARD\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQIQ32s")
_DIGEST_AT = _HEADER.size - 32
_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20
_MISSING = object()


def ef_for(k: int) -> int:
    """The search list size for a top-k query: recall@10 >= 0.99 at the default M and ef_construction."""
    return max(EF_MIN, EF_PER_K * k)


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
    """One result of a shard search; `score` is the inner product with the query."""

    id: str
    label: int
    score: float
    record: ItemRecord
    vector: np.ndarray | None = None


def _matches(metadata: dict[str, Any], conditions: dict[str, Any]) -> bool:
    return all(metadata.get(key, _MISSING) == value for key, value in conditions.items())


class ShardIndex:
    """hnswlib index (space "ip") of one shard plus its item records, keyed by `label_for(id)`.

    `get`, `len` and `in` read a dict without taking the lock (atomic under the GIL);
    everything that touches hnswlib takes the lock.
    """

    def __init__(self, dim: int, *, M: int = 16, ef_construction: int = 200,
                 initial_capacity: int = 1024) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self._index = hnswlib.Index(space="ip", dim=dim)
        # allow_replace_deleted: new items reuse the slots of deleted ones instead of growing.
        self._index.init_index(max_elements=max(1, initial_capacity), M=M,
                               ef_construction=ef_construction, allow_replace_deleted=True)
        self._records: dict[int, ItemRecord] = {}
        self._lock = RWLock()

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
            update: list[int] = []  # labels live in the graph once tombstones are revived
            new: list[int] = []
            revived = 0
            for label in latest:
                if label in self._records:
                    update.append(label)
                    continue
                try:  # a deleted item whose slot is still its own: revive it, then update it
                    self._index.unmark_deleted(label)
                except RuntimeError:  # never stored here, or its slot was reused since
                    new.append(label)
                else:
                    update.append(label)
                    revived += 1
            # New labels fill the slots of deleted items first, then fresh ones.
            needed = len(self._records) + revived + len(new)
            capacity = self._index.get_max_elements()
            if needed > capacity:
                self._index.resize_index(max(needed, 2 * capacity))
            for labels, replace_deleted in ((update, False), (new, True)):
                if not labels:
                    continue
                rows = [latest[label] for label in labels]
                # replace_deleted only for labels absent from the graph: hnswlib would
                # otherwise give a live label a second slot and return it twice.
                self._index.add_items(vectors[rows], np.asarray(labels, dtype=np.uint64),
                                      replace_deleted=replace_deleted)
                for label, row in zip(labels, rows):
                    self._records[label] = records[row]

    def delete(self, ids: list[str]) -> int:
        """Delete items; unknown ids are ignored. Returns how many were deleted."""
        labels = {label_for(item_id) for item_id in ids}
        deleted = 0
        with self._lock.write():
            for label in labels:
                if label in self._records:
                    self._index.mark_deleted(label)
                    del self._records[label]
                    deleted += 1
        return deleted

    # -- reads -------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, *, filter: dict[str, Any] | None = None,
               return_vectors: bool = False) -> list[SearchHit]:
        """Top-k items by inner product, best first; k is clamped to the items that qualify.

        `filter` keeps items whose metadata equals every given key's value. A filter that
        matches few items is answered by exact search over them; otherwise hnswlib searches
        with the filter. Deleted items are never returned.
        """
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if query.shape != (self.dim,):
            raise ValueError(f"query must have {self.dim} dimensions, got {query.shape[0]}")
        if k <= 0:
            return []
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
                labels, scores = self._exact(query, list(allowed), k)
            else:
                try:
                    labels, scores = self._approximate(query, k, pool, allowed)
                except RuntimeError:  # hnswlib reached fewer than k qualifying items
                    labels, scores = self._exact(query, list(self._records if allowed is None else allowed), k)
            vectors = self._index.get_items(labels) if return_vectors else None
            return [SearchHit(id=self._records[label].id, label=label, score=float(score),
                              record=self._records[label],
                              vector=None if vectors is None else vectors[i])
                    for i, (label, score) in enumerate(zip(labels, scores))]

    def _approximate(self, query: np.ndarray, k: int, pool: int,
                     allowed: set[int] | None) -> tuple[list[int], np.ndarray]:
        # hnswlib searches with a candidate list of max(ef, k) and returns the best k of it,
        # so asking for ef_for(k) results and keeping k is a search with that ef. This leaves
        # the index's shared `ef` setting alone, which concurrent searches could not change.
        size = min(pool, max(k, ef_for(k)))
        labels, distances = self._index.knn_query(
            query, k=size, num_threads=1, filter=None if allowed is None else allowed.__contains__)
        return labels[0, :k].tolist(), 1.0 - distances[0, :k]  # "ip" distance is 1 - <q, v>

    def _exact(self, query: np.ndarray, labels: list[int], k: int) -> tuple[list[int], np.ndarray]:
        scores = self._index.get_items(labels) @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return [labels[i] for i in top], scores[top]

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
        """Sizes of the index: live items, capacity, deleted slots not yet reused, memory estimate."""
        with self._lock.read():
            capacity = self._index.get_max_elements()
            stored = self._index.get_current_count()
            live = len(self._records)
            M = self._index.M
            record_bytes = sum(len(r.id) + len(r.text or "") + len(r.thumbnail or b"")
                               for r in self._records.values())
            ef_construction = self._index.ef_construction
        # Level 0 (vector, 2M links, label) is allocated for the whole capacity; upper levels
        # (M links each) for a 1/ln(M) share of the stored items on average. Metadata not counted.
        level0 = self.dim * 4 + (2 * M + 1) * 4 + 8
        upper = (M + 1) * 4 / math.log(max(M, 2))
        return {"count": live, "capacity": capacity, "deleted": stored - live, "dim": self.dim,
                "M": M, "ef_construction": ef_construction,
                "bytes": int(capacity * level0 + stored * upper + record_bytes)}

    # -- snapshots ---------------------------------------------------------------------------
    def save(self, path: Path, log_position: str) -> None:
        """Write a snapshot covering the log up to `log_position`; atomic and durable."""
        path = Path(path)
        position = log_position.encode("utf-8")
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        graph_file = tmp.with_suffix(".hnsw")
        try:
            with os.fdopen(fd, "wb") as out:
                with self._lock.read():  # a consistent pair of graph and records
                    self._index.save_index(str(graph_file))
                    records = list(self._records.values())
                entries, thumbnails, offset = [], [], 0
                for r in records:
                    thumb = None
                    if r.thumbnail is not None:
                        thumb = [offset, len(r.thumbnail)]
                        offset += len(r.thumbnail)
                        thumbnails.append(r.thumbnail)
                    entries.append({"id": r.id, "text": r.text, "metadata": r.metadata,
                                    "has_image": r.has_image, "thumbnail": thumb})
                records_json = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                graph_size = graph_file.stat().st_size
                payload_size = 3 * _U64.size + graph_size + len(records_json) + offset
                header = _HEADER.pack(MAGIC, FORMAT_VERSION, self.dim, len(records), len(position),
                                      payload_size, bytes(32))
                digest = hashlib.sha256(header[len(MAGIC):_DIGEST_AT])

                def emit(data: bytes) -> None:
                    out.write(data)
                    digest.update(data)

                out.write(header)
                emit(position)
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
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
            graph_file.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> tuple[ShardIndex, str]:
        """Load a snapshot; returns the index and the log position it covers.

        Raises SnapshotError, having built nothing, if the file is missing, truncated, of
        another format or version, or fails its checksum.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                dim, count, payload_size, position = _verify(f, path)
                graph_size = _read_u64(f)
                fd, graph_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".load")
                try:
                    with os.fdopen(fd, "wb") as graph:
                        for start in range(0, graph_size, _CHUNK):
                            graph.write(_read_exact(f, min(_CHUNK, graph_size - start)))
                    index = hnswlib.Index(space="ip", dim=dim)
                    index.load_index(graph_name, allow_replace_deleted=True)
                finally:
                    os.unlink(graph_name)
                entries = json.loads(_read_exact(f, _read_u64(f)))
                thumbnails = _read_exact(f, _read_u64(f))
                if f.tell() != _HEADER.size + len(position.encode("utf-8")) + payload_size:
                    raise SnapshotError(f"snapshot {path}: payload sections do not add up")
            records: dict[int, ItemRecord] = {}
            for e in entries:
                thumb = e["thumbnail"]
                records[label_for(e["id"])] = ItemRecord(
                    id=e["id"], text=e["text"], metadata=e["metadata"], has_image=e["has_image"],
                    thumbnail=None if thumb is None else thumbnails[thumb[0]:thumb[0] + thumb[1]])
        except SnapshotError:
            raise
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"cannot load snapshot {path}: {exc}") from exc
        if len(records) != count or index.dim != dim:
            raise SnapshotError(f"snapshot {path}: header says {count} items of dim {dim}, "
                                f"payload has {len(records)} of dim {index.dim}")
        shard = cls(dim, M=index.M, ef_construction=index.ef_construction, initial_capacity=1)
        shard._index = index
        shard._records = records
        return shard, position

    @staticmethod
    def read_position(path: Path) -> str:
        """The log position a snapshot covers, after verifying the whole file (SnapshotError if bad)."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                return _verify(f, path)[3]
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc


def _verify(f: BinaryIO, path: Path) -> tuple[int, int, int, str]:
    """Check header, length and checksum; returns (dim, count, payload size, position) and
    leaves `f` at the start of the payload."""
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise SnapshotError(f"snapshot {path} is truncated: {len(header)} bytes, shorter than its header")
    magic, version, dim, count, position_size, payload_size, digest = _HEADER.unpack(header)
    if magic != MAGIC:
        raise SnapshotError(f"{path} is not a shard snapshot (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise SnapshotError(f"snapshot {path} has format version {version}; this build reads {FORMAT_VERSION}")
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
    return dim, count, payload_size, position


def _read_exact(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise SnapshotError(f"snapshot ends early: wanted {size} bytes, got {len(data)}")
    return data


def _read_u64(f: BinaryIO) -> int:
    return _U64.unpack(_read_exact(f, _U64.size))[0]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
