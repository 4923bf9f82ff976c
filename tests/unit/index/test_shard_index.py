"""Tests of the shard index (hnswlib graphs + records), its per-block graphs, ef calibration,
snapshots, the RW lock and item labels."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from shared.index import calibration, shard_index
from shared.errors import SnapshotError
from shared.encoding.fusion import build_query, fuse
from shared.index.labels import label_for, shard_for
from shared.index.rwlock import RWLock
from shared.index.calibration import ef_for
from shared.index.shard_index import ItemRecord, SearchHit, ShardIndex


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records_for(ids: list[str], **kwargs) -> list[ItemRecord]:
    return [ItemRecord(i, **kwargs) for i in ids]


def filled(n: int = 50, dim: int = 16, seed: int = 0, **kwargs) -> tuple[ShardIndex, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"item-{j}" for j in range(n)]
    vectors = unit(rng, n, dim)
    index = ShardIndex(dim, **kwargs)
    index.upsert(ids, vectors, [ItemRecord(i, text=f"text {j}", metadata={"parity": j % 2, "tens": j // 10},
                                           has_image=j % 3 == 0, thumbnail=bytes([j % 256]) * (j % 5) or None)
                                for j, i in enumerate(ids)])
    return index, ids, vectors


def all_ids(index: ShardIndex, dim: int) -> list[str]:
    return [h.id for h in index.search(np.ones(dim, dtype=np.float32), 10**6)]


# -- labels ------------------------------------------------------------------------------------
def test_label_is_blake2b_63_bits_and_stable_across_processes():
    expected = int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "big") & ((1 << 63) - 1)
    assert label_for("abc") == expected == 6393727014797677913
    assert 0 <= label_for("é" * 100) < 2**63
    code = "from shared.index.labels import label_for; print(label_for('abc'), label_for('x/y'))"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert outputs == {f"{label_for('abc')} {label_for('x/y')}\n"}


def test_shard_for_is_label_mod_shards():
    for item_id in ("a", "b", "some/long/id", ""):
        assert shard_for(item_id, 7) == label_for(item_id) % 7
    assert {shard_for(f"id{j}", 4) for j in range(200)} == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        shard_for("a", 0)


# -- writes ------------------------------------------------------------------------------------
def test_upsert_get_search_delete():
    index, ids, vectors = filled()
    assert len(index) == index.count == 50
    assert "item-3" in index and "nope" not in index
    assert index.get("item-3") == ItemRecord("item-3", "text 3", {"parity": 1, "tens": 0}, True, b"\x03\x03\x03")
    hits = index.search(vectors[7], 5, return_vectors=True)
    assert isinstance(hits[0], SearchHit)
    assert hits[0].id == "item-7" and hits[0].label == label_for("item-7")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].record.text == "text 7"
    np.testing.assert_allclose(hits[0].vector, vectors[7], atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert index.search(vectors[7], 5)[0].vector is None

    assert index.delete(["item-7", "item-8", "unknown", "item-7"]) == 2
    assert index.delete(["item-7"]) == 0
    assert len(index) == 48 and index.get("item-7") is None and "item-7" not in index
    assert "item-7" not in all_ids(index, 16)
    assert index.stats()["deleted"] == 2


def test_upsert_validates_its_input():
    index = ShardIndex(4)
    with pytest.raises(ValueError):
        index.upsert(["a"], np.ones((1, 5)), records_for(["a"]))
    with pytest.raises(ValueError):
        index.upsert(["a", "b"], np.ones((2, 4)), records_for(["a"]))
    with pytest.raises(ValueError):
        index.upsert(["a"], np.ones((1, 4)), records_for(["b"]))
    with pytest.raises(ValueError):
        index.search(np.ones(5), 1)
    index.upsert([], np.zeros((0, 4)), [])
    assert len(index) == 0


def test_reupsert_replaces_vector_and_record():
    index, ids, vectors = filled()
    new = -vectors[3]
    index.upsert(["item-3"], new[None, :], [ItemRecord("item-3", text="changed", metadata={"v": 2})])
    assert len(index) == 50
    assert index.get("item-3").text == "changed"
    top = index.search(new, 1, return_vectors=True)[0]
    assert top.id == "item-3" and top.score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(top.vector, new, atol=1e-6)
    assert "item-3" not in [h.id for h in index.search(vectors[3], 5)]
    assert index.stats()["deleted"] == 0


def test_reupsert_after_delete_revives_in_place():
    index, ids, vectors = filled()
    capacity = index.stats()["capacity"]
    index.delete(["item-4"])
    index.upsert(["item-4"], vectors[5][None, :], [ItemRecord("item-4", text="back")])
    assert len(index) == 50 and index.get("item-4").text == "back"
    hits = index.search(vectors[5], 2)
    assert {h.id for h in hits} == {"item-4", "item-5"}
    assert index.stats()["deleted"] == 0 and index.stats()["capacity"] == capacity


def test_deleted_slots_are_reused_and_never_duplicate_labels():
    index, ids, vectors = filled(n=20)
    stats = index.stats()
    index.delete(ids[:5])
    rng = np.random.default_rng(1)
    fresh = [f"fresh-{j}" for j in range(5)]
    index.upsert(fresh, unit(rng, 5, 16), records_for(fresh))
    after = index.stats()
    assert after["capacity"] == stats["capacity"] and after["deleted"] == 0  # slots reused
    # Now the old ids' slots belong to other labels: bringing them back takes new slots.
    index.upsert(ids[:5], vectors[:5], records_for(ids[:5]))
    # ...and re-upserting live ids must update in place, not give them a second slot.
    index.upsert(fresh + ids, np.concatenate([unit(rng, 5, 16), vectors]), records_for(fresh + ids))
    found = all_ids(index, 16)
    assert len(found) == len(set(found)) == 25 == len(index)
    assert set(found) == set(ids) | set(fresh)
    for j in range(5):
        assert index.search(vectors[j], 1)[0].id == ids[j]


def test_duplicate_ids_in_one_batch_last_wins():
    index = ShardIndex(4)
    vectors = np.eye(4, dtype=np.float32)
    index.upsert(["a", "b", "a"], vectors[:3],
                 [ItemRecord("a", "first"), ItemRecord("b"), ItemRecord("a", "last")])
    assert len(index) == 2 and index.get("a").text == "last"
    top = index.search(vectors[2], 1, return_vectors=True)[0]
    assert top.id == "a" and top.score == pytest.approx(1.0)
    np.testing.assert_allclose(top.vector, vectors[2])


def test_reapplying_the_same_writes_is_idempotent():
    rng = np.random.default_rng(2)
    ids = [f"x{j}" for j in range(40)]
    vectors = unit(rng, 40, 8)
    recs = [ItemRecord(i, metadata={"j": j}) for j, i in enumerate(ids)]

    def apply(index: ShardIndex) -> None:  # the same log, e.g. replayed after a restart
        index.upsert(ids, vectors, recs)
        index.delete(ids[:10])
        index.upsert(ids[5:10], vectors[5:10] * -1, recs[5:10])

    once, twice = ShardIndex(8), ShardIndex(8)
    apply(once)
    apply(twice)
    apply(twice)
    assert len(once) == len(twice) == 35
    assert {i: once.get(i) for i in ids} == {i: twice.get(i) for i in ids}
    assert once.stats() == twice.stats()
    for q in unit(rng, 10, 8):
        a, b = once.search(q, 35, return_vectors=True), twice.search(q, 35, return_vectors=True)
        assert [h.id for h in a] == [h.id for h in b]
        for x, y in zip(a, b):
            assert x.score == pytest.approx(y.score, abs=1e-6)
            np.testing.assert_array_equal(x.vector, y.vector)


def test_capacity_grows_geometrically_past_the_initial_one():
    rng = np.random.default_rng(3)
    index = ShardIndex(8, initial_capacity=4)
    vectors = unit(rng, 300, 8)
    ids = [f"g{j}" for j in range(300)]
    capacities = []
    for start in range(0, 300, 7):
        index.upsert(ids[start:start + 7], vectors[start:start + 7], records_for(ids[start:start + 7]))
        capacities.append(index.stats()["capacity"])
    assert len(index) == 300 and index.stats()["capacity"] >= 300
    assert len(set(capacities)) <= 10  # doubling, not one resize per batch
    for j in range(0, 300, 13):
        assert index.search(vectors[j], 1)[0].id == ids[j]


# -- searches ----------------------------------------------------------------------------------
def test_k_is_clamped_to_what_the_shard_holds():
    assert ShardIndex(4).search(np.ones(4), 10) == []
    index, ids, vectors = filled(n=3)
    assert len(index.search(vectors[0], 10)) == 3
    assert index.search(vectors[0], 0) == []
    index.delete(ids[:1])
    assert sorted(h.id for h in index.search(vectors[0], 10)) == ids[1:]
    index.delete(ids)
    assert index.search(vectors[0], 10) == []


@pytest.mark.parametrize("exact_max", [shard_index.EXACT_FILTER_MAX, 0], ids=["exact", "hnswlib-filter"])
def test_filter_is_metadata_equality_on_every_key(monkeypatch, exact_max):
    monkeypatch.setattr(shard_index, "EXACT_FILTER_MAX", exact_max)
    index, ids, vectors = filled(n=200)
    index.upsert(["none"], vectors[:1], [ItemRecord("none", metadata={"parity": None})])
    index.delete(["item-1", "item-3"])
    q = vectors[1]
    hits = index.search(q, 500, filter={"parity": 1})
    expected = [j for j in range(200) if j % 2 == 1 and j not in (1, 3)]
    assert sorted(int(h.id.split("-")[1]) for h in hits) == expected  # k clamped to the matches
    scores = vectors[expected] @ q
    top = [f"item-{expected[i]}" for i in np.argsort(-scores)[:10]]
    assert [h.id for h in index.search(q, 10, filter={"parity": 1})] == top
    both = index.search(q, 50, filter={"parity": 0, "tens": 3})
    assert sorted(h.id for h in both) == [f"item-{j}" for j in range(30, 40, 2)]
    assert [h.id for h in index.search(q, 5, filter={"parity": None})] == ["none"]  # absent != None
    assert index.search(q, 5, filter={"colour": "red"}) == []
    assert len(index.search(q, 5, filter={})) == 5


def test_recall_at_10_against_exact_search_at_default_settings():
    rng = np.random.default_rng(4)
    n, dim = 5000, 64
    vectors = unit(rng, n, dim)
    ids = [f"r{j}" for j in range(n)]
    index = ShardIndex(dim)
    for start in range(0, n, 1000):  # batches, as the shard owner applies them
        index.upsert(ids[start:start + 1000], vectors[start:start + 1000], records_for(ids[start:start + 1000]))
    queries = unit(rng, 200, dim)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = 0
    for q, truth in zip(queries, exact):
        found += len({h.id for h in index.search(q, 10)} & {ids[j] for j in truth})
    recall = found / (10 * len(queries))
    assert recall >= 0.99, f"recall@10 = {recall:.4f} with ef={ef_for(10)}"


# -- snapshots ---------------------------------------------------------------------------------
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
    assert {k: v for k, v in loaded.stats().items() if k not in ("capacity", "bytes")} == \
        {k: v for k, v in index.stats().items() if k not in ("capacity", "bytes")}
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


# -- concurrency -------------------------------------------------------------------------------
@pytest.mark.parametrize("image_dim", [0, 24], ids=["one-graph", "per-block"])
def test_searches_during_bulk_writes_and_deletes(tmp_path: Path, image_dim: int):
    rng = np.random.default_rng(7)
    dim, n = 32, 4000
    vectors = unit(rng, n, dim)
    ids = [f"c{j}" for j in range(n)]
    index = ShardIndex(dim, image_dim=image_dim, initial_capacity=64)
    index.upsert(ids[:200], vectors[:200], records_for(ids[:200], metadata={"even": True}))
    gone: set[str] = set()
    done = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def writer() -> None:
        try:
            for start in range(200, n, 100):
                batch = slice(start, start + 100)
                recs = [ItemRecord(i, metadata={"even": j % 2 == 0}) for j, i in enumerate(ids[batch], start)]
                index.upsert(ids[batch], vectors[batch], recs)
                victims = ids[start - 150:start - 100:3]  # never re-added
                index.delete(victims)
                gone.update(victims)
                if start % 1000 == 0:
                    index.save(tmp_path / "live.bin", str(start))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not done.is_set():
                before = set(gone)
                q = unit(local, 1, dim)[0]
                hits = index.search(q, 20, filter={"even": True} if local.random() < 0.3 else None,
                                    return_vectors=True)
                found = [h.id for h in hits]
                assert not before & set(found), f"deleted items returned: {before & set(found)}"
                assert len(found) == len(set(found))
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
                searches[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, daemon=True)]
    threads += [threading.Thread(target=reader, args=(s,), daemon=True) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert searches[0] > 20
    assert len(index) == n - len(gone)
    assert not gone & set(all_ids(index, dim))
    loaded, position = ShardIndex.load(tmp_path / "live.bin")
    assert position == "3000" and len(loaded) > 0


def test_rwlock_excludes_writers_from_readers_and_each_other():
    lock = RWLock()
    state = {"readers": 0, "writers": 0, "max_readers": 0}
    guard = threading.Lock()
    violations: list[str] = []

    def read() -> None:
        for _ in range(200):
            with lock.read():
                with guard:
                    state["readers"] += 1
                    state["max_readers"] = max(state["max_readers"], state["readers"])
                    if state["writers"]:
                        violations.append("read during write")
                time.sleep(0.0002)
                with guard:
                    state["readers"] -= 1

    def write() -> None:
        for _ in range(100):
            with lock.write():
                with guard:
                    state["writers"] += 1
                    if state["writers"] > 1 or state["readers"]:
                        violations.append("write not exclusive")
                time.sleep(0.0002)
                with guard:
                    state["writers"] -= 1

    threads = [threading.Thread(target=f, daemon=True) for f in [read] * 4 + [write] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not violations
    assert state["max_readers"] > 1  # readers do share


def test_rwlock_prefers_writers_but_does_not_starve_readers():
    lock = RWLock()
    events: list[str] = []
    lock.acquire_read()
    writer_in = threading.Event()

    def writer() -> None:
        with lock.write():
            events.append("writer")
            writer_in.set()

    def late_reader() -> None:
        with lock.read():
            events.append("late reader")

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    time.sleep(0.05)  # the writer now waits for the first reader
    r = threading.Thread(target=late_reader, daemon=True)
    r.start()
    time.sleep(0.05)
    assert events == []  # the late reader queues behind the waiting writer
    lock.release_read()
    w.join(5)
    r.join(5)
    assert events == ["writer", "late reader"]

    # A writer that re-takes the lock in a loop still lets waiting readers in between batches.
    stop = threading.Event()

    def bulk_writer() -> None:
        while not stop.is_set():
            with lock.write():
                time.sleep(0.002)

    waits: list[float] = []

    def reader() -> None:
        for _ in range(20):
            started = time.monotonic()
            with lock.read():
                waits.append(time.monotonic() - started)

    b = threading.Thread(target=bulk_writer, daemon=True)
    b.start()
    r = threading.Thread(target=reader, daemon=True)
    r.start()
    r.join(5)
    starved = r.is_alive()
    stop.set()
    b.join(5)
    assert not starved, f"a reader got the lock only {len(waits)} times in 5 s"
    assert max(waits) < 0.5, waits


# -- per-block graphs --------------------------------------------------------------------------
IMAGE_DIM, TEXT_DIM = 96, 24
DIM = IMAGE_DIM + TEXT_DIM


def clustered_blocks(rng: np.random.Generator, n: int, clusters: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Image blocks (non-negative, like pooled CNN features) and text blocks (sharing a common
    direction, like GloVe) around `clusters` centres; an item's text centre goes with its image one."""
    image_centres = np.maximum(rng.standard_normal((clusters, IMAGE_DIM)), 0)
    text_centres = rng.standard_normal(TEXT_DIM) + rng.standard_normal((clusters, TEXT_DIM))
    image_centres /= np.linalg.norm(image_centres, axis=1, keepdims=True)
    text_centres /= np.linalg.norm(text_centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, n)
    images = np.maximum(image_centres[which] + 0.8 / np.sqrt(IMAGE_DIM) * rng.standard_normal((n, IMAGE_DIM)), 0)
    texts = text_centres[which] + 0.8 / np.sqrt(TEXT_DIM) * rng.standard_normal((n, TEXT_DIM))
    return images.astype(np.float32), texts.astype(np.float32)


def fused_items(images: np.ndarray, texts: np.ndarray, has_image: np.ndarray, has_text: np.ndarray) -> np.ndarray:
    return np.stack([fuse(i if hi else None, t if ht else None, IMAGE_DIM, TEXT_DIM)
                     for i, t, hi, ht in zip(images, texts, has_image, has_text)]).astype(np.float32)


@pytest.fixture(scope="module")
def block_shard() -> dict:
    """8000 clustered items, 10% without an image and 10% without a text, in a per-block shard
    built in batches as the owner applies them; 150 fresh items of the same clusters as queries."""
    rng = np.random.default_rng(11)
    n, fresh = 8000, 150
    images, texts = clustered_blocks(rng, n + fresh)
    missing = rng.random(n)
    has_image, has_text = missing >= 0.1, (missing < 0.1) | (missing >= 0.2)
    vectors = fused_items(images[:n], texts[:n], has_image, has_text)
    ids = [f"b{j}" for j in range(n)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    for start in range(0, n, 1000):
        part = slice(start, start + 1000)
        index.upsert(ids[part], vectors[part], [ItemRecord(i, metadata={"tens": j // 10 % 10}, has_image=bool(h))
                                                for j, (i, h) in enumerate(zip(ids[part], has_image[part]), start)])
    queries = {"text": [build_query(None, t, IMAGE_DIM, TEXT_DIM).vector for t in texts[n:]],
               "image": [build_query(i, None, IMAGE_DIM, TEXT_DIM).vector for i in images[n:]],
               "fused": [build_query(i, t, IMAGE_DIM, TEXT_DIM).vector for i, t in zip(images[n:], texts[n:])]}
    return {"index": index, "ids": ids, "vectors": vectors, "has_image": has_image, "has_text": has_text,
            "queries": {kind: np.stack(q) for kind, q in queries.items()}}


@pytest.mark.parametrize("kind", ["text", "image", "fused"])
def test_recall_at_10_per_query_kind_against_exact_search(block_shard, kind):
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    stats = index.stats()
    assert stats["calibrated_at"] >= 4000 and set(stats["ef"]) == {"text", "image", "fused"}
    queries = block_shard["queries"][kind]
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    found = sum(len({h.id for h in index.search(q, 10)} & {ids[j] for j in truth})
                for q, truth in zip(queries, exact))
    recall = found / exact.size
    assert recall >= 0.99, f"{kind} recall@10 = {recall:.4f} with ef {stats['ef']}"


def test_single_block_queries_rank_by_that_block_and_missing_blocks_score_zero(block_shard):
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    has_image, has_text = block_shard["has_image"], block_shard["has_text"]
    image_query = block_shard["queries"]["image"][0]
    hits = index.search(image_query, 20, return_vectors=True)
    cosines = vectors[:, :IMAGE_DIM] @ image_query[:IMAGE_DIM]
    assert [h.id for h in hits] == [ids[j] for j in np.argsort(-cosines, kind="stable")[:20]]
    for h in hits:
        j = ids.index(h.id)
        assert has_image[j]
        assert h.score == pytest.approx(float(vectors[j] @ image_query), abs=1e-5)
        np.testing.assert_array_equal(h.vector, vectors[j])  # the fused stored vector, both blocks
    # Asked for every item, an image query puts the items without an image last, at exactly 0.
    everything = index.search(image_query, len(ids))
    assert len({h.id for h in everything}) == len(ids)
    tail = everything[int(has_image.sum()):]
    assert {h.id for h in tail} == {ids[j] for j in np.flatnonzero(~has_image)}
    assert all(h.score == 0.0 for h in tail)
    text_query = block_shard["queries"]["text"][0]
    hits = index.search(text_query, 10, return_vectors=True)
    assert all(has_text[ids.index(h.id)] for h in hits)
    text_only = [h for h in hits if not has_image[ids.index(h.id)]]
    for h in text_only:
        assert not h.vector[:IMAGE_DIM].any()


def test_fused_queries_score_the_whole_vector_and_find_items_missing_a_block():
    rng = np.random.default_rng(12)
    images, texts = clustered_blocks(rng, 400)
    has_image = np.arange(400) % 4 != 0   # every 4th item: text only
    has_text = np.arange(400) % 4 != 1    # every 4th item, shifted: image only
    vectors = fused_items(images, texts, has_image, has_text)
    ids = [f"f{j}" for j in range(400)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, vectors, records_for(ids))
    for j in (0, 1, 2):  # a text-only, an image-only and a complete item, each queried by both its blocks
        query = build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM).vector
        hits = index.search(query, 10, return_vectors=True)
        scores = vectors @ query
        assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        rank = int((scores > scores[j]).sum())  # the queried item, missing a block or not, at its exact rank
        assert index.search(query, rank + 1)[rank].id == ids[j]
        for h in hits:
            assert h.score == pytest.approx(float(scores[ids.index(h.id)]), abs=1e-5)
            np.testing.assert_array_equal(h.vector, vectors[ids.index(h.id)])


@pytest.mark.parametrize("filtered", [False, True])
def test_hits_carry_their_score_split_by_block(block_shard, filtered):
    """`blocks` is what `score_parts` needs, without reading the stored vectors back: each block's
    inner product with the query, 0 for a block the query or the item lacks."""
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    for kind in ("text", "image", "fused"):
        for query in block_shard["queries"][kind][:5]:
            hits = index.search(query, 10, filter={"tens": 3} if filtered else None)
            assert len(hits) == 10
            for h in hits:
                stored = vectors[ids.index(h.id)]
                expected = {"image": float(stored[:IMAGE_DIM] @ query[:IMAGE_DIM]),
                            "text": float(stored[IMAGE_DIM:] @ query[IMAGE_DIM:])}
                assert h.blocks == pytest.approx(expected, abs=1e-5)
                assert sum(h.blocks.values()) == pytest.approx(h.score, abs=1e-6)
    one_graph = ShardIndex(DIM)
    one_graph.upsert(ids[:50], vectors[:50], records_for(ids[:50]))
    assert one_graph.search(vectors[0], 3)[0].blocks is None  # no blocks to split the score by


def test_a_block_that_comes_and_goes_moves_between_graphs():
    rng = np.random.default_rng(13)
    images, texts = clustered_blocks(rng, 100)
    ids = [f"m{j}" for j in range(100)]
    both = fused_items(images, texts, np.ones(100, bool), np.ones(100, bool))
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, both, records_for(ids))
    image_query = build_query(images[7], None, IMAGE_DIM, TEXT_DIM).vector
    assert index.search(image_query, 1)[0].id == "m7"
    text_only = fuse(None, texts[7], IMAGE_DIM, TEXT_DIM)[None, :]
    index.upsert(["m7"], text_only, records_for(["m7"]))
    graphs = index.stats()["graphs"]
    assert graphs["image"]["count"] == 99 and graphs["image"]["deleted"] == 1 and graphs["text"]["count"] == 100
    hits = {h.id: h for h in index.search(image_query, 100, return_vectors=True)}
    assert hits["m7"].score == 0.0 and not hits["m7"].vector[:IMAGE_DIM].any()
    np.testing.assert_array_equal(hits["m7"].vector, text_only[0])
    index.upsert(["m7"], both[7:8], records_for(["m7"]))  # the image block's tombstone is revived
    assert index.stats()["graphs"]["image"] == {"count": 100, "capacity": 1024, "deleted": 0, "dim": IMAGE_DIM}
    top = index.search(image_query, 1, return_vectors=True)[0]
    assert top.id == "m7"
    np.testing.assert_array_equal(top.vector, both[7])
    # An item whose vector is all zeros is in neither graph, yet stored and found (score 0).
    index.upsert(["blank"], np.zeros((1, DIM), np.float32), records_for(["blank"]))
    assert "blank" in index and {h.id for h in index.search(image_query, 101)} == set(ids) | {"blank"}
    assert [h.id for h in index.search(image_query, 5, filter={"nope": 1})] == []
    assert index.delete(["blank", "m7"]) == 2
    assert index.stats()["graphs"]["text"]["count"] == 99 and index.stats()["deleted"] == 2


@pytest.mark.parametrize("exact_max", [shard_index.EXACT_FILTER_MAX, 0], ids=["exact", "hnswlib-filter"])
def test_filters_with_per_block_graphs(block_shard, monkeypatch, exact_max):
    monkeypatch.setattr(shard_index, "EXACT_FILTER_MAX", exact_max)
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    tens = np.array([j // 10 % 10 for j in range(len(ids))])
    for kind in ("text", "image", "fused"):
        for q in block_shard["queries"][kind][:5]:
            hits = index.search(q, 10, filter={"tens": 3})
            assert all(index.get(h.id).metadata == {"tens": 3} for h in hits)
            scores = np.where(tens == 3, vectors @ q, -np.inf)
            expected = [ids[j] for j in np.argsort(-scores, kind="stable")[:10]]
            assert len(set(h.id for h in hits) & set(expected)) >= 9
            if exact_max:
                assert [h.id for h in hits] == expected


def test_per_block_delete_revive_and_snapshot_round_trip(tmp_path: Path):
    rng = np.random.default_rng(14)
    images, texts = clustered_blocks(rng, 1500)
    has_image, has_text = np.arange(1500) % 5 != 0, np.arange(1500) % 5 != 1
    vectors = fused_items(images, texts, has_image, has_text)
    ids = [f"s{j}" for j in range(1500)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, recall_target=0.95)
    index.upsert(ids, vectors, [ItemRecord(i, text=str(j), has_image=bool(has_image[j])) for j, i in enumerate(ids)])
    assert index.delete(ids[:30]) == 30
    index.upsert(ids[:10], vectors[:10], records_for(ids[:10]))  # revived in place
    before = index.stats()
    assert before["count"] == 1480 and before["calibrated_at"] == 1500
    path = tmp_path / "blocks.bin"
    index.save(path, "9-9")
    loaded, position = ShardIndex.load(path)
    assert position == "9-9"
    assert loaded.stats() == before  # layout, ef, recall target, counts, tombstones
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


def test_a_version_1_snapshot_loads_and_is_rebuilt_per_block(tmp_path: Path):
    rng = np.random.default_rng(15)
    images, texts = clustered_blocks(rng, 600)
    has_image, has_text = np.arange(600) % 6 != 0, np.arange(600) % 6 != 1
    vectors = fused_items(images, texts, has_image, has_text)
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
    assert stats["image_dim"] == IMAGE_DIM and stats["recall_target"] == 0.98
    assert stats["graphs"]["image"]["count"] == has_image.sum() and stats["graphs"]["text"]["count"] == has_text.sum()
    assert all(upgraded.get(i) == r for i, r in zip(ids, records))
    for j in range(0, 600, 60):
        for q in (build_query(images[j], None, IMAGE_DIM, TEXT_DIM).vector,
                  build_query(None, texts[j], IMAGE_DIM, TEXT_DIM).vector,
                  build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM).vector):
            hits = upgraded.search(q, 5, return_vectors=True)
            scores = vectors @ q
            assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
            for h in hits:
                np.testing.assert_allclose(h.vector, vectors[ids.index(h.id)], atol=1e-7)
    saved = tmp_path / "new.bin"
    upgraded.save(saved, "5-1")
    assert ShardIndex.load(saved)[0].stats()["image_dim"] == IMAGE_DIM


def test_bytes_stay_within_half_again_of_vectors_and_graphs():
    rng = np.random.default_rng(16)
    image_dim, n = 1280, 3000
    vectors = np.concatenate([unit(rng, n, image_dim), unit(rng, n, 50)], axis=1) / np.sqrt(2)
    ids = [f"y{j}" for j in range(n)]
    index = ShardIndex(image_dim + 50, image_dim=image_dim, ef_construction=40)
    for start in range(0, n, 500):
        index.upsert(ids[start:start + 500], vectors[start:start + 500], records_for(ids[start:start + 500]))
    stats = index.stats()
    assert stats["vector_bytes"] == n * (image_dim + 50) * 4
    assert 0 < stats["graph_bytes"] < stats["vector_bytes"] / 10
    assert stats["bytes"] <= 1.5 * (stats["vector_bytes"] + stats["graph_bytes"])


# -- ef calibration ----------------------------------------------------------------------------
def test_ef_grows_with_k_from_the_calibrated_one():
    assert ef_for(10, 24) == 24 and ef_for(1, 24) == 24 and ef_for(100, 24) == 240
    assert ef_for(25, 16) == 40 and ef_for(1000, 10) == 1000 and ef_for(10) == calibration.EF_DEFAULT


def test_small_shards_use_the_default_ef_until_calibrated(monkeypatch):
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 300)
    rng = np.random.default_rng(17)
    vectors = unit(rng, 1300, 16)
    ids = [f"c{j}" for j in range(1300)]
    index = ShardIndex(16)
    index.upsert(ids[:299], vectors[:299], records_for(ids[:299]))
    assert index.stats()["ef"] == {"vector": calibration.EF_DEFAULT} and index.stats()["calibrated_at"] == 0
    index.upsert(ids[299:300], vectors[299:300], records_for(ids[299:300]))
    assert index.stats()["calibrated_at"] == 300  # calibrated on reaching CALIBRATE_MIN
    index.upsert(ids[300:590], vectors[300:590], records_for(ids[300:590]))
    assert index.stats()["calibrated_at"] == 300  # grown by less than it had
    index.upsert(ids[590:600], vectors[590:600], records_for(ids[590:600]))
    assert index.stats()["calibrated_at"] == 600  # doubled
    index.upsert(ids[:100], -vectors[:100], records_for(ids[:100]))
    assert index.stats()["calibrated_at"] == 600  # 100 changed: under 20%
    index.delete(ids[100:120])
    assert index.stats()["calibrated_at"] == 580  # 120 changed: 20% of 600


def test_a_lower_recall_target_calibrates_a_smaller_ef(monkeypatch):
    """Uniform random vectors, the hardest case for a graph: each ef reaches about the recall
    it was calibrated for on fresh queries."""
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 1000)
    rng = np.random.default_rng(18)
    n, dim = 3000, 48
    vectors = unit(rng, n, dim)
    ids = [f"u{j}" for j in range(n)]
    queries = unit(rng, 200, dim)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    chosen = {}
    for target in (0.99, 0.8):
        index = ShardIndex(dim, recall_target=target)
        index.upsert(ids, vectors, records_for(ids))
        chosen[target] = index.calibrate()["vector"].ef
        assert index.stats()["ef"] == {"vector": chosen[target]}
        found = sum(len({h.id for h in index.search(q, 10)} & {ids[j] for j in truth})
                    for q, truth in zip(queries, exact))
        assert found / exact.size >= target - 0.03, (target, chosen[target], found / exact.size)
    assert chosen[0.8] < chosen[0.99]


def test_a_query_far_from_every_item_is_searched_again_with_a_long_list(block_shard, monkeypatch):
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    stats = index.stats()
    assert all(0.0 < stats["far_below"][kind] < 1.0 for kind in index.kinds)
    calls: list[int] = []
    approximate = index._approximate

    def spy(query, graphs, k, ef, allowed):
        calls.append(ef)
        return approximate(query, graphs, k, ef, allowed)

    monkeypatch.setattr(index, "_approximate", spy)
    sparse = np.zeros(IMAGE_DIM, np.float32)
    sparse[np.random.default_rng(19).choice(IMAGE_DIM, 2, replace=False)] = 1.0  # unlike any item's image
    for query, expected in ((block_shard["queries"]["image"][0], [stats["ef"]["image"]]),
                            (build_query(sparse, None, IMAGE_DIM, TEXT_DIM).vector,
                             [stats["ef"]["image"], stats["far_ef"]["image"]])):
        calls.clear()
        hits = index.search(query, 10)
        assert calls == expected
        exact = {ids[j] for j in np.argsort(-(vectors @ query), kind="stable")[:10]}
        assert len({h.id for h in hits} & exact) >= 9
    for far_below, expected in ((None, [16]), (-1.0, [16]), (0.99, [16, calibration.EF_FAR])):
        calls.clear()
        monkeypatch.setitem(index._calibration.tuning, "image", calibration.Tuning(16, far_below))
        index.search(block_shard["queries"]["image"][0], 10)
        assert calls == expected  # searched again when the 10th score < far_below x the query's norm
    calls.clear()
    index.search(block_shard["queries"]["image"][0], 1500)
    assert calls == [2400, max(calibration.EF_FAR, 3000)]  # ef scales with k; the long list is at least 2k


def test_calibration_copes_with_duplicate_items():
    rng = np.random.default_rng(20)
    vectors = np.tile(unit(rng, 4, 16), (300, 1))  # four vectors, each stored under 300 ids
    ids = [f"d{j}" for j in range(1200)]
    index = ShardIndex(16)
    index.upsert(ids, vectors, records_for(ids))
    tuning = index.calibrate()["vector"]
    assert tuning.ef in calibration.EF_LADDER and np.isfinite(tuning.far_below)
    assert {int(h.id[1:]) % 4 for h in index.search(vectors[6], 10)} == {2}
