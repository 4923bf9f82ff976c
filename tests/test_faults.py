"""Durability and fault tolerance.

Unit level (real Redis, no stack): the encode task's delivery limit, the stuck-job reaper,
leases that lapse while Redis is away, read replicas that follow the owner's log and snapshots,
jobs that wait for live replicas, a trimmed log without a snapshot.

Stack level (marked slow; CI runs them): see the second half of the file.
"""
from __future__ import annotations

import contextvars
import time

import numpy as np
import pytest

from api.broker import make_celery
from shared import catalog, jobs, keys, queues, shardlog, slots
from shared.config import Settings
from shared.shardlog import LogEntry
from workers import lease as lease_mod
from workers import reaper
from workers.shard_owner import PREVIOUS, SNAPSHOT, ShardOwner

rng = np.random.default_rng(11)


def _vector(dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


# -- the encode task's delivery limit ---------------------------------------------------------

def test_a_task_started_too_often_fails_its_items_with_retries_exhausted(redis_client, monkeypatch, tmp_path):
    import workers.encode as encode

    settings = Settings(data_dir=tmp_path, task_max_deliveries=3)
    monkeypatch.setattr(encode, "redis_client", lambda: redis_client)
    monkeypatch.setattr(encode, "settings", lambda: settings)
    coll = catalog.create_collection(redis_client, settings, "poison", shards=1)
    job = jobs.create_job(redis_client, "ingest", "poison", coll.cid, 2, ids=["a", "b"])
    items = [{"index": 0, "id": "a", "text": "a cat"}, {"index": 1, "id": "b", "text": "a dog"}]
    # Three starts already happened (each killed its worker): this is the fourth.
    redis_client.set(keys.deliveries("task-1"), 3)
    # In a copy of the context: the task binds its job id to the log context of its thread.
    outcome = contextvars.copy_context().run(lambda: encode.encode_items.apply(kwargs={
        "job_id": job, "collection": "poison", "cid": coll.cid, "items": items}, task_id="task-1").get())
    assert outcome == {"done": 0, "failed": 2, "skipped": 0}
    view = jobs.job_view(redis_client, job, 60)
    assert view["state"] == "failed"
    assert {e["code"] for e in view["errors"]} == {"retries_exhausted"}
    assert [e["id"] for e in view["errors"]] == ["a", "b"]
    assert not redis_client.exists(keys.deliveries("task-1"))  # the counter goes with the task


# -- the stuck-job reaper ------------------------------------------------------------------------

@pytest.fixture()
def reaper_setup(redis_client, redis_server, tmp_path):
    settings = Settings(redis_url=redis_server, data_dir=tmp_path, job_stall_s=30)
    coll = catalog.create_collection(redis_client, settings, "stuck", shards=2)
    return redis_client, settings, coll


def test_the_reaper_fails_the_items_of_a_stalled_job_only(reaper_setup):
    r, settings, coll = reaper_setup
    # Stalled: one item counted, one never will be (its message is gone).
    stalled = jobs.create_job(r, "ingest", coll.name, coll.cid, 2, ids=["x0", "x1"])
    shardlog.log_item(r, coll.cid, 0, stalled, 0, LogEntry("upsert", "x0", _vector(1330)))
    r.hset(keys.shard_state(coll.cid, 0), "applied", r.xrevrange(keys.shard_log(coll.cid, 0), count=1)[0][0])
    # Waiting behind a backlog: its message is still queued.
    queued = jobs.create_job(r, "ingest", coll.name, coll.cid, 1, ids=["q0"])
    make_celery(settings).send_task(queues.ENCODE_ITEMS, queue=queues.ENCODE, kwargs={
        "job_id": queued, "collection": coll.name, "cid": coll.cid, "items": [{"index": 0, "id": "q0"}]})
    # Held unacknowledged by a (dead) consumer: kombu keeps it in the "unacked" hash.
    held = jobs.create_job(r, "ingest", coll.name, coll.cid, 1, ids=["h0"])
    make_celery(settings).send_task(queues.ENCODE_ITEMS, queue="held", kwargs={
        "job_id": held, "collection": coll.name, "cid": coll.cid, "items": [{"index": 0, "id": "h0"}]})
    raw = r.rpop("held")
    r.hset(reaper.UNACKED, "tag-1", f'[{raw.decode()}, "", "encode"]')
    # Counted but not applied (its shard owner is down): not stalled, just waiting.
    unapplied = jobs.create_job(r, "ingest", coll.name, coll.cid, 1, ids=["u0"])
    shardlog.log_item(r, coll.cid, 1, unapplied, 0, LogEntry("upsert", "u0", _vector(1330)))
    # Fresh: no progress yet, but not for long.
    fresh = jobs.create_job(r, "ingest", coll.name, coll.cid, 1, ids=["f0"])

    assert reaper.reap_once(r, settings)["reaped"] == {}  # nothing is old enough yet
    for job in (stalled, queued, held, unapplied):  # no progress for far longer than job_stall_s
        r.hset(keys.job(job), mapping={"created_at": 1, "started_at": 1, "updated_at": 1})
    outcome = reaper.reap_once(r, settings, now=time.time() + 5)
    assert outcome["reaped"] == {stalled: 1}
    view = jobs.job_view(r, stalled, 60)
    assert view["state"] == "completed_with_errors" and (view["done"], view["failed"]) == (1, 1)
    assert view["errors"][0]["id"] == "x1" and view["errors"][0]["code"] == "stalled"
    for job in (queued, held, unapplied, fresh):
        assert jobs.job_view(r, job, 60)["state"] in ("queued", "running")
    # Final jobs leave the active set; the rest stay.
    active = {j.decode() for j in r.zrange(keys.ACTIVE_JOBS, 0, -1)}
    assert stalled not in active and {queued, held, unapplied, fresh} <= active


def test_the_reaper_ends_a_stalled_async_search(reaper_setup):
    r, settings, coll = reaper_setup
    search = jobs.create_job(r, "search", coll.name, coll.cid, 1)
    r.hset(keys.job(search), "created_at", 1)
    assert reaper.reap_once(r, settings)["reaped"] == {search: 1}
    view = jobs.job_view(r, search, 60)
    assert view["state"] == "failed" and view["errors"][0]["code"] == "stalled"


def test_reaper_rounds_take_a_lock(reaper_setup):
    r, settings, _ = reaper_setup
    first, second = reaper.Reaper(r, settings, interval_s=5), reaper.Reaper(r, settings, interval_s=5)
    first._round()
    assert r.get(keys.REAPER_LOCK).decode() == first.token
    second._round()  # does nothing while the other holds the lock
    assert r.get(keys.REAPER_LOCK).decode() == first.token


# -- leases ----------------------------------------------------------------------------------------

def test_a_lapsed_lease_is_taken_back_when_nobody_else_took_it(redis_client, monkeypatch):
    r = redis_client
    lease = lease_mod.SlotLease(r, 0)
    assert lease.try_acquire() and lease.held()
    r.delete(keys.slot_owner(0))  # as after a Redis restart past the expiry
    assert lease.renew() and lease.retaken == 1 and lease.held()
    assert r.get(keys.slot_owner(0)).decode() == lease.token
    lease._valid_until = time.monotonic() - 1  # no renewal for LEASE_MS: not held, no writes
    assert not lease.held()
    lost = []
    monkeypatch.setattr(lease, "lost", lambda: lost.append(True))
    r.set(keys.slot_owner(0), "someone-else")
    lease.renew()
    assert lost and not lease.held()


def test_replica_leases_spread_over_slots_and_count_as_live(redis_client):
    r = redis_client
    assert slots.live_slots(r, [0, 1]) == set()
    first = lease_mod.claim_replica(r, 2)
    second = lease_mod.claim_replica(r, 2)
    assert (first.slot, second.slot) == (0, 1)
    assert slots.live_slots(r, [0, 1]) == {0, 1} and slots.replica_count(r, 0) == 1
    r.set(first.key, "intruder")
    first.renew()  # a replica whose lease was taken takes another one of its slot
    assert first.key == keys.slot_replica(0, 1) and r.get(first.key).decode() == first.token
    for lease in (first, second):
        lease.release()


# -- replicas, trims and reloads -------------------------------------------------------------------

@pytest.fixture()
def shard_setup(redis_client, tmp_path):
    settings = Settings(data_dir=tmp_path, shard_slots=1, snapshot_every=10_000)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=1)
    return redis_client, settings, coll


def log_items(r, coll, ids):
    job = jobs.create_job(r, "ingest", coll.name, coll.cid, len(ids), ids=list(ids))
    vectors = {}
    for index, item_id in enumerate(ids):
        vectors[item_id] = _vector(coll.dims["image"] + coll.dims["text"])
        assert shardlog.log_item(r, coll.cid, 0, job, index,
                                 LogEntry("upsert", item_id, vectors[item_id], item_id)) == shardlog.LOGGED
    return job, vectors


def drain(owner):
    owner.refresh()
    while owner.step(block_ms=None):
        pass


def test_a_replica_follows_the_log_and_the_owners_snapshots_but_never_writes(shard_setup):
    r, settings, coll = shard_setup
    owner = ShardOwner(0, settings, r)
    log_items(r, coll, [f"a{i}" for i in range(20)])
    drain(owner)
    owner.snapshot((coll.cid, 0))
    job, vectors = log_items(r, coll, [f"b{i}" for i in range(10)])

    replica = ShardOwner(0, settings, r, replica=True)
    drain(replica)
    index = replica.get(coll.cid, 0).index
    assert len(index) == 30 and index.search(vectors["b4"], 1)[0].id == "b4"
    state = r.hgetall(keys.shard_state(coll.cid, 0))
    assert state[b"applied"] == owner.shards[(coll.cid, 0)].position.encode()  # the owner's, untouched
    assert state[b"replica.0.0"] == replica.shards[(coll.cid, 0)].position.encode()
    # The job waits for the owner; the replica has applied it too.
    assert jobs.job_view(r, job, 60)["state"] == "running"
    drain(owner)
    assert jobs.job_view(r, job, 60)["state"] == "succeeded"
    replica.snapshot_all()
    assert sorted(p.name for p in owner.shard_dir(coll.cid, 0).iterdir()) == [SNAPSHOT]  # the owner's only
    replica.unpublish()
    assert b"replica.0.0" not in r.hgetall(keys.shard_state(coll.cid, 0))


def test_a_job_waits_for_a_live_replica_that_is_behind(shard_setup):
    r, settings, coll = shard_setup
    owner = ShardOwner(0, settings, r)
    job, _ = log_items(r, coll, ["a", "b"])
    drain(owner)
    r.hset(keys.shard_state(coll.cid, 0), "replica.0.3", "0-1")  # a replica still at the start
    r.set(keys.slot_replica(0, 3), "alive", px=5000)
    assert jobs.job_view(r, job, 60)["state"] == "running"
    r.delete(keys.slot_replica(0, 3))  # it died: its stale position no longer counts
    assert jobs.job_view(r, job, 60)["state"] == "succeeded"


def test_a_replica_behind_the_trimmed_log_reloads_the_snapshot(shard_setup):
    r, settings, coll = shard_setup
    owner = ShardOwner(0, settings, r)
    replica = ShardOwner(0, settings, r, replica=True)
    log_items(r, coll, [f"a{i}" for i in range(10)])
    drain(owner)
    drain(replica)
    owner.snapshot((coll.cid, 0))
    # The replica stops reading while the owner goes on, snapshots twice and trims.
    log_items(r, coll, [f"b{i}" for i in range(10)])
    drain(owner)
    owner.snapshot((coll.cid, 0))
    log_items(r, coll, [f"c{i}" for i in range(10)])
    drain(owner)
    owner.snapshot((coll.cid, 0))
    trimmed = shardlog.trimmed_before(r, coll.cid, 0)
    assert trimmed and r.xlen(keys.shard_log(coll.cid, 0)) <= 11
    _, late = log_items(r, coll, [f"d{i}" for i in range(5)])
    drain(replica)
    assert replica.reloads == 1
    index = replica.get(coll.cid, 0).index
    assert len(index) == 35 and index.search(late["d2"], 1)[0].id == "d2"
    assert index.get("b3") is not None  # what the trimmed part held came from the snapshot


def test_an_owner_without_its_lease_writes_nothing(shard_setup):
    r, settings, coll = shard_setup

    class Lapsed:
        key = keys.slot_owner(0)

        def held(self):
            return False

    owner = ShardOwner(0, settings, r, lease=Lapsed())
    log_items(r, coll, ["a", "b"])
    drain(owner)
    assert len(owner.get(coll.cid, 0).index) == 2  # still applies and answers from memory
    owner.snapshot_all()
    assert not (owner.shard_dir(coll.cid, 0) / SNAPSHOT).exists()
    assert not r.hexists(keys.shard_state(coll.cid, 0), "applied")


def test_a_trimmed_log_without_a_snapshot_is_refused_not_served_partially(shard_setup):
    r, settings, coll = shard_setup
    owner = ShardOwner(0, settings, r)
    log_items(r, coll, [f"a{i}" for i in range(5)])
    drain(owner)
    owner.snapshot((coll.cid, 0))
    log_items(r, coll, [f"b{i}" for i in range(5)])
    drain(owner)
    owner.snapshot((coll.cid, 0))
    directory = owner.shard_dir(coll.cid, 0)
    for name in (SNAPSHOT, PREVIOUS):
        (directory / name).unlink()
    again = ShardOwner(0, settings, r)
    drain(again)
    assert again.get(coll.cid, 0) is None
    assert "trimmed" in again.refused[(coll.cid, 0)][0]
