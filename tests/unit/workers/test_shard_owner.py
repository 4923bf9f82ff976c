"""A shard slot's owner: applies the log, snapshots, and recovers from snapshot + log replay; a
replica follows it and writes nothing."""
import numpy as np
import pytest

from shared.store import catalog, jobs, keys, shardlog
from shared.runtime.config import Settings
from shared.store.shardlog import LogEntry
from shared.index import calibration, query_sample
from shared.index.shard_index import ShardIndex
from workers import slot_follower
from workers.shard_owner import PREVIOUS, SNAPSHOT, ShardOwner
from workers.shard_replica import ShardReplica

rng = np.random.default_rng(7)


@pytest.fixture()
def setup(redis_client, tmp_path):
    settings = Settings(data_dir=tmp_path, shard_slots=1, snapshot_every=10_000)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=1)
    return redis_client, settings, coll


def log_items(r, coll, ids):
    dim = coll.dims["image"] + coll.dims["text"]
    job = jobs.create_job(r, "ingest", coll.name, coll.cid, len(ids))
    vecs = {}
    for index, item_id in enumerate(ids):
        v = rng.normal(size=dim).astype(np.float32)
        v /= np.linalg.norm(v)
        vecs[item_id] = v
        assert shardlog.log_item(r, coll.cid, 0, job, index, LogEntry("upsert", item_id, v, item_id, {"n": index}, True)) == "logged"
    return vecs


def drain(owner):
    owner.refresh()
    while owner.step(block_ms=10):
        pass


def test_apply_snapshot_and_recover_with_replay(setup):
    r, settings, coll = setup
    owner = ShardOwner(0, settings, r)
    first = log_items(r, coll, [f"a{i}" for i in range(30)])
    drain(owner)
    state = owner.get(coll.cid, 0)
    assert len(state.index) == 30
    assert r.hget(keys.shard_state(coll.cid, 0), "count") == b"30"
    owner.snapshot((coll.cid, 0))
    assert r.hget(keys.shard_state(coll.cid, 0), "snapshot") == state.position.encode()  # published
    second = log_items(r, coll, [f"b{i}" for i in range(20)])
    shardlog.log_item(r, coll.cid, 0, jobs.create_job(r, "delete", coll.name, coll.cid, 1), 0, LogEntry("delete", "a0"))
    drain(owner)
    assert len(owner.get(coll.cid, 0).index) == 49

    # A new owner (after a crash) loads the snapshot and replays what came after it.
    recovered = ShardOwner(0, settings, r)
    drain(recovered)
    index = recovered.get(coll.cid, 0).index
    assert len(index) == 49 and index.get("a0") is None
    hit = index.search(second["b3"], 1)[0]
    assert hit.id == "b3" and hit.record.metadata == {"n": 3}
    assert index.search(first["a5"], 1)[0].id == "a5"


def test_a_corrupt_newest_snapshot_falls_back_to_the_previous_one(setup):
    r, settings, coll = setup
    owner = ShardOwner(0, settings, r)
    log_items(r, coll, [f"a{i}" for i in range(10)])
    drain(owner)
    owner.snapshot((coll.cid, 0))
    log_items(r, coll, [f"b{i}" for i in range(10)])
    drain(owner)
    owner.snapshot((coll.cid, 0))  # the first snapshot becomes the previous one; log trimmed to it
    directory = owner.shard_dir(coll.cid, 0)
    assert (directory / PREVIOUS).exists()
    # Trimmed only up to what the previous snapshot covers (its last entry is kept).
    assert r.xlen(keys.shard_log(coll.cid, 0)) == 11
    newest = directory / SNAPSHOT
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    recovered = ShardOwner(0, settings, r)
    drain(recovered)
    index = recovered.get(coll.cid, 0).index
    assert len(index) == 20  # previous snapshot (10) + the log replayed after it (10)


def test_a_large_shard_waits_for_a_tenth_of_its_items_between_snapshots(redis_client, tmp_path):
    settings = Settings(data_dir=tmp_path, shard_slots=1, snapshot_every=10)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=1)
    owner = ShardOwner(0, settings, redis_client)
    key = (coll.cid, 0)
    log_items(redis_client, coll, [f"a{i}" for i in range(300)])
    drain(owner)
    owner.snapshot(key)
    state = owner.get(*key)
    log_items(redis_client, coll, [f"b{i}" for i in range(20)])  # past snapshot_every, short of 10% of 320
    drain(owner)
    owner.snapshot_due()
    assert state.unsaved == 20
    log_items(redis_client, coll, [f"c{i}" for i in range(15)])
    drain(owner)
    owner.snapshot_due()
    assert state.unsaved == 0
    assert len(ShardIndex.load(state.directory / SNAPSHOT)[0]) == 335


def test_a_shard_at_rest_has_its_tuning_measured_again_and_snapshotted(setup, monkeypatch):
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 100)
    r, settings, coll = setup
    owner = ShardOwner(0, settings, r)
    key = (coll.cid, 0)
    log_items(r, coll, [f"a{i}" for i in range(100)])
    drain(owner)
    state = owner.get(*key)
    log_items(r, coll, [f"b{i}" for i in range(40)])
    drain(owner)
    assert state.index.stats()["calibrated_at"] == 100  # not doubled
    owner.settle()
    assert state.index.stats()["calibrated_at"] == 100  # just written: not at rest
    monkeypatch.setattr(slot_follower, "IDLE_S", 0.0)
    owner.snapshot(key)
    owner.settle()
    assert state.index.stats()["calibrated_at"] == 140 and state.unsaved == 1
    owner.snapshot(key)
    assert ShardIndex.load(state.directory / SNAPSHOT)[0].stats()["calibrated_at"] == 140


def test_a_shard_at_rest_measures_its_lists_on_the_queries_it_was_sent_and_snapshots_them(setup, monkeypatch):
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 100)
    monkeypatch.setattr(slot_follower, "IDLE_S", 0.0)
    r, settings, coll = setup
    owner = ShardOwner(0, settings, r)
    key = (coll.cid, 0)
    vectors = log_items(r, coll, [f"a{i}" for i in range(150)])
    drain(owner)
    state = owner.get(*key)
    owner.snapshot(key)
    for vector in list(vectors.values())[:query_sample.SAMPLE_MIN]:  # whole vectors: fused queries
        state.index.search(vector + 0.1 * rng.normal(size=len(vector)).astype(np.float32), 10)
    assert state.unsaved == 0 and state.index.stats()["sampled"]["fused"] == []
    owner.settle()
    sampled = state.index.stats()["sampled"]["fused"]
    assert any(ef for ef, _ in sampled) and state.unsaved == 1
    owner.snapshot(key)
    assert ShardIndex.load(state.directory / SNAPSHOT)[0].stats()["sampled"]["fused"] == sampled


def test_on_stop_the_owner_snapshots_and_a_replica_only_removes_its_positions(setup):
    r, settings, coll = setup
    key = (coll.cid, 0)
    owner, replica = ShardOwner(0, settings, r), ShardReplica(0, settings, r)
    log_items(r, coll, [f"a{i}" for i in range(5)])
    drain(owner)
    drain(replica)
    assert r.hget(keys.shard_state(*key), "replica.0.0") == replica.shards[key].position.encode()
    replica.stop()
    assert not (owner.shard_dir(*key) / SNAPSHOT).exists()
    assert not r.hexists(keys.shard_state(*key), "replica.0.0")
    owner.stop()
    assert ShardIndex.read_position(owner.shard_dir(*key) / SNAPSHOT) == owner.shards[key].position


def test_a_delete_of_an_absent_id_is_named_in_its_job_which_still_succeeds(setup):
    r, settings, coll = setup
    owner, replica = ShardOwner(0, settings, r), ShardReplica(0, settings, r)
    log_items(r, coll, ["a", "b"])
    deletes = {}
    for item_id in ("a", "ghost"):
        deletes[item_id] = jobs.create_job(r, "delete", coll.name, coll.cid, 1)
        shardlog.log_item(r, coll.cid, 0, deletes[item_id], 0, LogEntry("delete", item_id, job=deletes[item_id]))
    drain(replica)  # a replica applies the same deletes but reports nothing
    assert not r.exists(keys.job_not_found(deletes["ghost"]))
    drain(owner)
    ghost, present = (jobs.job_view(r, deletes[i], 60) for i in ("ghost", "a"))
    assert (ghost["state"], ghost["done"], ghost["failed"], ghost["not_found"]) == ("succeeded", 1, 0, ["ghost"])
    assert (present["state"], present["not_found"]) == ("succeeded", [])
    assert owner.get(coll.cid, 0).index.get("a") is None and len(owner.get(coll.cid, 0).index) == 1
