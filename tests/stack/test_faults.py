"""Durability and fault tolerance.

Unit level (real Redis, no stack): the encode task's delivery limit, the stuck-job reaper,
leases that lapse while Redis is away, read replicas that follow the owner's log and snapshots,
jobs that wait for live replicas, a trimmed log without a snapshot.

Stack level: see the second half of the file. (Every test under tests/stack/ is marked `stack`:
`make test-fast` skips them.)
"""
from __future__ import annotations

import base64
import contextvars
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import redis as redis_lib
import requests

from shared.runtime.celery_config import make_celery
from bench.bulk import bulk_insert, synthetic_vectors
from bench.photos import all_photos
from shared.store import catalog, jobs, keys, queues, replies, shardlog, slots
from shared.runtime.config import Settings
from shared.runtime.embedded_redis import wait_until_up
from shared.index.labels import shard_for
from shared.store.serializers import vector_to_b64
from shared.store.shardlog import LogEntry
from shared.runtime.stack import free_port
from workers import lease as lease_mod
from workers import reaper
from workers.shard_owner import PREVIOUS, SNAPSHOT, ShardOwner
from workers.shard_replica import ShardReplica
from shared.runtime.stack import Stack
from tests.support.workers import queued as queued_messages

rng = np.random.default_rng(11)


def _vector(dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def vector_query(vector: np.ndarray, image_dim: int) -> dict:
    """The query of a slot search request made of a stored vector's two blocks, equally
    weighted (for a fused vector, the query vector is the vector itself)."""
    return {"image_dim": image_dim, "text_dim": len(vector) - image_dim, "image": vector_to_b64(vector[:image_dim]),
            "text": vector_to_b64(vector[image_dim:]), "weights": {"image": 1.0, "text": 1.0}}


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


def test_the_reaper_sends_a_stalled_ingest_again_and_fails_other_stalled_jobs(reaper_setup):
    r, settings, coll = reaper_setup
    # Stalled: one item counted, one never will be (its message is gone); the API kept the
    # encode messages of its items.
    stalled = jobs.create_job(r, "ingest", coll.name, coll.cid, 2, ids=["x0", "x1"], messages=[
        {"index": i, "id": f"x{i}", "text": "a cat", "metadata": {}, "image": None} for i in range(2)])
    shardlog.log_item(r, coll.cid, 0, stalled, 0, LogEntry("upsert", "x0", _vector(1330)))
    r.hset(keys.shard_state(coll.cid, 0), "applied", r.xrevrange(keys.shard_log(coll.cid, 0), count=1)[0][0])
    # Stalled with nothing kept to send again (a bulk insert that stopped): its items fail.
    bulk = jobs.create_job(r, "ingest", coll.name, coll.cid, 1)
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
    for job in (stalled, bulk, queued, held, unapplied):  # no progress for far longer than job_stall_s
        r.hset(keys.job(job), mapping={"created_at": 1, "started_at": 1, "updated_at": 1})
        r.zadd(keys.ACTIVE_JOBS, {job: 1})
    outcome = reaper.reap_once(r, settings, now=time.time() + 5)
    assert outcome["examined"] == 5  # the fresh one is not due
    assert outcome["redriven"] == {stalled: 1} and outcome["reaped"] == {bulk: 1}
    # The uncounted item is sent again, as the API sends it.
    (again,) = [m for m in queued_messages(r, queues.ENCODE) if m["job_id"] == stalled]
    assert again["_task"] == queues.ENCODE_ITEMS and again["cid"] == coll.cid
    assert again["items"] == [{"index": 1, "id": "x1", "text": "a cat", "metadata": {}, "image": None}]
    # Those still waiting (and the one sent again) are looked at again only after another job_stall_s.
    assert reaper.reap_once(r, settings, now=time.time() + 5)["examined"] == 0
    view = jobs.job_view(r, stalled, 60)
    assert view["state"] == "running" and (view["done"], view["failed"]) == (1, 0)
    view = jobs.job_view(r, bulk, 60)
    assert view["state"] == "failed" and view["errors"][0]["code"] == "stalled"
    for job in (queued, held, unapplied, fresh):
        assert jobs.job_view(r, job, 60)["state"] in ("queued", "running")
    # Final jobs leave the active set; the rest stay.
    active = {j.decode() for j in r.zrange(keys.ACTIVE_JOBS, 0, -1)}
    assert bulk not in active and {stalled, queued, held, unapplied, fresh} <= active


def test_the_reaper_ends_a_stalled_async_search(reaper_setup):
    r, settings, coll = reaper_setup
    search = jobs.create_job(r, "search", coll.name, coll.cid, 1)
    r.hset(keys.job(search), "created_at", 1)
    r.zadd(keys.ACTIVE_JOBS, {search: 1})
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
    assert slots.live_slots(r, [0, 1]) == {0, 1}
    assert [key for key in slots.liveness_keys(0) if r.exists(key)] == [first.key] == [keys.slot_replica(0, 0)]
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

    replica = ShardReplica(0, settings, r)
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
    replica.stop()  # a replica has no snapshot of its own to write, and withdraws its positions
    assert sorted(p.name for p in owner.shard_dir(coll.cid, 0).iterdir()) == [SNAPSHOT]  # the owner's only
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
    replica = ShardReplica(0, settings, r)
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


def test_a_shard_search_waits_for_the_position_it_was_asked_to_see(shard_setup, monkeypatch):
    import workers.shard as shard_worker

    r, settings, coll = shard_setup
    owner = ShardOwner(0, settings, r)
    monkeypatch.setattr(shard_worker, "redis_client", lambda: r)
    log_items(r, coll, ["a"])
    drain(owner)
    job, vectors = log_items(r, coll, ["b"])
    mark = r.hget(keys.job_marks(job), "0").decode()
    request = {"cid": coll.cid, "shards": [0], "query": vector_query(vectors["b"], coll.dims["image"]), "k": 1,
               "filter": None, "min_positions": {"0": mark}}
    # Nobody applies "b": the shard answers at its deadline, and says it is behind.
    started = time.monotonic()
    (body,) = shard_worker.search_slot(owner, **request, reply_to=None, wait_until=time.time() + 0.5)["answers"]
    assert body["applied"] is False and body["hits"][0]["id"] == "a" and time.monotonic() - started >= 0.45
    # Applied while it waits: it answers as soon as it has, with "b".
    threading.Timer(0.3, drain, args=(owner,)).start()
    reply = keys.search_replies("t1")
    answer = shard_worker.search_slot(owner, **request, reply_to=reply, wait_until=time.time() + 10)
    (body,) = answer["answers"]
    assert body["applied"] is True and body["hits"][0]["id"] == "b"
    assert replies.wait_one(r, reply, 1) == answer  # what the query worker gathers


# ==============================================================================================
# Stack level: the real processes, killed with SIGKILL while work is in flight.
#
# Most items come through the bulk-vector path (bench.bulk: fused vectors appended to the shard
# logs under ordinary ingest jobs, from this test process); real photos come through the API
# and the encode worker. Bulk items have no image to search with, so "found by its own vector"
# pushes a search request with the item's vector onto its slot's request list, naming its shard
# (answered by the owner or a replica, whichever takes it), as a query worker would.
# ==============================================================================================


FAULT_SEED = int(os.environ.get("MMSEARCH_FAULT_SEED", "7"))
BULK_JOBS, BULK_PER_JOB = 30, 100      # 3000 items through the bulk-vector path
COPIES = 3                             # each real photo ingested 3 times under distinct ids
SHARDS = 4
FINAL = ("succeeded", "completed_with_errors", "failed", "cancelled")
KILLS = ["shard", "shard", "replica", "encode", "encode", "query", "redis"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FaultStack:
    """The stack, its Redis, and what the ingest put in (filled by the `ingested` fixture)."""

    def __init__(self, stack: Stack, env: dict[str, str]) -> None:
        self.stack = stack
        self.env = env
        self.port = int(env["MMSEARCH_REDIS_PORT"])
        self.api = f"{stack.api_url}/v1"
        self.r = redis_lib.Redis(host="127.0.0.1", port=self.port, socket_timeout=30)
        self.vectors: dict[str, np.ndarray] = {}   # bulk item id -> its vector
        self.photo_ids: dict[str, list[str]] = {}  # photo name -> the ids of its copies
        self.jobs: list[str] = []
        self.kills: dict[str, int] = {}
        self.coll: catalog.Collection | None = None

    # -- processes -------------------------------------------------------------------------
    def slot_of(self, name: str) -> int | None:
        """The slot whose owner or replica lease the process `name` holds now."""
        pid = self.stack.procs[name].pid
        for slot in range(self.stack.settings.shard_slots):
            for key in slots.liveness_keys(slot):
                token = self.r.get(key)
                if token and token.decode().split(":")[1] == str(pid):
                    return slot
        return None

    def holder(self, role: str, slot: int) -> str:
        names = [n for n in self.stack.procs if n.startswith(role + ".")]
        return next(n for n in names if self.slot_of(n) == slot)

    def wait_serving(self, name: str, timeout_s: float) -> None:
        """Until the shard process `name` holds a lease and has replayed the logs (its log says so)."""
        deadline = time.monotonic() + timeout_s
        log_file = self.stack.log_dir / f"{name}.log"
        pid = self.stack.procs[name].pid
        while not (self.slot_of(name) is not None and
                   re.search(rf"\[{pid}\] workers\.shard: slot \d+: caught up", log_file.read_text())):
            assert self.stack.procs[name].poll() is None, f"{name} exited"
            assert time.monotonic() < deadline, f"{name} did not come back within {timeout_s} s"
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        self.stack.signal(name, signal.SIGKILL)
        kind = name.split(".")[0]
        self.kills[kind] = self.kills.get(kind, 0) + 1

    def restart(self, name: str) -> None:
        proc = self.stack.start_process(name)
        if name == "redis":
            wait_until_up(self.port, timeout_s=60, proc=proc)

    # -- API -------------------------------------------------------------------------------
    def call(self, method: str, path: str, retry_s: float = 60, **kw):
        """An API call, retried through 503s and refused connections (Redis restarts)."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                resp = requests.request(method, self.api + path, timeout=60, **kw)
                if resp.status_code != 503 or time.monotonic() > deadline:
                    return resp
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/jobs/{job_id}").json()

    def wait_final(self, job_ids: list[str], timeout_s: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        views: dict[str, dict] = {}
        while True:
            for job_id in job_ids:
                if views.get(job_id, {}).get("state") not in FINAL:
                    views[job_id] = self.job(job_id)
            open_jobs = [j for j in job_ids if views[j]["state"] not in FINAL]
            if not open_jobs:
                return views
            assert time.monotonic() < deadline, f"jobs not final: {[views[j] for j in open_jobs[:3]]}"
            time.sleep(1.0)

    # -- checks ----------------------------------------------------------------------------
    def get_items(self, ids: list[str]) -> dict[str, int]:
        """HTTP status of GET item for each id (16 at a time)."""
        def get(item_id: str) -> tuple[str, int]:
            return item_id, self.call("GET", f"/collections/faults/items/{item_id}").status_code
        with ThreadPoolExecutor(16) as pool:
            return dict(pool.map(get, ids))

    def top_hits_by_vector(self, ids: list[str], timeout_s: float = 60) -> dict[str, tuple[str, float] | None]:
        """Each bulk item's top hit on its own shard, searched with its own vector (a slot search
        request naming that shard)."""
        coll, slots_n = self.coll, self.stack.settings.shard_slots
        run = uuid.uuid4().hex[:8]
        reply = {item_id: keys.search_replies(f"fault-{run}-{item_id}") for item_id in ids}
        for item_id in ids:
            shard = shard_for(item_id, coll.shards)
            request = {"op": queues.SLOT_SEARCH, "cid": coll.cid, "shards": [shard], "k": 1, "filter": None,
                       "query": vector_query(self.vectors[item_id], coll.dims["image"]), "wait_until": None,
                       "min_positions": {}}
            replies.send(self.r, {keys.slot_searches(queues.slot_for_shard(shard, slots_n)): request},
                         reply[item_id], expires=time.time() + timeout_s)
        found: dict[str, tuple[str, float] | None] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(ids) and time.monotonic() < deadline:
            waiting = [i for i in ids if i not in found]
            pipe = self.r.pipeline(transaction=False)
            for item_id in waiting:
                pipe.lpop(reply[item_id])
            for item_id, raw in zip(waiting, pipe.execute()):
                if raw is not None:
                    hits = json.loads(raw)["answers"][0]["hits"]
                    found[item_id] = (hits[0]["id"], hits[0]["score"]) if hits else None
            time.sleep(0.2)
        return found


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mmsearch-faults")
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update({"MMSEARCH_DATA_DIR": str(data_dir), "MMSEARCH_PORT": str(free_port()),
                "MMSEARCH_REDIS_PORT": str(free_port()), "MMSEARCH_SHARDS": "2", "MMSEARCH_SHARD_REPLICAS": "1",
                "MMSEARCH_TASK_TIME_LIMIT_S": "10", "MMSEARCH_TASK_MAX_DELIVERIES": "6",
                "MMSEARCH_JOB_STALL_S": "120", "MMSEARCH_SNAPSHOT_EVERY": "300",
                "MMSEARCH_SHARD_TIMEOUT_S": "3", "MMSEARCH_SEARCH_TIMEOUT_S": "20", "MMSEARCH_LOG_LEVEL": "INFO"})
    stack = Stack(env, log_dir=data_dir / "logs")
    fs = FaultStack(stack, env)
    try:
        stack.start()
        stack.wait_ready(timeout_s=180)
        yield fs
    finally:
        fs.stack.stop()


def _bulk_ingest(fs: FaultStack, stop_at: float, errors: list[BaseException]) -> None:
    """BULK_JOBS bulk jobs, spread until `stop_at`; a Redis restart makes a job resume by its id."""
    try:
        r = redis_lib.Redis(host="127.0.0.1", port=fs.port, socket_timeout=30)
        dims = fs.coll.dims
        pause = max(0.1, (stop_at - time.monotonic()) / BULK_JOBS)
        for j in range(BULK_JOBS):
            ids = [f"bulk-{j}-{i}" for i in range(BULK_PER_JOB)]
            vectors = synthetic_vectors(BULK_PER_JOB, dims["image"], dims["text"], seed=1000 + j, clusters=50)
            fs.vectors.update(zip(ids, vectors))
            job_id = uuid.uuid4().hex
            while True:
                try:
                    bulk_insert(r, fs.coll, vectors, ids, job_id=job_id, chunk=25)
                    break
                except (redis_lib.ConnectionError, redis_lib.TimeoutError):
                    time.sleep(0.5)
            fs.jobs.append(job_id)
            time.sleep(pause)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _photo_ingest(fs: FaultStack, at: list[float], errors: list[BaseException]) -> None:
    """Copy c of every photo in one JSON request at time at[c]; a 503 is retried (new job)."""
    try:
        photos = all_photos()
        for copy, when in enumerate(at):
            time.sleep(max(0.0, when - time.monotonic()))
            items = [{"id": f"{p.name}-{copy}", "image": {"base64": b64(p.read_bytes())}} for p in photos]
            resp = fs.call("POST", "/collections/faults/items", retry_s=120, json={"items": items})
            assert resp.status_code == 202, resp.text
            fs.jobs.append(resp.json()["job_id"])
            for p in photos:
                fs.photo_ids.setdefault(p.name, []).append(f"{p.name}-{copy}")
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


@dataclass
class Ingested:
    """What the ingest under SIGKILLs left: every job's final view and the kills it went through."""

    views: dict[str, dict]
    timeline: list[tuple[float, str, float]]  # (s after start, process, seconds down)
    kills: dict[str, int]                     # by kind


@pytest.fixture(scope="module")
def ingested(faults) -> Ingested:
    """The `faults` collection, filled through the bulk-vector path and the API while every kind
    of process is SIGKILLed and restarted; once per module, for every test that names it (the
    first test checks what it stored, the others need its snapshots and trimmed logs). The other
    tests write only to collections of their own, so they never change what this one holds."""
    fs = faults
    resp = fs.call("POST", "/collections", json={"name": "faults", "shards": SHARDS})
    assert resp.status_code == 201, resp.text
    fs.coll = catalog.get_collection(fs.r, "faults")
    rng = random.Random(FAULT_SEED)
    started = time.monotonic()
    window = 48.0
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_bulk_ingest, args=(fs, started + window, errors)),
               threading.Thread(target=_photo_ingest, args=(fs, [started + 1, started + 14, started + 27], errors))]
    for t in threads:
        t.start()

    # The kills: each kind at a random moment of its own part of the window, then a restart.
    kinds = KILLS[:]
    rng.shuffle(kinds)
    step = (window - 4) / len(kinds)
    timeline = []
    for n, kind in enumerate(kinds):
        time.sleep(max(0.0, started + 3 + n * step + rng.uniform(0, step * 0.6) - time.monotonic()))
        if kind in ("shard", "replica"):
            name = f"{kind}.{rng.randint(1, 2)}"
        else:
            name = kind
        fs.kill(name)
        # Redis stays away longer than a lease (5 s): the owners' and replicas' leases lapse.
        down = rng.uniform(5.5, 7.5) if kind == "redis" else rng.uniform(0.2, 2.0)
        timeline.append((round(time.monotonic() - started, 1), name, round(down, 1)))
        time.sleep(down)
        fs.restart(name)
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    print(f"\nkills (s after start, process, seconds down): {timeline}")
    kills = dict(fs.kills)
    views = fs.wait_final(list(fs.jobs), timeout_s=240)
    fs.stack.wait_ready(timeout_s=180)
    return Ingested(views, timeline, kills)


# Each test's time limit counts the module's fixtures that its setup runs: the stack's start
# (up to 180 s) and, for the tests that need it, the ingest under kills (up to about 8 min).
STACK_SETUP_S, INGEST_SETUP_S = 240, 720


@pytest.mark.timeout(INGEST_SETUP_S + 300)
def test_sigkills_during_ingest_lose_nothing_and_duplicate_nothing(faults, ingested):
    fs = faults
    # Every job reached a final state, with every item done.
    views = ingested.views
    bad = {j: (v["state"], v["done"], v["failed"], v["errors"][:2]) for j, v in views.items()
           if v["state"] != "succeeded" or v["done"] != v["total"]}
    assert not bad, bad
    photo_items = [i for ids in fs.photo_ids.values() for i in ids]
    expected = sorted(fs.vectors) + sorted(photo_items)
    assert sum(v["done"] for v in views.values()) == len(expected) == len(set(expected))

    # Counted once, stored once: the owners' item counts add up to the distinct ids.
    assert fs.call("GET", "/collections/faults").json()["count"] == len(expected)

    # Every item is found by id...
    statuses = fs.get_items(expected)
    lost_by_id = sorted(i for i, status in statuses.items() if status != 200)
    # ... and by its own vector: bulk items through the shard queues (owner or replica answers),
    # photos by their image through the API (the COPIES identical copies, each once, on top).
    top = fs.top_hits_by_vector(sorted(fs.vectors))
    lost_by_vector = sorted(i for i in fs.vectors if top.get(i) is None or top[i][0] != i or top[i][1] < 0.999)
    photos = {p.name: p for p in all_photos()}
    wrong_photos = {}
    duplicates = 0
    for name, ids in fs.photo_ids.items():
        body = fs.call("POST", "/collections/faults/search",
                       json={"image": {"base64": b64(photos[name].read_bytes())}, "k": COPIES + 2}).json()
        hit_ids = [h["id"] for h in body["hits"]]
        duplicates += len(hit_ids) - len(set(hit_ids))
        assert body["shards"] == {"total": SHARDS, "answered": SHARDS}
        if set(hit_ids[:COPIES]) != set(ids):
            wrong_photos[name] = hit_ids
    summary = {"items_ingested": len(expected), "bulk_items": len(fs.vectors), "photo_items": len(photo_items),
               "jobs": len(views), "kills": ingested.kills, "lost_by_id": len(lost_by_id),
               "lost_by_vector": len(lost_by_vector) + len(wrong_photos), "duplicates": duplicates,
               "seed": FAULT_SEED}
    print("fault summary:", json.dumps(summary))
    assert not lost_by_id, lost_by_id[:10]
    assert not lost_by_vector, [(i, top.get(i)) for i in lost_by_vector[:10]]
    assert not wrong_photos, wrong_photos
    assert duplicates == 0
    assert sum(ingested.kills.values()) == len(KILLS)


def _ids_of_slot(fs: FaultStack, slot: int) -> list[str]:
    every = sorted(fs.vectors) + [i for ids in fs.photo_ids.values() for i in ids]
    return [i for i in every if queues.slot_for_shard(shard_for(i, SHARDS), 2) == slot]


@pytest.mark.timeout(INGEST_SETUP_S + 300)
def test_a_corrupt_newest_snapshot_falls_back_to_the_previous_one_on_the_stack(faults, ingested):
    fs = faults
    slot = fs.slot_of("shard.1")
    owned = [s for s in range(SHARDS) if queues.slot_for_shard(s, 2) == slot]
    counts = {s: int(fs.r.hget(keys.shard_state(fs.coll.cid, s), "count")) for s in owned}
    # The owner and the slot's replica go down, so only the recovered owner can answer.
    replica = fs.holder("replica", slot)
    fs.kill("shard.1")
    fs.kill(replica)
    for s in owned:
        directory = fs.stack.settings.data_dir / "shards" / fs.coll.cid / str(s)
        assert (directory / PREVIOUS).exists()
        newest = directory / SNAPSHOT
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    fs.restart("shard.1")
    fs.wait_serving("shard.1", timeout_s=120)
    log_text = (fs.stack.log_dir / "shard.1.log").read_text()
    assert len(re.findall(r"refusing snapshot\.bin: .*checksum", log_text)) >= len(owned)
    assert len(re.findall(r"loaded snapshot\.prev\.bin", log_text)) >= len(owned)
    for s in owned:
        assert int(fs.r.hget(keys.shard_state(fs.coll.cid, s), "count")) == counts[s]
    ids = _ids_of_slot(fs, slot)
    statuses = fs.get_items(ids)
    assert all(status == 200 for status in statuses.values()), \
        [i for i, status in statuses.items() if status != 200][:10]
    fs.restart(replica)
    fs.stack.wait_ready(timeout_s=120)


@pytest.mark.timeout(INGEST_SETUP_S + 300)
def test_a_search_during_a_shard_outage_answers_in_time_with_the_shards_that_answered(faults, ingested):
    fs = faults
    slot = fs.slot_of("shard.2")
    owner, replica = "shard.2", fs.holder("replica", slot)
    readyz = f"{fs.stack.api_url}/readyz"
    assert requests.get(readyz, timeout=5).status_code == 200
    fs.kill(owner)
    fs.kill(replica)
    # At once: the slot's leases still live, its queue has nobody; the search waits the shard
    # deadline (3 s) and no longer.
    started = time.monotonic()
    body = fs.call("POST", "/collections/faults/search", json={"text": "a cat", "k": 5}).json()
    took = time.monotonic() - started
    assert body["shards"]["answered"] == SHARDS // 2 < body["shards"]["total"] == SHARDS
    assert "not searched" in body["shards"]["message"]
    assert took < fs.stack.settings.shard_timeout_s + 5, took
    deadline = time.monotonic() + 15
    while requests.get(readyz, timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "readyz never went 503"
        time.sleep(0.2)
    details = requests.get(readyz, timeout=5).json()["error"]["details"]
    assert details["missing_slots"] == [slot]
    # /readyz counts owners only: the replica, killed after the owner, may hold its lease a moment longer.
    while slots.live_slots(fs.r, [slot]):
        assert time.monotonic() < deadline, "the replica's lease never lapsed"
        time.sleep(0.2)
    started = time.monotonic()
    body = fs.call("POST", "/collections/faults/search", json={"text": "a cat", "k": 5}, retry_s=0).json()
    assert body["shards"]["answered"] == SHARDS // 2 and time.monotonic() - started < 3
    missing_id = _ids_of_slot(fs, slot)[0]
    assert fs.call("GET", f"/collections/faults/items/{missing_id}", retry_s=0).status_code == 503
    fs.restart(owner)
    fs.restart(replica)
    fs.stack.wait_ready(timeout_s=120)
    body = fs.call("POST", "/collections/faults/search", json={"text": "a cat", "k": 5}).json()
    assert body["shards"] == {"total": SHARDS, "answered": SHARDS}


@pytest.mark.timeout(STACK_SETUP_S + 120)
def test_read_your_writes_after_a_job(faults):
    fs = faults
    assert fs.call("POST", "/collections", json={"name": "ryw", "shards": SHARDS}).status_code == 201
    resp = fs.call("POST", "/collections/ryw/items",
                   json={"items": [{"id": "ryw-1", "text": "zebra crossing at midnight"}]})
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 60
    while (view := fs.job(job_id))["done"] + view["failed"] < view["total"]:  # encoded and logged
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # At once, without waiting for the job to go final: the shards (owner or replica) catch up first.
    body = fs.call("POST", f"/collections/ryw/search?after_job={job_id}",
                   json={"text": "zebra crossing at midnight", "k": 3}).json()
    assert body["consistency"] == {"after_job": job_id, "counted": True, "applied": True, "met": True}
    assert body["hits"][0]["id"] == "ryw-1"
    assert fs.call("POST", "/collections/ryw/search?after_job=0123456789abcdef",
                   json={"text": "x"}).status_code == 404
    assert fs.call("POST", "/collections", json={"name": "other"}).status_code == 201
    resp = fs.call("POST", f"/collections/other/search?after_job={job_id}", json={"text": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["details"]["field"] == "after_job"
    assert fs.call("DELETE", "/collections/other").status_code in (202, 204)
    assert fs.call("DELETE", "/collections/ryw").status_code in (202, 204)


@pytest.mark.timeout(INGEST_SETUP_S + 300)
def test_sigterm_stop_keeps_everything_for_the_next_start(faults, ingested):
    fs = faults
    # One more job (in a collection of its own), stopped right after it is final: the stop must
    # snapshot it.
    assert fs.call("POST", "/collections", json={"name": "sigterm", "shards": 2}).status_code == 201
    photo = all_photos()[0]
    resp = fs.call("POST", "/collections/sigterm/items",
                   json={"items": [{"id": "last-one", "image": {"base64": b64(photo.read_bytes())}}]})
    assert fs.wait_final([resp.json()["job_id"]], timeout_s=60)[resp.json()["job_id"]]["state"] == "succeeded"
    count = fs.call("GET", "/collections/faults").json()["count"]
    fs.stack.stop()
    assert all(p.poll() is not None for p in fs.stack.procs.values())
    assert not [n for n, p in fs.stack.procs.items() if p.returncode == -signal.SIGKILL], \
        {n: p.returncode for n, p in fs.stack.procs.items()}

    again = Stack(fs.env, log_dir=fs.stack.log_dir)
    fs.stack = again
    again.start()
    again.wait_ready(timeout_s=180)
    assert fs.call("GET", "/collections/faults").json()["count"] == count
    sample = random.Random(FAULT_SEED).sample(sorted(fs.vectors), 200)
    statuses = fs.get_items(sample)
    assert all(status == 200 for status in statuses.values())
    top = fs.top_hits_by_vector(sample)
    assert all(top[i] is not None and top[i][0] == i for i in sample)
    assert fs.call("GET", "/collections/sigterm").json()["count"] == 1
    assert fs.call("GET", "/collections/sigterm/items/last-one").status_code == 200
    hits = fs.call("POST", "/collections/sigterm/search",
                   json={"image": {"base64": b64(photo.read_bytes())}, "k": 1}).json()["hits"]
    assert [h["id"] for h in hits] == ["last-one"]
    assert fs.call("DELETE", "/collections/sigterm").status_code in (202, 204)
