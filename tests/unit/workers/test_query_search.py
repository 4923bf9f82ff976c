"""The search path in one process, on a real Redis: slot requests (searches and item look-ups)
answered by in-process shard owners (workers.shard's request threads on the real request
lists), the query worker's fan-out, gather, merge and result cache (workers.query,
workers.fanout, workers.search_cache). The query encoder is replaced by one that returns a given
query.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest

from shared.store import catalog, jobs, keys, queues, replies, shardlog
from shared.runtime.config import Settings
from shared.encoding.fusion import FusedQuery, build_query
from shared.index.labels import shard_for
from shared.store.serializers import vector_to_b64
from shared.store.shardlog import LogEntry
from workers import query as query_worker
from workers import search_cache, search_reads
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


class SlotServers:
    """The shard workers' request threads (`serve_slot_requests`), one per slot owner, on the real
    Redis lists; `sent` records each search a slot took: (slot, search_slot's arguments)."""

    def __init__(self, owners: dict[int, ShardOwner], monkeypatch) -> None:
        self.sent: list[tuple[int, dict[str, Any]]] = []
        self.stops: dict[int, threading.Event] = {}
        self.threads: dict[int, threading.Thread] = {}
        search_slot = shard_worker.search_slot

        def recorded(own: ShardOwner, **request: Any) -> dict[str, Any]:
            self.sent.append((own.slot, request))
            return search_slot(own, **request)

        monkeypatch.setattr(shard_worker, "search_slot", recorded)
        monkeypatch.setattr(shard_worker, "POP_TIMEOUT_S", 0.1)  # stopped threads end sooner
        for slot, owner in owners.items():
            self.stops[slot] = threading.Event()
            self.threads[slot] = threading.Thread(target=shard_worker.serve_slot_requests,
                                                  args=(owner, self.stops[slot]), daemon=True)
            self.threads[slot].start()

    def stop(self, slot: int) -> None:
        self.stops[slot].set()
        self.threads[slot].join()

    def stop_all(self) -> None:
        for slot in list(self.threads):
            self.stop(slot)


class Setup:
    def __init__(self, r, settings: Settings, coll: catalog.Collection, monkeypatch) -> None:
        self.r, self.settings, self.coll = r, settings, coll
        self.dim = coll.dims["image"] + coll.dims["text"]
        self.owners = {slot: ShardOwner(slot, settings, r) for slot in range(SLOTS)}
        self.fused = build_query(unit(coll.dims["image"]), unit(coll.dims["text"]), coll.dims["image"],
                                 coll.dims["text"])
        self.query_vector = self.fused.vector
        self.vectors: dict[str, np.ndarray] = {}
        monkeypatch.setattr(query_worker, "_cache", search_cache.ResultCache())
        monkeypatch.setattr(search_reads, "_collections", {})
        import shared.encoding.encoders

        monkeypatch.setattr(shared.encoding.encoders, "collection_encoder", lambda *models: self)
        for slot in range(SLOTS):
            r.set(keys.slot_owner(slot), "test-owner", ex=600)

    def query(self, rgb: Any, text: str | None, weights: dict[str, float] | None) -> FusedQuery:
        """The encoder's query: the test's query whatever the text."""
        return self.fused

    def ask(self, slot: int, request: dict[str, Any], expires_in_s: float = 30) -> Any:
        """The answer of slot `slot`'s server to `request` (on the slot's real request list)."""
        reply_to = keys.search_replies("t-" + jobs.new_job_id())
        replies.send(self.r, {keys.slot_searches(slot): request}, reply_to, expires=time.time() + expires_in_s)
        answer = replies.wait_one(self.r, reply_to, 10)
        assert not self.r.exists(reply_to)  # popped: nothing left behind
        return answer

    def slot_search(self, slot: int, shards: list[int], k: int) -> dict[str, Any]:
        return self.ask(slot, {"op": queues.SLOT_SEARCH, "cid": self.coll.cid, "shards": shards,
                               "query": self.message(), "k": k, "filter": None, "wait_until": None,
                               "min_positions": {}})

    def message(self) -> dict[str, Any]:
        """The query as a query worker sends it to the shards."""
        return {"image_dim": self.coll.dims["image"], "text_dim": self.coll.dims["text"],
                "image": vector_to_b64(self.fused.image), "text": vector_to_b64(self.fused.text),
                "weights": self.fused.weights}

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
    coll = catalog.create_collection(redis_client, settings, "photos", shards=SHARDS)
    s = Setup(redis_client, settings, coll, monkeypatch)
    s.write([("upsert", f"item-{i}", 0.1 + 0.02 * i) for i in range(30)])
    s.apply()
    s.servers = SlotServers(s.owners, monkeypatch)
    yield s
    s.servers.stop_all()


def hit_ids(body: dict[str, Any]) -> list[str]:
    return [h["id"] for h in body["hits"]]


# -- the shard worker ---------------------------------------------------------------------------

def test_a_slot_request_searches_each_of_its_shards_and_answers_once(setup):
    owner = setup.owners[0]
    answer = setup.slot_search(0, [0, 2], 3)
    assert [a["shard"] for a in answer["answers"]] == [0, 2]
    for a in answer["answers"]:
        state = owner.shards[(setup.coll.cid, a["shard"])]
        assert a["position"] == state.position
        expected = [h.id for h in state.index.search(setup.query_vector, 3)]
        assert [h["id"] for h in a["hits"]] == expected
        for hit in a["hits"]:  # each score explained by block, as from the stored (float16) vector
            assert hit["scores"] == pytest.approx(setup.fused.score_parts(setup.vectors[hit["id"]]), abs=2e-4)
        assert all(shard_for(i, SHARDS) == a["shard"] for i in expected)
    # The histogram got one observation per shard, in the same write.
    from shared.runtime import metrics
    observed = metrics.SHARD_SEARCH_HISTOGRAM.read(setup.r)
    assert {labels[1:] for labels in observed} == {("0", "owner"), ("2", "owner")}


def test_a_shard_that_cannot_be_served_is_reported_beside_the_others(setup):
    owner = setup.owners[0]
    owner.refused[(setup.coll.cid, 2)] = ("the log was trimmed", 0.0)
    owner.shards.pop((setup.coll.cid, 2))
    answer = setup.slot_search(0, [0, 2], 3)
    by_shard = {a["shard"]: a for a in answer["answers"]}
    assert by_shard[2]["error"] == "the log was trimmed" and "position" not in by_shard[2]
    assert len(by_shard[0]["hits"]) == 3


def test_an_item_look_up_is_answered_by_the_slot_holding_its_shard(setup, monkeypatch):
    shard = shard_for("item-7", SHARDS)
    slot = shard % SLOTS

    def look_up(item_id: str) -> Any:
        return setup.ask(slot, {"op": queues.SLOT_ITEM, "cid": setup.coll.cid, "shard": shard,
                                "item_id": item_id, "thumbnail": True})

    assert look_up("item-7") == {"item": {"id": "item-7", "text": "text of item-7", "metadata": {"n": 7},
                                          "has_image": False, "shard": shard, "thumbnail_b64": None}}
    assert look_up("never-ingested") == {"item": None}

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(shard_worker, "look_up", broken)
    assert look_up("item-7") == {"error": "look-up failed"}


def test_a_request_past_its_deadline_is_dropped_and_the_next_one_answered(setup):
    late, fresh = keys.search_replies("late"), keys.search_replies("fresh")
    search = {"op": queues.SLOT_SEARCH, "cid": setup.coll.cid, "shards": [0, 2], "query": setup.message(),
              "k": 3, "filter": None, "wait_until": None, "min_positions": {}}
    replies.send(setup.r, {keys.slot_searches(0): search}, late, expires=time.time() - 1)
    replies.send(setup.r, {keys.slot_searches(0): search}, fresh, expires=time.time() + 30)
    answer = replies.wait_one(setup.r, fresh, 10)  # the requests are taken in the order pushed
    assert answer is not None and len(answer["answers"]) == 2
    assert setup.r.llen(late) == 0 and [kw["reply_to"] for _, kw in setup.servers.sent] == [fresh]


# -- the query worker ---------------------------------------------------------------------------

def test_one_message_per_slot_carries_the_slots_shards(setup):
    body = setup.search(k=5)
    assert sorted((slot, kw["shards"]) for slot, kw in setup.servers.sent) == [(0, [0, 2]), (1, [1, 3])]
    assert body["shards"] == {"total": SHARDS, "answered": SHARDS} and body["cached"] is False
    best = sorted(setup.vectors, key=lambda i: -float(setup.vectors[i] @ setup.query_vector))[:5]
    assert hit_ids(body) == best
    assert not list(setup.r.scan_iter(keys.search_replies("*")))  # every answer popped, nothing left


def test_an_identical_search_is_served_from_the_cache_until_the_collection_changes(setup):
    first = setup.search(k=5)
    sent = len(setup.servers.sent)
    again = setup.search(k=5)
    assert again["cached"] is True and len(setup.servers.sent) == sent  # no shard was asked
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


def test_pages_of_one_ranking_neither_overlap_nor_leave_a_hit_out(setup):
    def page(k: int, offset: int = 0) -> dict[str, Any]:  # the task as Celery runs it
        return query_worker.search(setup.coll.name, setup.coll.cid, "a query", None, k, None, None, offset=offset)

    whole = hit_ids(page(30))
    pages = [page(7, offset) for offset in range(0, 35, 7)]
    assert [p["offset"] for p in pages] == [0, 7, 14, 21, 28] and {p["k"] for p in pages} == {7}
    assert [i for p in pages for i in hit_ids(p)] == whole and len(hit_ids(pages[-1])) == 2
    assert setup.servers.sent[-1][1]["k"] == 35  # the shards were asked offset + k deep
    assert page(7, 7)["cached"] is True and hit_ids(page(7, 7)) == hit_ids(pages[1])


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
    assert [slot for slot, _ in setup.servers.sent[-1:]] == [0]


def test_a_slot_that_does_not_answer_in_time_is_reported(setup):
    setup.servers.stop(1)  # the requests of slot 1 are taken by nobody, its lease still held
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
    marks = [kw["min_positions"] for _, kw in setup.servers.sent[-2:]]
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


def test_synchronous_search_requests_are_answered_on_their_reply_lists_and_late_ones_dropped(setup):
    stop = threading.Event()
    threads = query_worker.start_request_threads(2, stop)

    def ask(search_id: str, expires_in: float, **kw: Any) -> None:
        body = {"collection": setup.coll.name, "cid": setup.coll.cid, "text": "a query", "image": None, "k": 5,
                "weights": None, "filter": None, "job_id": None, "search_id": search_id, **kw}
        replies.send(setup.r, {keys.SEARCH_REQUESTS: body}, keys.search_answer(search_id), time.time() + expires_in)

    try:
        ask("late", -1.0)
        ask("other", 5.0, cid="no-such-cid")
        ask("paged", 5.0, offset=2)
        assert replies.wait_one(setup.r, keys.search_answer("other"), 5)["error"]["code"] == "not_found"
        paged = replies.wait_one(setup.r, keys.search_answer("paged"), 5)
        assert paged["offset"] == 2 and hit_ids(paged) == hit_ids(setup.search(k=7))[2:]
        assert replies.wait_one(setup.r, keys.search_answer("late"), 0.5) is None  # past its deadline: dropped
        assert setup.r.llen(keys.SEARCH_REQUESTS) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join()


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
