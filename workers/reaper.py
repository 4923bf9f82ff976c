"""The stuck-job reaper: no job stays `running` for ever.

A thread in each query worker (one of them acts per round, under a Redis lock) walks the jobs
that are not final yet (`mms:jobs:active`). A job is *stalled* when items of it still have no
outcome, it has not moved (created, started, an item counted) for `MMSEARCH_JOB_STALL_S`, and
no message of it waits in a queue or sits unacknowledged with a consumer: its task messages
were lost (a hard time limit ended the task, a broker that lost data...). Its uncounted items
then fail with `stalled`, so the job ends `completed_with_errors` or `failed`.

A job that still has a message somewhere is never reaped: it is waiting behind a backlog, or
for its dead worker's message to come back after the visibility timeout, or for the delivery
limit of the encode task to fail it. A job whose items are all counted but not yet applied by
a shard (its owner is down) is not stalled either: it becomes final when the owner is back.
Jobs seen final leave the active set, which keeps it small. Each round also drops the oldest
entries of the job listing's index whose record has expired (shared.store.job_listing), and,
in every query worker (lock or not: a directory that is not shared is swept too), removes the
export archives older than their hour (shared.store.export_files.remove_expired).
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from shared.store import export_files, job_listing, jobs, keys, queues
from shared.runtime.config import Settings

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
SCAN_LIMIT = 100_000      # messages examined per queue; a longer backlog defers reaping
ROUND_LIMIT = 1000        # jobs examined per round
_CHUNK = 1000
UNACKED = "unacked"       # kombu's Redis transport: delivery tag -> [message, exchange, routing key]


def _job_of(raw: bytes | str) -> str | None:
    """The job id a kombu message (as stored in a queue list) carries, if it is one of ours."""
    try:
        message = json.loads(raw)
        headers = message.get("headers") or {}
        body = message.get("body")
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)
        kwargs = args[1] if isinstance(args, list) and len(args) > 1 else {}
        return kwargs.get("job_id") or headers.get("id")
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None


def pending_jobs(r: redis.Redis, queue_names: Iterable[str], limit: int = SCAN_LIMIT) -> set[str] | None:
    """Job ids that have a message waiting in one of the queues or held unacknowledged by a
    consumer; None when a queue is too long to look through (then nothing may be reaped)."""
    found: set[str] = set()
    for name in queue_names:
        length = r.llen(name)
        if length > limit:
            return None
        for start in range(0, length, _CHUNK):
            for raw in r.lrange(name, start, start + _CHUNK - 1):
                job = _job_of(raw)
                if job:
                    found.add(job)
    scanned = 0
    for _, value in r.hscan_iter(UNACKED, count=_CHUNK):
        scanned += 1
        if scanned > limit:
            return None
        job = _unacked_job(value)
        if job:
            found.add(job)
    return found


def _unacked_job(value: bytes) -> str | None:
    try:
        entry = json.loads(value)
    except ValueError:
        return None
    return _job_of(json.dumps(entry[0])) if isinstance(entry, list) and entry else None


def reap_once(r: redis.Redis, settings: Settings, now: float | None = None) -> dict[str, Any]:
    """One pass over the active jobs due for a look: finalise what is final, fail the items of
    stalled jobs. A job's score in the active set is when it last moved or was looked at (its
    creation first), so only jobs quiet for `job_stall_s` are examined, oldest first.

    Returns {"examined", "finalised", "reaped": {job id: items failed}}.
    """
    now = time.time() if now is None else now
    stall_s = settings.job_stall_s
    outcome: dict[str, Any] = {"examined": 0, "finalised": 0, "reaped": {}}
    candidates: list[tuple[str, str]] = []
    for raw_id in r.zrangebyscore(keys.ACTIVE_JOBS, "-inf", now - stall_s, start=0, num=ROUND_LIMIT):
        job_id = raw_id.decode()
        outcome["examined"] += 1
        view = jobs.job_view(r, job_id, settings.job_ttl_s)  # finalises a job that is complete
        if view is None or view["state"] in jobs.FINAL_STATES:
            r.zrem(keys.ACTIVE_JOBS, job_id)
            outcome["finalised"] += 1
            continue
        moved = jobs.last_progress(r, job_id) or now
        if view["done"] + view["failed"] >= view["total"] or now - moved < stall_s:
            # Counted and waiting for a shard (its owner is down), or moved lately: look again
            # once it has been quiet for job_stall_s.
            r.zadd(keys.ACTIVE_JOBS, {job_id: moved if now - moved < stall_s else now}, xx=True)
            continue
        candidates.append((job_id, view["kind"] or "ingest"))
    if not candidates:
        return outcome
    pending = pending_jobs(r, [queues.ENCODE, queues.QUERY])
    if pending is None:
        log.warning("reaper: a queue holds more than %d messages; not reaping this round", SCAN_LIMIT)
        return outcome
    for job_id, kind in candidates:
        if job_id in pending:
            r.zadd(keys.ACTIVE_JOBS, {job_id: now}, xx=True)  # queued or running: look again later
            continue
        message = (f"no progress for {stall_s:g} s and no task of the job is queued or running "
                   "(MMSEARCH_JOB_STALL_S)")
        if kind == "search":
            jobs.set_search_result(r, job_id, None, {"code": "stalled", "message": message}, settings.job_ttl_s)
            failed = 1
        else:
            failed = jobs.fail_uncounted(r, job_id, "stalled", message)
        log.error("reaper: job %s stalled; %d item(s) failed", job_id, failed)
        outcome["reaped"][job_id] = failed
        jobs.job_view(r, job_id, settings.job_ttl_s)
    return outcome


class Reaper:
    """Runs `reap_once` every `interval_s` in a daemon thread, one process at a time (lock)."""

    def __init__(self, r: redis.Redis, settings: Settings, interval_s: float = INTERVAL_S) -> None:
        self.r = r
        self.settings = settings
        self.interval_s = interval_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _round(self) -> None:
        hold_ms = int(self.interval_s * 1000 * 0.9)
        if self.r.set(keys.REAPER_LOCK, self.token, nx=True, px=max(100, hold_ms)):
            outcome = reap_once(self.r, self.settings)
            if outcome["reaped"]:
                log.warning("reaper: %s", outcome)
            job_listing.prune_oldest(self.r)
        export_files.remove_expired(self.settings.exports_path)  # last: a bad directory never stops the rest

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._round()
            except redis.exceptions.RedisError as exc:
                log.warning("reaper: Redis unreachable (%s); retrying", exc)
            except Exception:  # never let the thread die
                log.exception("reaper: round failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="job-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
