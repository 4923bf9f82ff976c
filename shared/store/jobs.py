"""Job records in Redis: our own states and counters, not Celery task states.

An ingest or delete job counts each item once (per-item outcome hash, checked and updated in
one Lua script, so a redelivered task never double-counts). Its state is derived on read:
`queued` until a worker starts it, `running` until every item is counted *and* every shard it
wrote to has applied its entries, on its owner and on every live read replica (so a
`succeeded` job's items are searchable whichever process answers), then final.
Search jobs (`?async=1`) and export jobs are finished by the query worker with their result.

Every job is also in `mms:jobs:active` until it is seen final, and records `updated_at` at each
counted item, so the stuck-job reaper (workers.reaper) can find jobs that stopped moving and
send their uncounted items again (an API ingest keeps their encode messages) or fail them with
a reason (`fail_uncounted`) instead of leaving them `running`.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from shared.store import keys
from shared.store.streamids import at_least

FINAL_STATES = ("succeeded", "completed_with_errors", "failed", "cancelled")

_RECORD_FAILURE = """
-- KEYS: job, items, errors ; ARGV: index, error_json, now
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], 'failed') == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'failed', 1)
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""


def now() -> float:
    return time.time()


def new_job_id() -> str:
    return uuid.uuid4().hex


def create_job(r: redis.Redis, kind: str, collection: str, cid: str, total: int,
               job_id: str | None = None, ids: list[str] | None = None,
               messages: list[dict[str, Any]] | None = None) -> str:
    """A new job record; `ids` (item ids in index order) lets a reaped item be named, and
    `messages` (an API ingest's encode message of each item) lets the reaper send an item whose
    task was lost again (shared.store.encode_tasks). Written in one transaction."""
    job_id = job_id or new_job_id()
    created = now()
    pipe = r.pipeline()
    pipe.hset(keys.job(job_id), mapping={
        "kind": kind, "collection": collection, "cid": cid, "total": total,
        "done": 0, "failed": 0, "created_at": created,
    })
    if ids:
        pipe.rpush(keys.job_ids(job_id), *ids)
    if messages:
        pipe.hset(keys.job_messages(job_id), mapping={m["index"]: json.dumps(m) for m in messages})
    pipe.zadd(keys.ACTIVE_JOBS, {job_id: created})
    pipe.zadd(keys.JOBS_BY_TIME, {job_id: created})
    pipe.execute()
    return job_id


def mark_started(r: redis.Redis, job_id: str) -> None:
    """A worker started on the job's items: the first start time, and progress for the reaper."""
    t = now()
    pipe = r.pipeline()
    pipe.hsetnx(keys.job(job_id), "started_at", t)
    pipe.hset(keys.job(job_id), "updated_at", t)
    pipe.execute()


def last_progress(r: redis.Redis, job_id: str) -> float | None:
    """When the job last moved (created, started, an item counted); None for an unknown job."""
    values = r.hmget(keys.job(job_id), "created_at", "started_at", "updated_at", "finished_at")
    if values[0] is None:
        return None
    return max(float(v) for v in values if v is not None)


def item_ids(r: redis.Redis, job_id: str) -> list[str | None]:
    """The item ids the job was created with (empty when it was created without them)."""
    return [i.decode() for i in r.lrange(keys.job_ids(job_id), 0, -1)]


def uncounted(r: redis.Redis, job_id: str) -> list[int]:
    """Indexes of the job's items that have no outcome yet (none for an unknown job)."""
    total = r.hget(keys.job(job_id), "total")
    if total is None:
        return []
    already = counted(r, job_id)
    return [i for i in range(int(total)) if i not in already]


def fail_uncounted(r: redis.Redis, job_id: str, code: str, message: str,
                   indexes: list[int] | None = None) -> int:
    """Count the items `indexes` (by default every item of the job that has no outcome yet) as
    failed with `code`, those still without one; how many."""
    missing = uncounted(r, job_id) if indexes is None else indexes
    if not missing:
        return 0
    ids = item_ids(r, job_id)
    failed = 0
    for index in missing:
        item_id = ids[index] if index < len(ids) else None
        failed += record_failure(r, job_id, index, item_id, code, message)
    return failed


def record_failure(r: redis.Redis, job_id: str, index: int, item_id: str | None, code: str, message: str) -> bool:
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
    """Finish a one-result job (an async search, an export) with its result or an error."""
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
    pipe.zrem(keys.ACTIVE_JOBS, job_id)
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
    if not r.sismember(keys.LIVE_CIDS, cid):
        return True  # the collection was deleted: no shard will apply anything, nothing to wait for
    pipe = r.pipeline()
    shards = [int(s) for s in marks]
    for shard in shards:
        pipe.hgetall(keys.shard_state(cid, shard))
    states = pipe.execute()
    replicas: list[tuple[str, bytes, bytes]] = []  # (lease key, position, mark) of replica positions
    for shard, state in zip(shards, states):
        mark = marks[str(shard).encode()]
        if not at_least(state.get(b"applied"), mark):
            return False
        for field, position in state.items():
            if field.startswith(b"replica."):  # replica.<slot>.<n>: counts while its lease lives
                _, slot, n = field.decode().split(".")
                replicas.append((keys.slot_replica(int(slot), int(n)), position, mark))
    behind = [lease for lease, position, mark in replicas if not at_least(position, mark)]
    if not behind:
        return True
    pipe = r.pipeline()
    for lease in behind:
        pipe.exists(lease)
    return not any(pipe.execute())


def job_view(r: redis.Redis, job_id: str, ttl_s: int, details: bool = True) -> dict[str, Any] | None:
    """The docs/api.md job body, or None for an unknown (or expired) job; without `details`,
    the body less `errors`, `result` and `not_found` (a job listing's)."""
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
            pipe.zrem(keys.ACTIVE_JOBS, job_id)
            pipe.execute()
            raw = r.hgetall(keys.job(job_id))
    view: dict[str, Any] = {
        "id": job_id,
        "kind": _text(raw, "kind"),
        "collection": _text(raw, "collection"),
        "state": state,
        "total": total,
        "done": done,
        "failed": failed,
        "created_at": _number(raw, "created_at"),
        "started_at": _number(raw, "started_at"),
        "finished_at": _number(raw, "finished_at"),
        "cancel_requested": raw.get(b"cancel_requested") == b"1",
    }
    if not details:
        return view
    result = _text(raw, "result")
    return {**view, "errors": [json.loads(e) for e in r.lrange(keys.job_errors(job_id), 0, 999)],
            "result": json.loads(result) if result else None,
            "not_found": sorted(v.decode() for v in r.smembers(keys.job_not_found(job_id)))}


def note_not_found(pipe: redis.client.Pipeline, entries: list[tuple[str, str]], ttl_s: int) -> None:
    """Queue on `pipe`: each (job, item id) deleted while absent, for the job's `not_found`."""
    for job_id, item_id in entries:
        pipe.sadd(keys.job_not_found(job_id), item_id)
        pipe.expire(keys.job_not_found(job_id), ttl_s)
