"""Checking the query of a job listing (GET /v1/jobs): `collection`, `state`, `kind`, `limit`
(1..MAX_JOBS_PAGE, default DEFAULT_JOBS_PAGE) and `cursor` (the `next_cursor` of the page
before)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from werkzeug.datastructures import MultiDict

from api.validation.common import invalid, only_params, single
from shared.store import catalog, jobs
from shared.store.job_listing import Cursor, JobFilter

MAX_JOBS_PAGE = 1000
DEFAULT_JOBS_PAGE = 100
JOB_KINDS = ("ingest", "delete", "search", "export", "import")
JOB_STATES = ("queued", "running", *jobs.FINAL_STATES)
JOBS_PARAMS = frozenset({"collection", "state", "kind", "limit", "cursor"})
_DIGITS = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class JobsQuery:
    wanted: JobFilter
    limit: int
    after: Cursor | None


def _one_of(args: MultiDict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = single(args, name)
    if value is not None and value not in allowed:
        raise invalid(f"{name} must be one of {', '.join(allowed)}", field=name)
    return value


def parse_jobs_args(args: MultiDict[str, str]) -> JobsQuery:
    only_params(args, JOBS_PARAMS)
    collection = single(args, "collection")
    if collection is not None and not catalog.NAME_RE.match(collection):
        raise invalid("collection must be a collection name", field="collection")
    raw_limit = single(args, "limit")
    if raw_limit is not None and (not _DIGITS.match(raw_limit) or not 1 <= int(raw_limit) <= MAX_JOBS_PAGE):
        raise invalid(f"limit must be an integer in 1..{MAX_JOBS_PAGE}", field="limit")
    raw_cursor = single(args, "cursor")
    after = None if raw_cursor is None else Cursor.parse(raw_cursor)
    if raw_cursor is not None and after is None:
        raise invalid("cursor must be the next_cursor of the page before", field="cursor")
    return JobsQuery(JobFilter(collection, _one_of(args, "state", JOB_STATES), _one_of(args, "kind", JOB_KINDS)),
                     DEFAULT_JOBS_PAGE if raw_limit is None else int(raw_limit), after)
