"""Job records: per-item dedupe, derived states, visibility of logged items, cancel."""
import numpy as np

from shared.store import jobs, keys, shardlog
from shared.store.shardlog import LogEntry


def _entry(item_id):
    return LogEntry("upsert", item_id, np.ones(4, np.float32) / 2, "t", {}, False)


def test_items_count_once_and_the_job_waits_for_the_shards(redis_client):
    r = redis_client
    r.sadd(keys.LIVE_CIDS, "c1")
    job = jobs.create_job(r, "ingest", "photos", "c1", 3)
    assert jobs.job_view(r, job, 60)["state"] == "queued"
    assert shardlog.log_item(r, "c1", 0, job, 0, _entry("a")) == shardlog.LOGGED
    assert shardlog.log_item(r, "c1", 0, job, 0, _entry("a")) == shardlog.ALREADY_COUNTED  # redelivered
    assert jobs.record_failure(r, job, 1, "b", "invalid_item", "bad bytes")
    assert not jobs.record_failure(r, job, 1, "b", "invalid_item", "bad bytes")
    assert shardlog.log_item(r, "c1", 1, job, 2, _entry("c")) == shardlog.LOGGED
    assert r.xlen(keys.shard_log("c1", 0)) == 1 and r.xlen(keys.shard_log("c1", 1)) == 1
    view = jobs.job_view(r, job, 60)
    assert (view["done"], view["failed"], view["total"]) == (2, 1, 3)
    assert view["state"] == "running"  # counted, but no shard has applied its entries yet
    for shard in (0, 1):
        last = r.xrevrange(keys.shard_log("c1", shard), count=1)[0][0]
        r.hset(keys.shard_state("c1", shard), "applied", last)
    view = jobs.job_view(r, job, 60)
    assert view["state"] == "completed_with_errors" and view["finished_at"] is not None
    assert view["errors"] == [{"index": 1, "id": "b", "code": "invalid_item", "message": "bad bytes"}]
    assert 0 < r.ttl(keys.job(job)) <= 60


def test_nothing_is_logged_for_a_deleted_collection(redis_client):
    r = redis_client
    job = jobs.create_job(r, "ingest", "gone", "c2", 1)
    assert shardlog.log_item(r, "c2", 0, job, 0, _entry("a")) == shardlog.COLLECTION_GONE
    assert r.xlen(keys.shard_log("c2", 0)) == 0


def test_cancel_counts_only_when_it_skipped_items(redis_client):
    r = redis_client
    r.sadd(keys.LIVE_CIDS, "c3")
    finished = jobs.create_job(r, "ingest", "p", "c3", 1)
    shardlog.log_item(r, "c3", 0, finished, 0, _entry("a"))
    r.hset(keys.shard_state("c3", 0), "applied", r.xrevrange(keys.shard_log("c3", 0), count=1)[0][0])
    assert jobs.request_cancel(r, finished)
    assert jobs.job_view(r, finished, 60)["state"] == "succeeded"
    skipped = jobs.create_job(r, "ingest", "p", "c3", 2)
    assert jobs.request_cancel(r, skipped) and jobs.is_cancelled(r, skipped)
    for index in (0, 1):
        jobs.record_failure(r, skipped, index, f"i{index}", "cancelled", "cancelled before it ran")
    assert jobs.job_view(r, skipped, 60)["state"] == "cancelled"
    assert not jobs.request_cancel(r, "unknown")
    assert jobs.job_view(r, "unknown", 60) is None
