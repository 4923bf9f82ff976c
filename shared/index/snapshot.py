"""Shard snapshot files: a shard's graphs, records and tuning in one file with the log position
it covers, written atomically and durably, and loaded only once the whole file checks out.

Snapshot file layout (little-endian), format version 7:
    header   magic b"MMSHARD\\0", u32 format version, u32 dim, u64 count (live items),
             u32 position length, u64 payload length, 32-byte SHA-256
    position the log position the snapshot covers, UTF-8
    payload  u64 n + n bytes of JSON {"image_dim", "layout", "recall_target", "calibrated_at",
             "tuning": {kind: {"ef", "bands": [[below, ef], ...] (none: never searched again),
             "mixes": [[ef, reached], ...] (measured on real queries; absent in older files: none)}}, "vector_dtype",
             "vector_dtypes" (one per block: how the store keeps it), "projections" (one per graph,
             `shared.index.projection`: {"dims" (0: not projected), "learned_at" (items when its
             directions were last learned; 0: never), "kept"})},
             per graph with dims: u64 n + n bytes of its directions (float32, dims x width),
             per graph of the layout (`shared.index.layouts.graphs`: fused then text, image
             then text, or the one graph): u64 n + n bytes of hnswlib `save_index` output,
             per block (image then text; or the whole vector): u64 n + n bytes of the vector
             store's rows of its dims (count x width, of the block's "vector_dtypes"), one per item in the
             order of the records,
             u64 n + n bytes of JSON records [{"id", "text", "metadata", "has_image",
             "thumbnail": [offset, length] | null, "blocks"}] (blocks: 1 image, 2 text,
             3 both, 0 neither (all zeros); 1 in a one-graph shard),
             u64 n + n bytes of thumbnails, concatenated
The SHA-256 covers every byte after the magic except the digest itself: the header fields,
the position and the payload. Older versions still load: 6 (each kind's tuning with one far list,
{"ef", "far_below", "far_ef"}: it serves as one band until the tuning is measured again, on
load), 5 (as 6 without "projections": no
graph projected; a graph due is projected on load), 4 (every block of "vector_dtype": a
narrow block written in float16 is kept in float32 from then on, `shared.index.vector_store`),
3 (as 4 without "layout": per-block graphs,
layout "blocks"), 2 (as 3 without the vector store: it is rebuilt from the graphs on load; its
tuning is measured again, `far_below` being per unit of another norm) and 1 (one graph over
the whole vectors; payload: graph, records without "blocks", thumbnails).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import hnswlib
import numpy as np

from shared.errors import SnapshotError
from shared.index import layouts
from shared.index.calibration import Tuning
from shared.index.graph import IMAGE
from shared.index.labels import label_for
from shared.index.projection import Projection
from shared.index.records import ItemRecord
from shared.index.vector_store import DTYPES, VectorStore
from shared.runtime.forked import ForkFailed, run_forked

log = logging.getLogger(__name__)

MAGIC = b"MMSHARD\0"
FORMAT_VERSION = 7
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
_HEADER = struct.Struct("<8sIIQIQ32s")
_DIGEST_AT = _HEADER.size - 32
_U64 = struct.Struct("<Q")
_CHUNK = 1 << 20
_STORE_ROWS = 4096        # vector store rows written at a time
_SYNC_EVERY = 1 << 20     # snapshot bytes written between two fdatasyncs
SNAPSHOT_NICENESS = 10    # the snapshot writer yields the CPU to the searches


@dataclass
class ShardState:
    """What a snapshot holds of a shard."""

    dim: int
    image_dim: int                     # 0: one graph over the whole vectors
    layout: str                        # `shared.index.layouts`
    recall_target: float
    calibrated_at: int                 # live items at the last calibration (0: never)
    tuning: dict[str, Tuning] | None   # per query kind; None (loaded only): version 1 kept none
    graphs: list[hnswlib.Index]        # in the order of `layouts.graphs(layout, ...)`
    records: dict[int, ItemRecord]     # by label
    blocks: dict[int, int]             # label -> bits of the graphs that hold the item
    store: VectorStore | None          # every item's vector; None (loaded only): versions 1 and 2 kept none
    projections: list[tuple[Projection | None, int]]  # per graph: its projection (None: none) and learned_at


def save(path: Path, position: str, state: Callable[[], ShardState],
         frozen: Callable[[], AbstractContextManager[Any]], *, forked: bool = True) -> None:
    """Write a snapshot of `state()` covering the log up to `position`; atomic and durable.

    The file is written by a forked child (`shared.runtime.forked`): hnswlib's `save_index` holds
    the GIL throughout, and in this process it would stall every search thread. `frozen()`
    (the shard's locks, which keep its state whole) is held across the fork only, so the child
    writes the state as it was at that moment while writes here go on. The child runs niced
    and syncs every _SYNC_EVERY bytes: one fsync of the whole file at the end made Redis's own
    fsyncs (appendfsync always) wait behind it, and searches with them. When no child can be
    forked, or with `forked=False`, this process writes it, holding `frozen()`.
    """
    path = Path(path)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp = work / "snapshot"

    def write() -> None:
        _write(tmp, position.encode("utf-8"), state())

    try:
        if forked:
            try:
                run_forked(write, frozen(), niceness=SNAPSHOT_NICENESS)
            except ForkFailed as exc:  # a snapshot still beats a log that grows without end
                log.warning("no snapshot writer could be forked (%s); writing %s here, searches wait", exc, path)
                forked = False
        if not forked:
            with frozen():
                write()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write(tmp: Path, position: bytes, state: ShardState) -> None:
    """The snapshot file's bytes, written to `tmp` and synced (the graphs go through files
    beside it: hnswlib saves only to files)."""
    graph_files = [tmp.parent / f"graph{i}.hnsw" for i in range(len(state.graphs))]
    for graph, graph_file in zip(state.graphs, graph_files):
        graph.save_index(str(graph_file))
    meta = {"image_dim": state.image_dim, "layout": state.layout, "recall_target": state.recall_target,
            "calibrated_at": state.calibrated_at,
            "tuning": {kind: asdict(t) for kind, t in state.tuning.items()}, "vector_dtype": state.store.dtype,
            "vector_dtypes": state.store.dtypes,
            "projections": [{"dims": 0 if p is None else p.dims, "learned_at": learned_at,
                             "kept": None if p is None else p.kept} for p, learned_at in state.projections]}
    entries, thumbnails, offset = [], [], 0
    for label, r in state.records.items():
        thumb = None
        if r.thumbnail is not None:
            thumb = [offset, len(r.thumbnail)]
            offset += len(r.thumbnail)
            thumbnails.append(r.thumbnail)
        entries.append({"id": r.id, "text": r.text, "metadata": r.metadata,
                        "has_image": r.has_image, "thumbnail": thumb, "blocks": state.blocks[label]})
    records_json = json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    meta_json = json.dumps(meta, separators=(",", ":")).encode("utf-8")
    directions = [p.directions.tobytes() for p, _ in state.projections if p is not None]
    graph_sizes = [graph_file.stat().st_size for graph_file in graph_files]
    labels = list(state.records)
    store_sizes = [len(labels) * (stop - start) * np.dtype(dtype).itemsize
                   for (start, stop), dtype in zip(state.store.spans, state.store.dtypes)]
    payload_size = ((3 + len(directions) + len(graph_files) + len(store_sizes)) * _U64.size + len(meta_json)
                    + sum(map(len, directions)) + sum(graph_sizes) + sum(store_sizes) + len(records_json) + offset)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, state.dim, len(entries), len(position),
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
        for data in directions:
            emit(_U64.pack(len(data)))
            emit(data)
        for graph_file, graph_size in zip(graph_files, graph_sizes):
            emit(_U64.pack(graph_size))
            with open(graph_file, "rb") as graph:
                while chunk := graph.read(_CHUNK):
                    emit(chunk)
        for block, store_size in enumerate(store_sizes):
            emit(_U64.pack(store_size))
            for start in range(0, len(labels), _STORE_ROWS):
                emit(state.store.part(block, labels[start:start + _STORE_ROWS]).tobytes())
        emit(_U64.pack(len(records_json)))
        emit(records_json)
        emit(_U64.pack(offset))
        for thumbnail in thumbnails:
            emit(thumbnail)
        out.seek(_DIGEST_AT)
        out.write(digest.digest())
        out.flush()
        os.fsync(out.fileno())


def load(path: Path) -> tuple[ShardState, str]:
    """Read a snapshot; returns what it holds and the log position it covers. Raises
    SnapshotError, having built nothing, if the file is missing, truncated, of another format
    or version, or fails its checksum."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version, dim, count, payload_size, position = _verify(f, path)
            if version == 1:
                meta: dict[str, Any] = {"image_dim": 0, "recall_target": 0.99, "calibrated_at": 0, "tuning": None}
            else:
                meta = json.loads(_read_exact(f, _read_u64(f)))
            if version < 7:  # one far list (before 3 per unit of the query's whole norm): measured again
                meta["calibrated_at"] = 0
            image_dim = meta["image_dim"] if 0 < meta["image_dim"] < dim else 0
            layout = layouts.check(meta.get("layout", "blocks"), image_dim)
            kept = layouts.graphs(layout, dim, image_dim)
            projections = [(_read_projection(f, p, g.stop - g.start) if p["dims"] else None, int(p["learned_at"]))
                           for g, p in zip(kept, meta.get("projections") or [{"dims": 0, "learned_at": 0}] * len(kept))]
            graphs = [_load_graph(f, path, g.stop - g.start if p is None else p.dims)
                      for g, (p, _) in zip(kept, projections)]
            spans = [(block.start, block.stop) for block in layouts.blocks(dim, image_dim)]
            dtype = meta.get("vector_dtype")
            dtypes = meta.get("vector_dtypes") or [dtype] * len(spans)
            parts = ([_read_rows(f, count, stop - start, part_dtype) for (start, stop), part_dtype in zip(spans, dtypes)]
                     if version >= 3 else None)
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
        tuning = None if meta["tuning"] is None else {kind: Tuning.of(t) for kind, t in meta["tuning"].items()}
        store = None if parts is None else VectorStore.of(spans, list(records), parts, dtype)
        state = ShardState(dim, image_dim, layout, float(meta["recall_target"]), int(meta["calibrated_at"]), tuning,
                           graphs, records, blocks, store, projections)
    except SnapshotError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"cannot load snapshot {path}: {exc}") from exc
    if len(records) != count:
        raise SnapshotError(f"snapshot {path}: header says {count} items, payload has {len(records)}")
    return state, position


def read_position(path: Path) -> str:
    """The log position a snapshot covers, after verifying the whole file (SnapshotError if bad)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _verify(f, path)[4]
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"cannot read snapshot {path}: {exc}") from exc


def fsync_dir(directory: Path) -> None:
    """Make the entries of `directory` (a file just renamed into it) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _read_projection(f: BinaryIO, meta: dict[str, int], width: int) -> Projection:
    """One projection section of a snapshot: the directions of a graph `width` dims wide."""
    return Projection(_read_rows(f, meta["dims"], width, "float32"), float(meta["kept"]))


def _read_rows(f: BinaryIO, count: int, width: int, dtype: str) -> np.ndarray:
    """One vector store section of a snapshot: `count` rows of `width` values of `dtype`."""
    if dtype not in DTYPES:
        raise SnapshotError(f"snapshot's vectors are of an unknown type {dtype!r}")
    rows = np.empty((count, width), np.dtype(dtype))
    if _read_u64(f) != rows.nbytes or f.readinto(memoryview(rows).cast("B")) != rows.nbytes:
        raise SnapshotError(f"snapshot's vector section is not {count} x {width} {dtype}")
    return rows


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
