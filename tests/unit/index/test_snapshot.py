"""Tests of shard snapshots: round trips of every layout, atomic replacement, writing while the
shard is written and searched, refusal of damaged files, and loading format versions 1-3."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from shared.encoding.fusion import build_query
from shared.errors import SnapshotError
from shared.index import layouts, snapshot
from shared.index.labels import label_for
from shared.index.shard_index import ItemRecord, ShardIndex
from tests.unit.index.helpers import IMAGE_DIM, STORED_ABS, TEXT_DIM, DIM, as_stored, filled, items_missing_blocks, records_for, unit


def test_snapshot_round_trip(tmp_path: Path):
    index, ids, vectors = filled(n=300, seed=5)
    index.delete(ids[:20])
    path = tmp_path / "snapshot.bin"
    index.save(path, "1700000000000-7")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.bin"]  # no temp files left

    loaded, position = ShardIndex.load(path)
    assert position == "1700000000000-7" == ShardIndex.read_position(path)
    assert len(loaded) == 280
    assert all(loaded.get(i) == index.get(i) for i in ids)
    assert loaded.get("item-24").thumbnail == b"\x18" * 4 and loaded.get("item-25").thumbnail is None
    allocated = ("capacity", "bytes", "store_bytes")  # a loaded vector store holds just its items
    assert {k: v for k, v in loaded.stats().items() if k not in allocated} == \
        {k: v for k, v in index.stats().items() if k not in allocated}
    for q in vectors[::25]:
        a = index.search(q, 10, return_vectors=True)
        b = loaded.search(q, 10, return_vectors=True)
        assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]
        np.testing.assert_array_equal(np.stack([h.vector for h in a]), np.stack([h.vector for h in b]))
        assert all(h.id not in ids[:20] for h in b)
    # The loaded index keeps working: revive a deleted item, add new ones past its capacity.
    rng = np.random.default_rng(6)
    more = [f"more-{j}" for j in range(100)]
    loaded.upsert(ids[:1] + more, np.concatenate([vectors[:1], unit(rng, 100, 16)]), records_for(ids[:1] + more))
    assert len(loaded) == 381 and loaded.search(vectors[0], 1)[0].id == ids[0]


def test_save_replaces_atomically_and_a_failed_save_leaves_the_old_file(tmp_path: Path):
    index, ids, vectors = filled(n=10)
    path = tmp_path / "s.bin"
    index.save(path, "1-0")
    index.upsert(["bad"], vectors[:1], [ItemRecord("bad", metadata={"x": object()})])  # not JSON
    with pytest.raises(TypeError):
        index.save(path, "2-0")
    assert ShardIndex.read_position(path) == "1-0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]
    index.delete(["bad"])
    index.save(path, "3-0")
    assert ShardIndex.load(path)[1] == "3-0"


class GatedIndex:
    """An hnswlib index whose `save_index` first says it started, then waits for a gate file."""

    def __init__(self, index: hnswlib.Index, started: Path, gate: Path) -> None:
        self._index, self._started, self._gate = index, started, gate

    def save_index(self, name: str) -> None:
        self._started.touch()
        deadline = time.monotonic() + 10
        while not self._gate.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the gate was never opened")
            time.sleep(0.01)
        self._index.save_index(name)

    def __getattr__(self, name: str):
        return getattr(self._index, name)


def test_writes_and_searches_go_on_while_a_snapshot_is_written(tmp_path: Path):
    index, ids, vectors = filled(n=50)
    started, gate, path = tmp_path / "started", tmp_path / "gate", tmp_path / "s.bin"
    for graph in index._graphs:
        graph.index = GatedIndex(graph.index, started, gate)
    errors: list[BaseException] = []

    def save() -> None:
        try:
            index.save(path, "7-0")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    saver = threading.Thread(target=save)
    saver.start()
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the snapshot never started writing"
    late = unit(np.random.default_rng(99), 1, 16)
    index.upsert(["late"], late, records_for(["late"]))  # would wait for the snapshot under its lock
    assert index.search(late[0], 1)[0].id == "late"
    gate.touch()
    saver.join(30)
    assert not errors and not saver.is_alive()
    loaded, position = ShardIndex.load(path)
    assert position == "7-0" and len(loaded) == 50 and "late" not in loaded  # as at its start
    assert loaded.search(vectors[3], 1)[0].id == ids[3]


def test_a_snapshot_is_written_in_process_when_no_child_can_be_forked(tmp_path: Path, monkeypatch):
    index, ids, vectors = filled(n=30)

    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    index.save(tmp_path / "s.bin", "4-0")
    loaded, position = ShardIndex.load(tmp_path / "s.bin")
    assert position == "4-0" and len(loaded) == 30 and loaded.search(vectors[2], 1)[0].id == ids[2]


@pytest.fixture()
def snapshot_file(tmp_path: Path) -> Path:
    index, _, _ = filled(n=40)
    path = tmp_path / "snapshot.bin"
    index.save(path, "42-0")
    return path


@pytest.mark.parametrize("keep", [0, 10, 60, 0.5, -1])
def test_truncated_snapshot_is_refused(snapshot_file: Path, keep):
    data = snapshot_file.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    snapshot_file.write_bytes(data[:size])
    with pytest.raises(SnapshotError, match="truncated"):
        ShardIndex.load(snapshot_file)
    with pytest.raises(SnapshotError):
        ShardIndex.read_position(snapshot_file)


@pytest.mark.parametrize("where", [0, 9, 20, 40, 60, 80, 200, 0.5, -30, -1])
def test_flipped_byte_is_refused(snapshot_file: Path, where):
    """Magic, header fields, digest, position, the graph, the records, the thumbnails."""
    data = bytearray(snapshot_file.read_bytes())
    at = int(len(data) * where) if isinstance(where, float) else where % len(data)
    data[at] ^= 0x01
    snapshot_file.write_bytes(bytes(data))
    with pytest.raises(SnapshotError):
        ShardIndex.load(snapshot_file)
    with pytest.raises(SnapshotError):
        ShardIndex.read_position(snapshot_file)


def test_missing_foreign_or_too_long_snapshot_is_refused(snapshot_file: Path, tmp_path: Path):
    with pytest.raises(SnapshotError):
        ShardIndex.load(tmp_path / "absent.bin")
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(SnapshotError, match="magic"):
        ShardIndex.load(foreign)
    snapshot_file.write_bytes(snapshot_file.read_bytes() + b"\0")
    with pytest.raises(SnapshotError, match="too long"):
        ShardIndex.load(snapshot_file)


@pytest.mark.parametrize("layout", ["fused", "blocks"])
def test_per_block_delete_revive_and_snapshot_round_trip(tmp_path: Path, layout: str):
    images, texts, has_image, has_text, vectors = items_missing_blocks(14, 1500, 5)
    ids = [f"s{j}" for j in range(1500)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout=layout, recall_target=0.95)
    index.upsert(ids, vectors, [ItemRecord(i, text=str(j), has_image=bool(has_image[j])) for j, i in enumerate(ids)])
    assert index.delete(ids[:30]) == 30
    index.upsert(ids[:10], vectors[:10], records_for(ids[:10]))  # revived in place
    before = index.stats()
    assert before["count"] == 1480 and before["calibrated_at"] == 1500
    path = tmp_path / "blocks.bin"
    index.save(path, "9-9")
    loaded, position = ShardIndex.load(path)
    assert position == "9-9"
    allocated = ("bytes", "store_bytes")  # a loaded vector store holds just its items
    assert {k: v for k, v in loaded.stats().items() if k not in allocated} == \
        {k: v for k, v in before.items() if k not in allocated}  # layout, ef, recall target, counts, tombstones
    assert all(loaded.get(i) == index.get(i) for i in ids)
    for kind, (image, text) in {"image": (images, None), "text": (None, texts), "fused": (images, texts)}.items():
        for j in range(0, 1500, 150):
            q = build_query(None if image is None else image[j], None if text is None else text[j],
                            IMAGE_DIM, TEXT_DIM).vector
            a, b = index.search(q, 10, return_vectors=True), loaded.search(q, 10, return_vectors=True)
            assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x.vector, y.vector)
            assert not {h.id for h in b} & set(ids[10:30])
    assert ShardIndex.load(path, recall_target=0.7)[0].stats()["recall_target"] == 0.7


def write_v1_snapshot(path: Path, vectors: np.ndarray, ids: list[str], records: list[ItemRecord],
                      position: str) -> None:
    """A format version 1 snapshot, as the one-graph shard index wrote them."""
    graph = hnswlib.Index(space="ip", dim=vectors.shape[1])
    graph.init_index(max_elements=len(ids), M=16, ef_construction=200, allow_replace_deleted=True)
    graph.add_items(vectors, np.asarray([label_for(i) for i in ids], dtype=np.uint64))
    graph_file = path.with_suffix(".hnsw")
    graph.save_index(str(graph_file))
    graph_bytes = graph_file.read_bytes()
    graph_file.unlink()
    entries = [{"id": r.id, "text": r.text, "metadata": r.metadata, "has_image": r.has_image, "thumbnail": None}
               for r in records]
    records_json = json.dumps(entries).encode("utf-8")
    payload = b"".join([struct.pack("<Q", len(graph_bytes)), graph_bytes, struct.pack("<Q", len(records_json)),
                        records_json, struct.pack("<Q", 0)])
    pos = position.encode("utf-8")
    header = struct.pack("<8sIIQIQ32s", b"MMSHARD\0", 1, vectors.shape[1], len(ids), len(pos), len(payload), bytes(32))
    digest = hashlib.sha256(header[8:-32] + pos + payload).digest()
    path.write_bytes(header[:-32] + digest + pos + payload)


def test_a_version_1_snapshot_loads_and_is_rebuilt_with_blocks(tmp_path: Path):
    images, texts, has_image, has_text, vectors = items_missing_blocks(15, 600, 6)
    ids = [f"v{j}" for j in range(600)]
    records = [ItemRecord(i, text=f"t{j}", metadata={"j": j}, has_image=bool(has_image[j])) for j, i in enumerate(ids)]
    path = tmp_path / "old.bin"
    write_v1_snapshot(path, vectors, ids, records, "5-1")
    assert ShardIndex.read_position(path) == "5-1"

    as_is, position = ShardIndex.load(path)  # no layout asked: one graph, as written
    assert position == "5-1" and as_is.stats()["image_dim"] == 0 and as_is.stats()["ef"] == {"vector": 256}
    upgraded, position = ShardIndex.load(path, image_dim=IMAGE_DIM, recall_target=0.98)
    assert position == "5-1" and len(upgraded) == 600
    stats = upgraded.stats()
    assert stats["image_dim"] == IMAGE_DIM and stats["layout"] == "fused" and stats["recall_target"] == 0.98
    assert stats["graphs"]["fused"]["count"] == 600 and stats["graphs"]["text"]["count"] == has_text.sum()
    assert all(upgraded.get(i) == r for i, r in zip(ids, records))
    for j in range(0, 600, 60):
        for q in (build_query(images[j], None, IMAGE_DIM, TEXT_DIM).vector,
                  build_query(None, texts[j], IMAGE_DIM, TEXT_DIM).vector,
                  build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM).vector):
            hits = upgraded.search(q, 5, return_vectors=True)
            scores = vectors @ q
            assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
            for h in hits:
                # Rebuilt from the one-block shard's store: every dim went through float16.
                np.testing.assert_array_equal(h.vector, as_stored(vectors[ids.index(h.id)], DIM))
    saved = tmp_path / "new.bin"
    upgraded.save(saved, "5-1")
    assert ShardIndex.load(saved)[0].stats()["image_dim"] == IMAGE_DIM


def write_v2_snapshot(path: Path, index: ShardIndex, position: str) -> None:
    """A format version 2 snapshot of `index` (graphs, records, tuning; no vector store), as
    the shard index wrote them before the store."""
    state = index._state()
    meta = {"image_dim": state.image_dim, "recall_target": state.recall_target, "calibrated_at": state.calibrated_at,
            "tuning": {kind: {"ef": t.ef, "far_below": t.far_below, "far_ef": t.far_ef} for kind, t in state.tuning.items()}}
    sections = [json.dumps(meta).encode("utf-8")]
    for i, graph in enumerate(state.graphs):
        graph_file = path.with_suffix(f".{i}.hnsw")
        graph.save_index(str(graph_file))
        sections.append(graph_file.read_bytes())
        graph_file.unlink()
    entries = [{"id": r.id, "text": r.text, "metadata": r.metadata, "has_image": r.has_image, "thumbnail": None,
                "blocks": state.blocks[label]} for label, r in state.records.items()]
    sections += [json.dumps(entries).encode("utf-8"), b""]
    payload = b"".join(struct.pack("<Q", len(section)) + section for section in sections)
    pos = position.encode("utf-8")
    header = struct.pack("<8sIIQIQ32s", b"MMSHARD\0", 2, state.dim, len(entries), len(pos), len(payload), bytes(32))
    digest = hashlib.sha256(header[8:-32] + pos + payload).digest()
    path.write_bytes(header[:-32] + digest + pos + payload)


def test_a_version_2_snapshot_loads_with_its_vector_store_rebuilt_from_the_graphs(tmp_path: Path):
    images, texts, has_image, has_text, vectors = items_missing_blocks(16, 700, 5)
    ids = [f"w{j}" for j in range(700)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout="blocks")  # the only layout with blocks then
    index.upsert(ids, vectors, [ItemRecord(i, metadata={"j": j}) for j, i in enumerate(ids)])
    index.delete(ids[:40])
    index.upsert(ids[:10], vectors[:10], records_for(ids[:10]))  # revived in place
    path = tmp_path / "v2.bin"
    write_v2_snapshot(path, index, "8-2")
    loaded, position = ShardIndex.load(path)
    assert position == "8-2" and len(loaded) == 670
    live = ids[:10] + ids[40:]
    labels = [label_for(i) for i in live]
    np.testing.assert_array_equal(loaded._store.vectors(labels, DIM), as_stored(vectors[:10].tolist() + vectors[40:].tolist()))
    for j in range(0, 700, 70):
        for q in (build_query(images[j], None, IMAGE_DIM, TEXT_DIM).vector,
                  build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM, {"text": 0.25}).vector):
            a, b = index.search(q, 10, return_vectors=True), loaded.search(q, 10, return_vectors=True)
            assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x.vector, y.vector)
    saved = tmp_path / "v4.bin"
    loaded.save(saved, "8-2")  # written again in the current format, store and all
    again = ShardIndex.load(saved)[0]
    np.testing.assert_array_equal(again._store.vectors(labels, DIM), loaded._store.vectors(labels, DIM))


def as_older_version(path: Path, version: int) -> None:
    """Rewrite a snapshot as format version 6 wrote it (each kind's tuning with one far list:
    its farthest band's), or one of graphs not projected as 5 wrote it (6 without
    "projections"), 4 (5 with every vector store block in the store's "vector_dtype", no
    "vector_dtypes") or 3 (4 of a per-block shard, without "layout")."""
    data = path.read_bytes()
    head = struct.Struct("<8sIIQIQ32s")
    magic, _, dim, count, position_size, _, _ = head.unpack(data[:head.size])
    at = head.size + position_size
    position = data[head.size:at]
    sections = []
    while at < len(data):
        size = struct.unpack("<Q", data[at:at + 8])[0]
        sections.append(data[at + 8:at + 8 + size])
        at += 8 + size
    meta = json.loads(sections[0])
    meta["tuning"] = {kind: {"ef": t["ef"], "far_below": t["bands"][0][0] if t["bands"] else None,
                             "far_ef": t["bands"][-1][1] if t["bands"] else t["ef"]}
                      for kind, t in meta["tuning"].items()}
    if version <= 5:
        assert not any(graph["dims"] for graph in meta.pop("projections"))
    if version <= 4:
        dtypes = meta.pop("vector_dtypes")
        if version == 3:
            assert meta.pop("layout") == "blocks"
        graphs = len(layouts.graphs(meta.get("layout", "blocks"), dim, meta["image_dim"]))
        for i, kept_as in enumerate(dtypes):
            section = 1 + graphs + i
            sections[section] = np.frombuffer(sections[section], kept_as).astype(meta["vector_dtype"]).tobytes()
    sections[0] = json.dumps(meta).encode("utf-8")
    payload = b"".join(struct.pack("<Q", len(section)) + section for section in sections)
    header = struct.pack("<8sIIQIQ32s", magic, version, dim, count, position_size, len(payload), bytes(32))
    digest = hashlib.sha256(header[8:-32] + position + payload).digest()
    path.write_bytes(header[:-32] + digest + position + payload)


def test_a_version_6_snapshot_loads_and_measures_its_far_bands_again(tmp_path: Path):
    images, texts, has_image, has_text, vectors = items_missing_blocks(19, 1100, 5)
    ids = [f"s{j}" for j in range(1100)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, vectors, [ItemRecord(i) for i in ids])
    path = tmp_path / "v6.bin"
    index.save(path, "7-1", forked=False)
    as_older_version(path, 6)
    state, _ = snapshot.load(path)
    assert state.calibrated_at == 0  # one far list per kind: measured again
    one_list = {kind: ((t.far_below, t.far_ef),) if t.bands else () for kind, t in index._calibration.tuning.items()}
    assert {kind: t.bands for kind, t in state.tuning.items()} == one_list  # each kind's far list, as one band
    loaded, position = ShardIndex.load(path)
    assert position == "7-1" and loaded.stats()["calibrated_at"] == 1100
    assert loaded.stats()["far_bands"] == index.stats()["far_bands"]  # the same items measure the same bands
    for j in range(0, 1100, 110):
        q = build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM).vector
        assert loaded.search(q, 5)[0].id == index.search(q, 5)[0].id


def test_a_version_4_snapshot_loads_with_its_float16_text_block_kept_in_float32(tmp_path: Path):
    images, texts, has_image, has_text, vectors = items_missing_blocks(18, 1100, 5)
    ids = [f"t{j}" for j in range(1100)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, vectors, [ItemRecord(i, metadata={"j": j}) for j, i in enumerate(ids)])
    path = tmp_path / "v4.bin"
    index.save(path, "6-1", forked=False)
    as_older_version(path, 4)
    loaded, position = ShardIndex.load(path)
    assert position == "6-1" and len(loaded) == 1100 and loaded._store.dtypes == ["float16", "float32"]
    labels = [label_for(i) for i in ids]
    # The text block was written in float16: it comes back at that precision, held in float32.
    np.testing.assert_array_equal(loaded._store.part(1, labels), vectors[:, IMAGE_DIM:].astype(np.float16))
    for j in range(0, 1100, 110):
        q = build_query(None, texts[j], IMAGE_DIM, TEXT_DIM).vector
        hits = loaded.search(q, 5)
        assert [h.score for h in hits] == pytest.approx(sorted(vectors @ q, reverse=True)[:5], abs=STORED_ABS)


def test_a_version_3_snapshot_keeps_its_per_block_graphs_or_is_rebuilt_with_a_fused_graph(tmp_path: Path):
    images, texts, has_image, has_text, vectors = items_missing_blocks(17, 1200, 5)
    ids = [f"u{j}" for j in range(1200)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout="blocks")
    index.upsert(ids, vectors, [ItemRecord(i, metadata={"j": j}) for j, i in enumerate(ids)])
    path = tmp_path / "v3.bin"
    index.save(path, "4-4", forked=False)
    as_older_version(path, 3)
    kept, position = ShardIndex.load(path, image_dim=IMAGE_DIM)
    rebuilt = ShardIndex.load(path, layout="fused")[0]
    assert position == "4-4" and kept.stats()["layout"] == "blocks" and rebuilt.stats()["layout"] == "fused"
    assert set(rebuilt.stats()["graphs"]) == {"fused", "text"} and len(rebuilt) == 1200
    for j in range(0, 1200, 120):
        for q in (build_query(images[j], None, IMAGE_DIM, TEXT_DIM).vector,
                  build_query(None, texts[j], IMAGE_DIM, TEXT_DIM).vector,
                  build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM, {"text": 0.25}).vector):
            scores = vectors @ q
            for shard in (kept, rebuilt):  # exact, at float16's precision (the store's)
                hits = shard.search(q, 5)
                assert [h.score for h in hits] == pytest.approx(sorted(scores, reverse=True)[:5], abs=STORED_ABS)
                assert all(h.score == pytest.approx(scores[ids.index(h.id)], abs=STORED_ABS) for h in hits)
