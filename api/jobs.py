"""/v1/jobs/<job_id>: poll an ingest, delete or async search job; cancel what has not run."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.context import services
from api.errors import ApiError
from shared.store import jobs

bp = Blueprint("jobs", __name__, url_prefix="/jobs")


def status_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def accepted(job_id: str, **extra: object) -> tuple[Response, int]:
    """The 202 answer of every call that started a job."""
    return jsonify({"job_id": job_id, "status_url": status_url(job_id), **extra}), 202


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "not_found", f"job {job_id!r} does not exist (or has expired)", {"job_id": job_id})


@bp.get("/<job_id>")
def show(job_id: str) -> Response:
    svc = services()
    view = jobs.job_view(svc.redis, job_id, svc.settings.job_ttl_s)
    if view is None:
        raise _not_found(job_id)
    return jsonify(view)


@bp.delete("/<job_id>")
def cancel(job_id: str) -> tuple[Response, int]:
    if not jobs.request_cancel(services().redis, job_id):
        raise _not_found(job_id)
    return accepted(job_id, cancel_requested=True)
