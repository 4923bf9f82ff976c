"""Tests of the shard index (hnswlib + records), its snapshots, the RW lock and item labels."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shared import shard_index
from shared.errors import SnapshotError
from shared.labels import label_for, shard_for
from shared.rwlock import RWLock
from shared.shard_index import ItemRecord, SearchHit, ShardIndex, ef_for


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
    code = "from shared.labels import label_for; print(label_for('abc'), label_for('x/y'))"
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
def test_searches_during_bulk_writes_and_deletes(tmp_path: Path):
    rng = np.random.default_rng(7)
    dim, n = 32, 4000
    vectors = unit(rng, n, dim)
    ids = [f"c{j}" for j in range(n)]
    index = ShardIndex(dim, initial_capacity=64)
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
