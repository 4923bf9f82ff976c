"""The search path in one process, on a real Redis: slot messages answered by in-process shard
owners (workers.shard), the query worker's fan-out, gather, merge and result cache
(workers.query, workers.search_cache). The Celery broker is replaced by a sender that runs each
slot message in the slot's owner at once; the query encoder by one that returns a given vector.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import pytest

from shared import catalog, jobs, keys, queues, shardlog
from shared.config import Settings
from shared.fusion import FusedQuery
from shared.labels import shard_for
from shared.serializers import vector_to_b64
from shared.shardlog import LogEntry
from workers import query as query_worker
from workers import search_cache
from workers import shard as shard_worker
from workers.shard_owner import ShardOwner

SHARDS, SLOTS = 4, 2
rng = np.random.default_rng(5)


def unit(dim: int) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def drain(owner: ShardOwner) -> None:
    owner.refresh()
    while owner.step(block_ms=None):
        pass


class SlotSender:
    """Stands in for the Celery app of the query worker: each shard_search message is run at once
    by the owner of the queue's slot (its answer lands in the reply list like a worker's)."""

    def __init__(self, owners: dict[int, ShardOwner]) -> None:
        self.owners = owners
        self.sent: list[tuple[str, dict[str, Any]]] = []

    @contextmanager
    def producer_or_acquire(self) -> Iterator[None]:
        yield None

    def send_task(self, name: str, queue: str, kwargs: dict[str, Any], **options: Any) -> None:
        assert name == queues.SHARD_SEARCH
        self.sent.append((queue, kwargs))
        slot = int(queue.split(".")[1])
        if slot in self.owners:
            shard_worker._owner = self.owners[slot]
            shard_worker.shard_search(**json.loads(json.dumps(kwargs)))  # as it travels: JSON


class Setup:
    def __init__(self, r, settings: Settings, coll: catalog.Collection, monkeypatch) -> None:
        self.r, self.settings, self.coll = r, settings, coll
        self.dim = coll.dims["image"] + coll.dims["text"]
        self.owners = {slot: ShardOwner(slot, settings, r) for slot in range(SLOTS)}
        self.sender = SlotSender(self.owners)
        self.query_vector = unit(self.dim)
        self.vectors: dict[str, np.ndarray] = {}
        monkeypatch.setattr(query_worker, "app", self.sender)
        monkeypatch.setattr(query_worker, "_cache", search_cache.ResultCache())
        monkeypatch.setattr(query_worker, "_collections", {})
        import shared.encoding

        monkeypatch.setattr(shared.encoding, "collection_encoder", lambda *models: self)
        for slot in range(SLOTS):
            r.set(keys.slot_owner(slot), "test-owner", ex=600)

    def query(self, rgb: Any, text: str | None, weights: dict[str, float] | None) -> FusedQuery:
        """The encoder's query: the test's query vector whatever the text."""
        return FusedQuery(vector=self.query_vector, image_dim=self.coll.dims["image"], image=None, text=None,
                          weights={"text": 1.0})

    def write(self, ops: list[tuple[str, str, float | None]]) -> str:
        """Log ("upsert", id, similarity to the query) / ("delete", id, None) entries; the job id."""
        job = jobs.create_job(self.r, "ingest", self.coll.name, self.coll.cid, len(ops), ids=[i for _, i, _ in ops])
        for index, (op, item_id, similarity) in enumerate(ops):
            if op == "upsert":
                noise = unit(self.dim)
                noise -= noise.dot(self.query_vector) * self.query_vector
                noise /= np.linalg.norm(noise)
                vector = similarity * self.query_vector + np.sqrt(1 - similarity ** 2) * noise
                self.vectors[item_id] = vector.astype(np.float32)
                entry = LogEntry("upsert", item_id, self.vectors[item_id], f"text of {item_id}", {"n": index})
            else:
                entry = LogEntry("delete", item_id)
            assert shardlog.log_item(self.r, self.coll.cid, shard_for(item_id, SHARDS), job, index,
                                     entry) == shardlog.LOGGED
        return job

    def apply(self) -> None:
        for owner in self.owners.values():
            drain(owner)

    def search(self, k: int = 5, **kw: Any) -> dict[str, Any]:
        return query_worker._search("s-" + jobs.new_job_id(), self.coll.name, self.coll.cid, "a query", None, k,
                                    None, kw.pop("filter", None), kw.pop("after_job", None))


@pytest.fixture
def setup(redis_client, tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, shard_slots=SLOTS, snapshot_every=10_000, shard_timeout_s=1.0)
    monkeypatch.setattr(query_worker, "redis_client", lambda: redis_client)
    monkeypatch.setattr(query_worker, "settings", lambda: settings)
    monkeypatch.setattr(shard_worker, "redis_client", lambda: redis_client)
    monkeypatch.setattr(shard_worker, "_owner", None)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=SHARDS)
    s = Setup(redis_client, settings, coll, monkeypatch)
    s.write([("upsert", f"item-{i}", 0.1 + 0.02 * i) for i in range(30)])
    s.apply()
    return s


def hit_ids(body: dict[str, Any]) -> list[str]:
    return [h["id"] for h in body["hits"]]


# -- the shard worker ---------------------------------------------------------------------------

def test_a_slot_message_searches_each_of_its_shards_and_answers_once(setup):
    owner = setup.owners[0]
    shard_worker._owner = owner
    message = {"vector": vector_to_b64(setup.query_vector), "image_dim": setup.coll.dims["image"],
               "image": None, "text": None, "weights": {}}
    reply = keys.search_replies("slot-test")
    answer = shard_worker.shard_search(setup.coll.cid, None, message, 3, shards=[0, 2], reply_to=reply)
    assert setup.r.llen(reply) == 1 and json.loads(setup.r.lpop(reply)) == answer
    assert [a["shard"] for a in answer["answers"]] == [0, 2]
    for a in answer["answers"]:
        state = owner.shards[(setup.coll.cid, a["shard"])]
        assert a["position"] == state.position
        expected = [h.id for h in state.index.search(setup.query_vector, 3)]
        assert [h["id"] for h in a["hits"]] == expected
        assert all(shard_for(i, SHARDS) == a["shard"] for i in expected)
    # The histogram got one observation per shard, in the same write.
    from shared import metrics
    observed = metrics.SHARD_SEARCH_HISTOGRAM.read(setup.r)
    assert {labels[1] for labels in observed} == {"0", "2"}


def test_the_single_shard_message_of_earlier_versions_is_still_answered(setup):
    shard_worker._owner = setup.owners[1]
    message = {"vector": vector_to_b64(setup.query_vector), "image_dim": setup.coll.dims["image"],
               "image": None, "text": None, "weights": {}}
    reply = keys.search_replies("legacy")
    body = shard_worker.shard_search(setup.coll.cid, 3, message, 2, reply_to=reply)
    assert body["shard"] == 3 and len(body["hits"]) == 2
    assert json.loads(setup.r.lpop(reply)) == body


def test_a_shard_that_cannot_be_served_is_reported_beside_the_others(setup):
    owner = setup.owners[0]
    shard_worker._owner = owner
    owner.refused[(setup.coll.cid, 2)] = ("the log was trimmed", 0.0)
    owner.shards.pop((setup.coll.cid, 2))
    message = {"vector": vector_to_b64(setup.query_vector), "image_dim": setup.coll.dims["image"],
               "image": None, "text": None, "weights": {}}
    answer = shard_worker.shard_search(setup.coll.cid, None, message, 3, shards=[0, 2])
    by_shard = {a["shard"]: a for a in answer["answers"]}
    assert by_shard[2]["error"] == "the log was trimmed" and "position" not in by_shard[2]
    assert len(by_shard[0]["hits"]) == 3


# -- the query worker ---------------------------------------------------------------------------

def test_one_message_per_slot_carries_the_slots_shards(setup):
    body = setup.search(k=5)
    assert [(q, kw["shards"], kw["shard"]) for q, kw in setup.sender.sent] == [("shard.0", [0, 2], None),
                                                                               ("shard.1", [1, 3], None)]
    assert body["shards"] == {"total": SHARDS, "answered": SHARDS} and body["cached"] is False
    best = sorted(setup.vectors, key=lambda i: -float(setup.vectors[i] @ setup.query_vector))[:5]
    assert hit_ids(body) == best
    assert not list(setup.r.scan_iter(keys.search_replies("*")))  # every answer popped, nothing left


def test_an_identical_search_is_served_from_the_cache_until_the_collection_changes(setup):
    first = setup.search(k=5)
    sent = len(setup.sender.sent)
    again = setup.search(k=5)
    assert again["cached"] is True and len(setup.sender.sent) == sent  # no shard was asked
    assert again["hits"] == first["hits"] and again["shards"] == first["shards"]
    assert setup.search(k=4)["cached"] is False  # another k is another query
    assert setup.search(k=5, filter={"n": 3})["cached"] is False

    # An upsert that becomes the best hit: the next search sees it.
    setup.write([("upsert", "newcomer", 0.99)])
    setup.apply()
    after_upsert = setup.search(k=5)
    assert after_upsert["cached"] is False and hit_ids(after_upsert)[0] == "newcomer"
    assert setup.search(k=5)["cached"] is True

    # A delete: gone from the next answer.
    setup.write([("delete", "newcomer", None)])
    setup.apply()
    after_delete = setup.search(k=5)
    assert after_delete["cached"] is False and "newcomer" not in hit_ids(after_delete)
    assert hit_ids(after_delete) == hit_ids(first)


def test_an_answer_from_shards_behind_their_logs_is_not_kept(setup):
    setup.search(k=5)
    setup.write([("upsert", "late", 0.99)])  # logged, not applied yet
    behind = setup.search(k=5)
    assert "late" not in hit_ids(behind) and behind["cached"] is False
    assert setup.search(k=5)["cached"] is False  # the answer from behind was not stored
    setup.apply()
    caught_up = setup.search(k=5)
    assert hit_ids(caught_up)[0] == "late" and caught_up["cached"] is False
    assert setup.search(k=5)["cached"] is True


def test_a_slot_without_a_live_owner_gives_a_partial_answer_that_is_not_kept(setup):
    setup.search(k=5)
    assert setup.search(k=5)["cached"] is True
    setup.r.delete(keys.slot_owner(1))
    partial = setup.search(k=5)  # the cached full answer is not served while a slot is down
    assert partial["cached"] is False
    assert partial["shards"]["answered"] == 2 and "2 had no live owner or replica" in partial["shards"]["message"]
    assert all(shard_for(i, SHARDS) % SLOTS == 0 for i in hit_ids(partial))
    assert [q for q, _ in setup.sender.sent[-1:]] == ["shard.0"]


def test_a_slot_that_does_not_answer_in_time_is_reported(setup):
    del setup.sender.owners[1]  # the queue of slot 1 is consumed by nobody, its lease still held
    body = setup.search(k=5)
    assert body["shards"]["answered"] == 2
    assert "2 did not answer within 1 s" in body["shards"]["message"]
    assert setup.search(k=5)["cached"] is False


def test_read_your_writes_searches_neither_use_nor_fill_the_cache(setup):
    setup.search(k=5)
    job = setup.write([("upsert", "mine", 0.99)])
    setup.apply()
    for _ in range(2):
        body = setup.search(k=5, after_job=job)
        assert body["cached"] is False and hit_ids(body)[0] == "mine"
        assert body["consistency"] == {"after_job": job, "counted": True, "applied": True, "met": True}
    marks = [kw["min_positions"] for _, kw in setup.sender.sent[-2:]]
    mark_shard = str(shard_for("mine", SHARDS))
    assert sum(mark_shard in m for m in marks) == 1 and all(len(m) <= 1 for m in marks)
    assert setup.search(k=5, after_job="0123456789abcdef")["error"]["code"] == "not_found"


def test_the_answer_goes_to_the_callers_list_and_a_failure_answers_too(setup, monkeypatch):
    reply_to = keys.search_answer("sync-1")
    body = query_worker.search(setup.coll.name, setup.coll.cid, "a query", None, 3, None, None, reply_to=reply_to)
    assert json.loads(setup.r.lpop(reply_to)) == body and len(body["hits"]) == 3
    assert setup.r.ttl(reply_to) == -2  # popped: nothing left behind

    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(query_worker, "_search", broken)
    with pytest.raises(RuntimeError):
        query_worker.search(setup.coll.name, setup.coll.cid, "a query", None, 3, None, None, reply_to=reply_to)
    assert json.loads(setup.r.lpop(reply_to)) == {"error": {"code": "internal", "message": "search failed"}}


def test_a_deleted_collection_is_not_searched(setup):
    setup.search(k=5)
    catalog.delete_collection(setup.r, setup.coll.name)
    assert setup.search(k=5)["error"]["code"] == "not_found"


# -- the cache itself ---------------------------------------------------------------------------

def test_the_cache_drops_least_recently_used_entries_and_stale_ones():
    cache = search_cache.ResultCache(max_entries=2, max_bytes=10_000)
    cache.put(b"a", ("1-0",), {"hits": ["a"]})
    cache.put(b"b", ("1-0",), {"hits": ["b"]})
    assert cache.get(b"a", ("1-0",)) == {"hits": ["a"]}  # a is now the most recent
    cache.put(b"c", ("1-0",), {"hits": ["c"]})
    assert cache.get(b"b", ("1-0",)) is None and cache.get(b"c", ("1-0",)) == {"hits": ["c"]}
    assert cache.get(b"a", ("2-0",)) is None and len(cache) == 1  # the logs moved on: dropped
    small = search_cache.ResultCache(max_entries=100, max_bytes=60)
    for key in (b"x", b"y", b"z"):
        small.put(key, ("1-0",), {"hits": ["0123456789"]})
    assert len(small) == 2 and small.get(b"x", ("1-0",)) is None


def test_log_ends_are_the_last_entry_ids(redis_client):
    pipe = redis_client.pipeline(transaction=False)
    search_cache.queue_log_ends(pipe, "c1", 2)
    assert search_cache.log_ends(pipe.execute()[0]) == ("", "")
    first = redis_client.xadd(keys.shard_log("c1", 1), {"op": "x"}).decode()
    second = redis_client.xadd(keys.shard_log("c1", 1), {"op": "y"}).decode()
    redis_client.xtrim(keys.shard_log("c1", 1), minid=second)
    pipe = redis_client.pipeline(transaction=False)
    search_cache.queue_log_ends(pipe, "c1", 2)
    assert search_cache.log_ends(pipe.execute()[0]) == ("", second) and first != second
    key = search_cache.entry_key("c1", {"vector": "AAAA"}, 10, None)
    assert key == search_cache.entry_key("c1", {"vector": "AAAA"}, 10, {})
    assert key != search_cache.entry_key("c1", {"vector": "AAAB"}, 10, None)
