"""Jobs newest first, for GET /v1/jobs: an index of every job by creation time.

`jobs.create_job` adds each job to the sorted set `mms:jobs:by_time` (score: `created_at`).
A job's record outlives it by `MMSEARCH_JOB_TTL_S`; the index forgets it when someone finds the
record gone: a listing that meets it, or `prune_oldest` (the stuck-job reaper's rounds look at
the oldest entries), so the set holds about the jobs that still exist.

A page is the jobs after a cursor in (created_at, id) descending order, those of a collection,
state or kind only when asked; the cursor is `<created_at>:<job id>` of the last job looked at,
so new jobs never shift a scan. A page looks at no more than `scan_max` jobs: with filters that
few jobs meet it may hold fewer than `limit` while `next_cursor` says there are more to look at.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis

from shared.store import jobs, keys

BATCH = 200
PRUNE_BATCH = 1000
_CURSOR = re.compile(r"^(-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?):([A-Za-z0-9_-]{1,64})\Z")


@dataclass(frozen=True)
class Cursor:
    """Where a page of jobs starts: after this job (newest first)."""

    created_at: float
    job_id: str

    def __str__(self) -> str:
        return f"{self.created_at!r}:{self.job_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor `text` names, None when it names none."""
        match = _CURSOR.match(text)
        return cls(float(match[1]), match[2]) if match else None


@dataclass(frozen=True)
class JobFilter:
    """What a listed job must be; None: anything."""

    collection: str | None = None
    state: str | None = None
    kind: str | None = None

    def holds(self, view: dict[str, Any]) -> bool:
        return all(wanted is None or view[field] == wanted
                   for field, wanted in (("collection", self.collection), ("state", self.state),
                                         ("kind", self.kind)))


def _after(r: redis.Redis, cursor: Cursor | None, count: int) -> list[Cursor]:
    """Up to `count` index entries after `cursor`, newest first (ties by id, descending)."""
    entries: list[Cursor] = []
    maximum = "+inf"
    if cursor is not None:
        ties = r.zrevrangebyscore(keys.JOBS_BY_TIME, cursor.created_at, cursor.created_at, withscores=True)
        entries = [Cursor(score, member.decode()) for member, score in ties if member.decode() < cursor.job_id]
        maximum = f"({cursor.created_at!r}"
    rows = r.zrevrangebyscore(keys.JOBS_BY_TIME, maximum, "-inf", start=0, num=count, withscores=True)
    return (entries + [Cursor(score, member.decode()) for member, score in rows])[:count]


def list_jobs(r: redis.Redis, ttl_s: int, after: Cursor | None, limit: int, wanted: JobFilter,
              scan_max: int) -> tuple[list[dict[str, Any]], Cursor | None]:
    """Up to `limit` jobs after `after` that `wanted` holds, as job views without errors, result
    and not_found; and the cursor to go on from (None: no more jobs)."""
    found: list[dict[str, Any]] = []
    cursor, looked = after, 0
    while len(found) < limit and looked < scan_max:
        entries = _after(r, cursor, min(BATCH, scan_max - looked))
        if not entries:
            return found, None
        for entry in entries:
            cursor, looked = entry, looked + 1
            view = jobs.job_view(r, entry.job_id, ttl_s, details=False)
            if view is None:
                r.zrem(keys.JOBS_BY_TIME, entry.job_id)
            elif wanted.holds(view):
                found.append(view)
                if len(found) == limit:
                    break
    return found, (cursor if _after(r, cursor, 1) else None)


def prune_oldest(r: redis.Redis, count: int = PRUNE_BATCH) -> int:
    """Drop the index entries among the `count` oldest whose job record is gone; how many."""
    oldest = r.zrange(keys.JOBS_BY_TIME, 0, count - 1)
    pipe = r.pipeline(transaction=False)
    for job_id in oldest:
        pipe.exists(keys.job(job_id.decode()))
    gone = [job_id for job_id, exists in zip(oldest, pipe.execute()) if not exists]
    if gone:
        r.zrem(keys.JOBS_BY_TIME, *gone)
    return len(gone)
