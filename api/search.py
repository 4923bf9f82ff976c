"""/v1/collections/<name>/search: hand a validated query to the query workers.

A synchronous search is a request on the query workers' list (keys.SEARCH_REQUESTS,
shared.store.replies) that names the request's own id and a list (`reply_to`,
keys.search_answer) where the query worker pushes the body; the API waits on that list up to
MMSEARCH_SEARCH_TIMEOUT_S (503 after that), and a request nobody took by then is dropped. No
Celery message: its delivery bookkeeping (a message moved to the unacknowledged set and back,
each an fsynced write) cost about 3 ms a search, and its redelivery of a killed worker's
message would come long after the asker gave up. An asynchronous search is a Celery task
(queue "query") with the request's id as its task id and its job's id, delivered and
acknowledged late like every task; Celery keeps no result for either.
It answers with the merged hits, `took_ms` being the API's own wall time, and `cached` whether
the query worker served them from its result cache; a worker error body becomes the HTTP error
it names. With `?async=1` the id is also a "search" job's id, which the query worker finishes
with the same body, and the answer is 202 at once.

`?after_job=<job id>` asks for read-your-writes: each shard waits (within the shard deadline)
until it has applied what that job of this collection logged to it, and the answer carries
`consistency: {"after_job", "counted", "applied", "met"}`.

While no query worker is ready (still loading its models, or none running) a valid search is
refused at once, 503 naming the worker's start-up stage (api.readiness), not after the timeout.
"""
from __future__ import annotations

import base64
import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.bodies import JSON, MULTIPART, body_kind, read_json_object
from api.collections import require_collection
from api.context import services
from api.errors import ApiError, HTTP_CODES
from api.jobs import accepted
from api.readiness import require_role
from api.validation import SearchInput, invalid, parse_search_json, parse_search_multipart
from shared.store import jobs, keys, queues, replies, staging

bp = Blueprint("search", __name__, url_prefix="/collections/<name>/search")

STATUS_OF_CODE = {code: status for status, code in HTTP_CODES.items()}
ASYNC_VALUES = {"1": True, "true": True, "0": False, "false": False}
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


def _is_async() -> bool:
    raw = request.args.get("async", "0").lower()
    if raw not in ASYNC_VALUES:
        raise invalid("async must be 1 or 0 (true or false)", field="async")
    return ASYNC_VALUES[raw]


def _after_job(cid: str) -> str | None:
    """The `after_job` query parameter: a job of this collection (404 / 400 otherwise)."""
    job_id = request.args.get("after_job")
    if job_id is None:
        return None
    if not JOB_ID.match(job_id):
        raise invalid("after_job must be a job id", field="after_job")
    owner = services().redis.hget(keys.job(job_id), "cid")
    if owner is None:
        raise ApiError(404, "not_found", f"job {job_id!r} does not exist (or has expired)", {"job_id": job_id})
    if owner.decode() != cid:
        raise invalid(f"job {job_id!r} belongs to another collection", field="after_job")
    return job_id


def _parse() -> SearchInput:
    settings = services().settings
    if body_kind((JSON, MULTIPART)) == JSON:
        return parse_search_json(read_json_object(), settings)
    return parse_search_multipart(request.form, request.files, settings)


def _wait_answer(search_id: str, timeout_s: float) -> Any:
    """The body the query worker pushed for this search; 503 when it does not come in time."""
    answer = replies.wait_one(services().redis, keys.search_answer(search_id), timeout_s)
    if answer is None:
        raise ApiError(503, "unavailable", "search timed out", {"timeout_s": timeout_s})
    return answer


def _answer(result: Any, started: float) -> Response:
    """The search task's result as an HTTP answer: the hits, or the error it reports."""
    if not isinstance(result, dict):
        raise ApiError(500, "internal", "the search returned no result")
    error = result.get("error")
    if error:
        code = error.get("code")
        status = STATUS_OF_CODE.get(code, 500)
        raise ApiError(status, code if status != 500 else "internal", error.get("message", "search failed"))
    return jsonify({**result, "took_ms": round((time.perf_counter() - started) * 1000, 2)})


@bp.post("")
def search(name: str) -> Response | tuple[Response, int]:
    started = time.perf_counter()
    coll = require_collection(name)
    is_async = _is_async()
    after_job = _after_job(coll.cid)
    query = _parse()
    require_role("query", "search")
    svc = services()
    sid = jobs.new_job_id()
    image = query.image
    if isinstance(image, bytes):
        # An async search's image waits for its worker in staging; a synchronous one travels in its
        # request, which is gone once taken (no stage and release: two fsynced writes less).
        image = ({"staged": staging.stage(svc.redis, coll.cid, sid, {0: image}, svc.settings.staging_ttl_s)[0]}
                 if is_async else {"inline": base64.b64encode(image).decode("ascii")})
    kwargs = {"collection": name, "cid": coll.cid, "text": query.text, "image": image,
              "k": query.k, "weights": query.weights, "filter": query.filter, "job_id": sid if is_async else None}
    if after_job:
        kwargs["after_job"] = after_job
    if query.offset:
        kwargs["offset"] = query.offset
    if is_async:
        jobs.create_job(svc.redis, "search", name, coll.cid, 1, job_id=sid)
        svc.celery.send_task(queues.SEARCH, kwargs=kwargs, task_id=sid, queue=queues.QUERY)
        return accepted(sid)
    timeout_s = svc.settings.search_timeout_s
    replies.send(svc.redis, {keys.SEARCH_REQUESTS: {**kwargs, "search_id": sid}}, keys.search_answer(sid),
                 expires=time.time() + timeout_s)
    return _answer(_wait_answer(sid, timeout_s), started)
