"""Query workers (queue "query"): encode a search, fan it out to the shards, merge the top-k.

`search` encodes the query (text with GloVe, no torch; an image with the collection's image
model), sends one `shard_search` per shard whose slot has a live owner or replica, and gathers
their answers from a Redis list (each shard worker pushes its answer there) until all have
answered or `MMSEARCH_SHARD_TIMEOUT_S` has passed. Whatever answered by then is merged: a shard
that died, hangs or cannot serve is counted as not answered (`shards.answered < total`, with a
message), so a search never waits longer than the shard deadline.

Read-your-writes: with `after_job`, each shard search carries the highest log position that job
wrote to that shard (its marks), and the process that takes it (owner or replica) waits, within
the deadline, until it has applied that far. The answer's `consistency` says whether the job had
counted all its items when the search started and whether every shard got that far.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from shared import catalog, jobs, keys, logs, queues, staging
from shared.errors import MMSearchError
from shared.merge import merge_topk
from shared.serializers import vector_to_b64
from shared.slots import live_slots
from shared.sources import load_image_bytes
from workers.celery_app import app
from workers.resources import redis_client, settings

log = logging.getLogger(__name__)

BLPOP_MAX_S = 5.0      # one blocking read at most this long (below the client's socket timeout)
WAIT_MARGIN_S = 0.25   # a shard stops waiting for read-your-writes this long before the deadline


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _finish(job_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Store an async search's outcome in its job; return the body for the sync caller."""
    if job_id:
        error = body.get("error")
        jobs.set_search_result(redis_client(), job_id, None if error else body, error, settings().job_ttl_s)
    return body


def _live_slots(slots: set[int]) -> set[int]:
    return live_slots(redis_client(), slots)


def _job_marks(cid: str, after_job: str) -> tuple[dict[int, str], bool] | dict[str, Any]:
    """The job's log position per shard and whether all its items were counted; or an error."""
    r = redis_client()
    raw = r.hmget(keys.job(after_job), "cid", "total", "done", "failed")
    if raw[0] is None:
        return _error("not_found", f"job {after_job!r} does not exist (or has expired)")
    if raw[0].decode() != cid:
        return _error("invalid_request", f"job {after_job!r} belongs to another collection")
    total, done, failed = (int(v or 0) for v in raw[1:])
    marks = {int(s): m.decode() for s, m in r.hgetall(keys.job_marks(after_job)).items()}
    return marks, done + failed >= total


def gather(reply_key: str, expected: int, deadline: float) -> list[dict[str, Any]]:
    """The answers pushed to `reply_key`, until `expected` came or the deadline passed."""
    r = redis_client()
    answers: list[dict[str, Any]] = []
    try:
        while len(answers) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            popped = r.blpop([reply_key], timeout=max(0.01, min(left, BLPOP_MAX_S)))
            if popped is not None:
                answers.append(json.loads(popped[1]))
    finally:
        r.delete(reply_key)
    return answers


@app.task(name=queues.SEARCH, bind=True)
def search(self, collection: str, cid: str, text: str | None, image: dict[str, Any] | None, k: int,
           weights: dict[str, float] | None, filter: dict[str, Any] | None, job_id: str | None = None,
           after_job: str | None = None):
    from shared.encoding import collection_encoder

    logs.bind(job_id=job_id)  # async searches have a job; sync ones unbind the previous task's
    wall_started = time.time()
    r, cfg = redis_client(), settings()
    coll = catalog.get_collection(r, collection)
    if coll is None or coll.cid != cid:
        return _finish(job_id, _error("not_found", f"collection {collection!r} does not exist"))
    marks: dict[int, str] = {}
    counted = True
    if after_job:
        found = _job_marks(cid, after_job)
        if isinstance(found, dict):
            return _finish(job_id, found)
        marks, counted = found
    rgb = None
    if image:
        from shared.imagedecode import decode_image

        try:
            rgb = decode_image(load_image_bytes(image, r, cfg), max_pixels=cfg.max_image_pixels,
                               max_bytes=cfg.max_image_bytes)
        except MMSearchError as exc:
            return _finish(job_id, _error("invalid_item", f"query image: {exc}"))
        except Exception:  # a decoder failure we did not foresee is still the image's fault
            log.exception("query image could not be decoded")
            return _finish(job_id, _error("invalid_item", "query image: not a decodable image"))
        finally:
            if "staged" in image:
                staging.release(r, [image["staged"]])
    try:
        fused = collection_encoder(coll.image_model, coll.text_model, coll.precision).query(rgb, text, weights)
    except ValueError as exc:
        return _finish(job_id, _error("invalid_request", str(exc)))

    message = {"vector": vector_to_b64(fused.vector), "image_dim": fused.image_dim,
               "image": vector_to_b64(fused.image) if fused.image is not None else None,
               "text": vector_to_b64(fused.text) if fused.text is not None else None,
               "weights": fused.weights}
    slot_of = {s: queues.slot_for_shard(s, cfg.shard_slots) for s in range(coll.shards)}
    live = _live_slots(set(slot_of.values()))
    targets = [s for s, slot in slot_of.items() if slot in live]
    deadline = time.monotonic() + cfg.shard_timeout_s
    wait_until = time.time() + max(0.0, cfg.shard_timeout_s - WAIT_MARGIN_S)
    reply_key = keys.search_replies(self.request.id or jobs.new_job_id())
    for s in targets:
        app.send_task(queues.SHARD_SEARCH, queue=queues.shard_queue(slot_of[s]), expires=cfg.shard_timeout_s,
                      ignore_result=True,
                      kwargs={"cid": cid, "shard": s, "query": message, "k": k, "filter": filter,
                              "reply_to": reply_key, "min_position": marks.get(s), "wait_until": wait_until})
    answers = gather(reply_key, len(targets), deadline) if targets else []
    failed = [a for a in answers if a.get("error")]
    answered = [a for a in answers if not a.get("error")]
    body = merge_hits(answered, k=k, total=coll.shards, job_id=None, started=wall_started)
    missing = coll.shards - len(answered)
    if missing:
        reasons = []
        if coll.shards - len(targets):
            reasons.append(f"{coll.shards - len(targets)} had no live owner or replica")
        if len(targets) - len(answers):
            reasons.append(f"{len(targets) - len(answers)} did not answer within {cfg.shard_timeout_s:g} s")
        if failed:
            reasons.append(f"{len(failed)} could not serve ({failed[0]['error']})")
        body["shards"]["message"] = f"{missing} shard(s) not searched: " + "; ".join(reasons)
    if after_job:
        applied = all(a.get("applied", True) for a in answered)
        body["consistency"] = {"after_job": after_job, "counted": counted, "applied": applied,
                               "met": counted and applied and not missing}
    return _finish(job_id, body)


@app.task(name=queues.MERGE_HITS)
def merge_hits(results: list[dict[str, Any]], k: int, total: int, job_id: str | None,
               started: float) -> dict[str, Any]:
    """The merged body of the shards' answers (also a task: chords of earlier versions)."""
    hits = merge_topk([r["hits"] for r in sorted(results, key=lambda r: r["shard"])], k)
    body = {"hits": hits, "k": k, "took_ms": round((time.time() - started) * 1000, 2),
            "shards": {"total": total, "answered": len(results)}}
    if len(results) < total:
        body["shards"]["message"] = f"{total - len(results)} shard(s) had no live owner and were not searched"
    return _finish(job_id, body)
