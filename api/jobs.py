"""/v1/jobs: list jobs newest first (shared.store.job_listing); /v1/jobs/<job_id>: poll an
ingest, delete or async search job; cancel what has not run.

`?wait=S` (0 < S <= MAX_WAIT_S) long-polls: the answer comes as soon as the job is final, or
after S seconds with its state then. The API re-reads the job every WAIT_POLL_S meanwhile (a
job's state is derived from its counters and the shards' applied positions, so there is no
single write to be told of), so a waiting client learns of the end within that.
"""
from __future__ import annotations

import math
import time

from flask import Blueprint, Response, jsonify, request

from api.context import services
from api.errors import ApiError
from api.validation.job_listing import parse_jobs_args
from shared.store import job_listing, jobs

bp = Blueprint("jobs", __name__, url_prefix="/jobs")
MAX_WAIT_S = 30.0
WAIT_POLL_S = 0.01
SCAN_MIN = 1000  # jobs a listing page may look at, at least (more when its limit is higher)


def status_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def accepted(job_id: str, **extra: object) -> tuple[Response, int]:
    """The 202 answer of every call that started a job."""
    return jsonify({"job_id": job_id, "status_url": status_url(job_id), **extra}), 202


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "not_found", f"job {job_id!r} does not exist (or has expired)", {"job_id": job_id})


def _wait_s() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= MAX_WAIT_S:  # NaN fails too
        raise ApiError(400, "invalid_request", f"wait must be a number of seconds in 0..{MAX_WAIT_S:g}",
                       {"field": "wait"})
    return wait


@bp.get("")
def list_all() -> Response:
    query = parse_jobs_args(request.args)
    svc = services()
    found, after = job_listing.list_jobs(svc.redis, svc.settings.job_ttl_s, query.after, query.limit, query.wanted,
                                         max(SCAN_MIN, query.limit))
    return jsonify({"jobs": found, "next_cursor": None if after is None else str(after)})


@bp.get("/<job_id>")
def show(job_id: str) -> Response:
    svc = services()
    deadline = time.monotonic() + _wait_s()
    while True:
        view = jobs.job_view(svc.redis, job_id, svc.settings.job_ttl_s)
        if view is None:
            raise _not_found(job_id)
        left = deadline - time.monotonic()
        if view["state"] in jobs.FINAL_STATES or left <= 0:
            return jsonify(view)
        time.sleep(min(WAIT_POLL_S, left))


@bp.delete("/<job_id>")
def cancel(job_id: str) -> tuple[Response, int]:
    if not jobs.request_cancel(services().redis, job_id):
        raise _not_found(job_id)
    return accepted(job_id, cancel_requested=True)
