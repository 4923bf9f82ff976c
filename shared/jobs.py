"""Job records in Redis: our own states and counters, not Celery task states.

An ingest or delete job counts each item once (per-item outcome hash, checked and updated in
one Lua script, so a redelivered task never double-counts). Its state is derived on read:
`queued` until a worker starts it, `running` until every item is counted *and* every shard it
wrote to has applied its entries (so a `succeeded` job's items are searchable), then final.
Search jobs (`?async=1`) are written by the query worker with their result.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from shared import keys
from shared.streamids import at_least

FINAL_STATES = ("succeeded", "completed_with_errors", "failed", "cancelled")

_RECORD_FAILURE = """
-- KEYS: job, items, errors ; ARGV: index, error_json, now
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], 'failed') == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'failed', 1)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


def now() -> float:
    return time.time()


def new_job_id() -> str:
    return uuid.uuid4().hex


def create_job(r: redis.Redis, kind: str, collection: str, cid: str, total: int,
               job_id: str | None = None) -> str:
    job_id = job_id or new_job_id()
    r.hset(keys.job(job_id), mapping={
        "kind": kind, "collection": collection, "cid": cid, "total": total,
        "done": 0, "failed": 0, "created_at": now(),
    })
    return job_id


def mark_started(r: redis.Redis, job_id: str) -> None:
    r.hsetnx(keys.job(job_id), "started_at", now())


def record_failure(r: redis.Redis, job_id: str, index: int, item_id: str, code: str, message: str) -> bool:
    """Count item `index` as failed (once). False when it was already counted."""
    error = json.dumps({"index": index, "id": item_id, "code": code, "message": message})
    result = r.eval(_RECORD_FAILURE, 3, keys.job(job_id), keys.job_items(job_id),
                    keys.job_errors(job_id), index, error, now())
    return result == 1


def counted(r: redis.Redis, job_id: str) -> set[int]:
    """Indexes of the items of a job that already have an outcome."""
    return {int(i) for i in r.hkeys(keys.job_items(job_id))}


def request_cancel(r: redis.Redis, job_id: str) -> bool:
    """Flag a job cancelled; workers skip (and count as failed) what has not run yet."""
    if not r.exists(keys.job(job_id)):
        return False
    r.hset(keys.job(job_id), "cancel_requested", 1)
    return True


def is_cancelled(r: redis.Redis, job_id: str) -> bool:
    return r.hget(keys.job(job_id), "cancel_requested") == b"1"


def set_search_result(r: redis.Redis, job_id: str, result: dict[str, Any] | None,
                      error: dict[str, Any] | None, ttl_s: int) -> None:
    """Finish a search job with its response body or an error."""
    t = now()
    fields: dict[str, Any] = {"finished_at": t, "done": 1 if result else 0, "failed": 0 if result else 1}
    fields["state"] = "succeeded" if result is not None else "failed"
    if result is not None:
        fields["result"] = json.dumps(result)
    if error is not None:
        r.rpush(keys.job_errors(job_id), json.dumps({"index": 0, "id": None, **error}))
    pipe = r.pipeline()
    pipe.hsetnx(keys.job(job_id), "started_at", t)
    pipe.hset(keys.job(job_id), mapping=fields)
    for key in keys.job_keys(job_id):
        pipe.expire(key, ttl_s)
    pipe.execute()


def _text(raw: dict[bytes, bytes], field: str) -> str | None:
    value = raw.get(field.encode())
    return value.decode() if value is not None else None


def _number(raw: dict[bytes, bytes], field: str) -> float | None:
    value = raw.get(field.encode())
    return float(value) if value is not None else None


def _final_state(done: int, failed: int, cancelled: bool) -> str:
    """`cancelled` only when the cancel request actually skipped items."""
    if cancelled:
        return "cancelled"
    if failed == 0:
        return "succeeded"
    return "failed" if done == 0 else "completed_with_errors"


def _applied(r: redis.Redis, cid: str, job_id: str) -> bool:
    marks = r.hgetall(keys.job_marks(job_id))
    if not marks:
        return True
    pipe = r.pipeline()
    shards = [int(s) for s in marks]
    for shard in shards:
        pipe.hget(keys.shard_state(cid, shard), "applied")
    applied = pipe.execute()
    return all(at_least(a, marks[str(s).encode()]) for s, a in zip(shards, applied))


def job_view(r: redis.Redis, job_id: str, ttl_s: int) -> dict[str, Any] | None:
    """The API.md job body, or None for an unknown (or expired) job."""
    raw = r.hgetall(keys.job(job_id))
    if not raw:
        return None
    total, done, failed = (int(_number(raw, f) or 0) for f in ("total", "done", "failed"))
    state = _text(raw, "state")
    if state not in FINAL_STATES:
        if done + failed < total:
            state = "running" if raw.get(b"started_at") else "queued"
        elif not _applied(r, _text(raw, "cid") or "", job_id):
            state = "running"
        else:
            skipped = raw.get(b"cancel_requested") == b"1" and any(
                json.loads(e).get("code") == "cancelled" for e in r.lrange(keys.job_errors(job_id), 0, -1))
            state = _final_state(done, failed, skipped)
            pipe = r.pipeline()
            pipe.hsetnx(keys.job(job_id), "started_at", now())
            pipe.hset(keys.job(job_id), mapping={"state": state, "finished_at": now()})
            for key in keys.job_keys(job_id):
                pipe.expire(key, ttl_s)
            pipe.execute()
            raw = r.hgetall(keys.job(job_id))
    errors = [json.loads(e) for e in r.lrange(keys.job_errors(job_id), 0, 999)]
    result = _text(raw, "result")
    return {
        "id": job_id,
        "kind": _text(raw, "kind"),
        "collection": _text(raw, "collection"),
        "state": state,
        "total": total,
        "done": done,
        "failed": failed,
        "errors": errors,
        "created_at": _number(raw, "created_at"),
        "started_at": _number(raw, "started_at"),
        "finished_at": _number(raw, "finished_at"),
        "cancel_requested": raw.get(b"cancel_requested") == b"1",
        "result": json.loads(result) if result else None,
    }
