"""The stuck-job reaper: no job stays `running` for ever, and no accepted item is lost.

A thread in each query worker (one of them acts per round, under a Redis lock) walks the jobs
that are not final yet (`mms:jobs:active`). A job is *stalled* when items of it still have no
outcome, it has not moved (created, started, an item counted) for `MMSEARCH_JOB_STALL_S`, and
no message of it waits in a queue or sits unacknowledged with a consumer: its task messages
were lost (kombu's Redis transport pops a message and records it as unacknowledged only in a
second command, so a worker killed between the two loses it: celery/celery#7950; a request cut
off while sending its tasks; a broker that lost data...).

An API ingest keeps its items' encode messages until they are counted (shared.store.encode_tasks),
so a stalled one is *re-driven*: its uncounted items are sent to the encode queue again, the
same tasks the API sends. Sending is counted per job (`redrives` in its record): once an item
has been sent `MMSEARCH_TASK_MAX_DELIVERIES` times, its items fail with `stalled`. An item
whose uploaded bytes left staging meanwhile fails with `bytes_gone`. A message that was only
late, not lost, is harmless: the encode task skips items already counted. Other jobs (a search,
a bulk insert or an import that stopped, a delete) get their uncounted items failed with
`stalled`, so the job ends `completed_with_errors` or `failed`.

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
from typing import TYPE_CHECKING, Any

import redis

from shared.store import encode_tasks, export_files, job_listing, jobs, keys, queues
from shared.runtime.celery_config import make_celery
from shared.runtime.config import Settings

if TYPE_CHECKING:
    from celery import Celery

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


def redrive(r: redis.Redis, settings: Settings, celery: "Celery", job_id: str) -> dict[str, int]:
    """Send the uncounted items of a stalled API ingest again from the messages its job kept;
    fail those whose bytes are gone (`bytes_gone`), or every one once their deliveries are used
    up (`stalled`). Returns {"sent": items sent again, "failed": items failed}."""
    record = r.hmget(keys.job(job_id), "collection", "cid", "redrives")
    sends = 1 + int(record[2] or 0)  # the API's send, then each re-drive
    missing = jobs.uncounted(r, job_id)
    if sends >= settings.task_max_deliveries:
        message = (f"no progress for {settings.job_stall_s:g} s and no task of the job queued or running, after "
                   f"its items were sent {sends} times: the deliveries are used up (MMSEARCH_TASK_MAX_DELIVERIES)")
        return {"sent": 0, "failed": jobs.fail_uncounted(r, job_id, "stalled", message, missing)}
    kept = encode_tasks.messages(r, job_id, missing)
    gone = sorted(set(missing) - set(kept) | encode_tasks.bytes_gone(r, kept))
    failed = jobs.fail_uncounted(r, job_id, "bytes_gone", "the item's task was lost and its uploaded bytes are no "
                                 "longer staged (MMSEARCH_STAGING_TTL_S, or the collection was deleted)", gone)
    resend = [kept[i] for i in missing if i not in gone]
    if resend:
        r.hincrby(keys.job(job_id), "redrives", 1)  # counted before sending: a crash never sends unbounded
        collection, cid = (v.decode() for v in record[:2])
        encode_tasks.send(celery, job_id, collection, cid, resend, settings.encode_batch)
    return {"sent": len(resend), "failed": failed}


def reap_once(r: redis.Redis, settings: Settings, now: float | None = None,
              celery: "Celery | None" = None) -> dict[str, Any]:
    """One pass over the active jobs due for a look: finalise what is final, re-drive stalled API
    ingests (their tasks sent through `celery`, by default a client of the settings' broker) and
    fail the items of other stalled jobs. A job's score in the active set is when it last moved
    or was looked at (its creation first), so only jobs quiet for `job_stall_s` are examined,
    oldest first.

    Returns {"examined", "finalised", "redriven": {job id: items sent again},
    "reaped": {job id: items failed}}.
    """
    now = time.time() if now is None else now
    stall_s = settings.job_stall_s
    outcome: dict[str, Any] = {"examined": 0, "finalised": 0, "redriven": {}, "reaped": {}}
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
        if kind == "ingest" and encode_tasks.kept(r, job_id):
            celery = celery or make_celery(settings)
            done = redrive(r, settings, celery, job_id)
            if done["sent"]:
                log.warning("reaper: job %s stalled with no task queued or running; sent %d item(s) again",
                            job_id, done["sent"])
                outcome["redriven"][job_id] = done["sent"]
                r.zadd(keys.ACTIVE_JOBS, {job_id: now}, xx=True)  # look again once it is quiet again
            failed = done["failed"]
        else:
            message = (f"no progress for {stall_s:g} s and no task of the job is queued or running "
                       "(MMSEARCH_JOB_STALL_S)")
            if kind == "search":
                jobs.set_search_result(r, job_id, None, {"code": "stalled", "message": message}, settings.job_ttl_s)
                failed = 1
            else:
                failed = jobs.fail_uncounted(r, job_id, "stalled", message)
        if failed:
            log.error("reaper: job %s stalled; %d item(s) failed", job_id, failed)
            outcome["reaped"][job_id] = failed
        jobs.job_view(r, job_id, settings.job_ttl_s)
    return outcome


class Reaper:
    """Runs `reap_once` every `interval_s` in a daemon thread, one process at a time (lock);
    re-driven tasks go out through `celery` (the worker's app)."""

    def __init__(self, r: redis.Redis, settings: Settings, interval_s: float = INTERVAL_S,
                 celery: "Celery | None" = None) -> None:
        self.r = r
        self.settings = settings
        self.interval_s = interval_s
        self.celery = celery
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _round(self) -> None:
        hold_ms = int(self.interval_s * 1000 * 0.9)
        if self.r.set(keys.REAPER_LOCK, self.token, nx=True, px=max(100, hold_ms)):
            outcome = reap_once(self.r, self.settings, celery=self.celery)
            if outcome["reaped"] or outcome["redriven"]:
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
