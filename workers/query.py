"""Query workers (queue "query"): encode a search, fan it out to the shard slots, merge the top-k.

`search` encodes the query (text with GloVe, no torch; an image with the collection's image
model) and pushes one search request to each shard slot that has a live owner or replica
(`keys.slot_searches` through shared.store.replies, see workers.shard), naming every shard of the collection that the slot
holds and carrying the query's unit blocks and weights, not the mostly-zero fused vector (all
the requests in one pipelined write); whichever process of the slot pops one searches those
shards in parallel and pushes one answer for all of them to a Redis list. The query worker
gathers the answers until every slot answered or `MMSEARCH_SHARD_TIMEOUT_S` has passed.
Whatever answered by then is merged: a shard that died, hangs or cannot serve is counted as not
answered (`shards.answered < total`, with a message), so a search never waits longer than the
shard deadline.

Before it sends anything, one pipelined read checks that the collection is live, which slots
are, the last entry id of each shard log (for the result cache) and, with `after_job`, the
job's marks. A collection's settings are read from the catalog once per process (they never
change for a collection id).

The result is pushed to the list the synchronous caller (the API) named in `reply_to`
(shared.store.replies), or
stored in the search's job when it is asynchronous. A search that fails unexpectedly answers
an `internal` error there before it fails, so nobody waits for it until a timeout.

Result cache (`workers.search_cache`): an answer that every shard gave from a state at least as
new as the end of its log is kept in this process and served again (`cached: true`) for the
same encoded query, k and filter while every log still ends there and every slot of the
collection is live. Searches with `after_job` neither use nor fill it.

Read-your-writes: with `after_job`, each slot request carries, per shard, the highest log
position that job wrote there (its marks), and the process that takes it (owner or replica)
waits, within the deadline, until it has applied that far. The answer's `consistency` says
whether the job had counted all its items when the search started and whether every shard got
that far.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from shared.store import catalog, jobs, keys, queues, replies, staging
from shared.runtime import logs
from shared.store.catalog import Collection
from shared.errors import MMSearchError
from shared.index.merge import merge_topk
from shared.store.serializers import vector_to_b64
from shared.store.slots import liveness_keys
from shared.encoding.sources import load_image_bytes
from shared.store.streamids import at_least
from workers import search_cache
from workers.celery_app import app
from workers.resources import redis_client, settings

log = logging.getLogger(__name__)

WAIT_MARGIN_S = 0.25   # a shard stops waiting for read-your-writes this long before the deadline
COLLECTIONS_KEPT = 256

_collections: dict[str, Collection] = {}  # cid -> its collection, read once per process
_cache = search_cache.ResultCache()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _finish(job_id: str | None, reply_to: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Hand the outcome to whoever waits for it: an async search's job, a sync caller's list."""
    r = redis_client()
    if job_id:
        error = body.get("error")
        jobs.set_search_result(r, job_id, None if error else body, error, settings().job_ttl_s)
    if reply_to:
        replies.answer(r, reply_to, body)
    return body


def _collection(name: str, cid: str) -> Collection | None:
    """The collection `name` if its id is `cid` (from this process's copy once read)."""
    coll = _collections.get(cid)
    if coll is None:
        coll = catalog.get_collection(redis_client(), name)
        if coll is None or coll.cid != cid:
            return None
        if len(_collections) >= COLLECTIONS_KEPT:
            _collections.clear()
        _collections[cid] = coll
    return coll


def _job_marks(cid: str, after_job: str, job: list[bytes | None],
               marks: dict[bytes, bytes]) -> tuple[dict[int, str], bool] | dict[str, Any]:
    """From the job's record and marks: its log position per shard and whether all its items
    were counted; or an error."""
    if job[0] is None:
        return _error("not_found", f"job {after_job!r} does not exist (or has expired)")
    if job[0].decode() != cid:
        return _error("invalid_request", f"job {after_job!r} belongs to another collection")
    total, done, failed = (int(v or 0) for v in job[1:])
    return {int(s): m.decode() for s, m in marks.items()}, done + failed >= total


@app.task(name=queues.SEARCH, bind=True)
def search(self, collection: str, cid: str, text: str | None, image: dict[str, Any] | None, k: int,
           weights: dict[str, float] | None, filter: dict[str, Any] | None, job_id: str | None = None,
           after_job: str | None = None, reply_to: str | None = None):
    logs.bind(job_id=job_id)  # async searches have a job; sync ones unbind the previous task's
    try:
        body = _search(self.request.id or jobs.new_job_id(), collection, cid, text, image, k, weights,
                       filter, after_job)
    except Exception:
        _finish(job_id, reply_to, _error("internal", "search failed"))
        raise
    return _finish(job_id, reply_to, body)


def _search(search_id: str, collection: str, cid: str, text: str | None, image: dict[str, Any] | None,
            k: int, weights: dict[str, float] | None, filter: dict[str, Any] | None,
            after_job: str | None) -> dict[str, Any]:
    from shared.encoding.encoders import collection_encoder

    wall_started = time.time()
    r, cfg = redis_client(), settings()
    coll = _collection(collection, cid)
    if coll is None:
        return _error("not_found", f"collection {collection!r} does not exist")
    slot_of = {s: queues.slot_for_shard(s, cfg.shard_slots) for s in range(coll.shards)}
    slots = sorted(set(slot_of.values()))
    pipe = r.pipeline(transaction=False)
    pipe.sismember(keys.LIVE_CIDS, cid)
    for slot in slots:
        pipe.exists(*liveness_keys(slot))
    if after_job:
        pipe.hmget(keys.job(after_job), "cid", "total", "done", "failed")
        pipe.hgetall(keys.job_marks(after_job))
    else:
        search_cache.queue_log_ends(pipe, cid, coll.shards)
    read = pipe.execute()
    if not read[0]:
        return _error("not_found", f"collection {collection!r} does not exist")
    live = {slot for slot, alive in zip(slots, read[1:1 + len(slots)]) if alive}
    rest = read[1 + len(slots):]
    marks: dict[int, str] = {}
    counted = True
    ends: search_cache.LogEnds | None = None
    if after_job:
        found = _job_marks(cid, after_job, rest[0], rest[1])
        if isinstance(found, dict):
            return found
        marks, counted = found
    else:
        ends = search_cache.log_ends(rest[0])
    rgb = None
    if image:
        from shared.encoding.imagedecode import decode_image

        try:
            rgb = decode_image(load_image_bytes(image, r, cfg), max_pixels=cfg.max_image_pixels,
                               max_bytes=cfg.max_image_bytes)
        except MMSearchError as exc:
            return _error("invalid_item", f"query image: {exc}")
        except Exception:  # a decoder failure we did not foresee is still the image's fault
            log.exception("query image could not be decoded")
            return _error("invalid_item", "query image: not a decodable image")
        finally:
            if "staged" in image:
                staging.release(r, [image["staged"]])
    try:
        fused = collection_encoder(coll.image_model, coll.text_model, coll.precision).query(rgb, text, weights)
    except ValueError as exc:
        return _error("invalid_request", str(exc))

    # The shards fuse the vector again from the unit blocks: a text query sends 50 floats, not
    # the mostly-zero fused vector.
    message = {"image_dim": fused.image_dim, "text_dim": len(fused.vector) - fused.image_dim,
               "image": vector_to_b64(fused.image) if fused.image is not None else None,
               "text": vector_to_b64(fused.text) if fused.text is not None else None,
               "weights": fused.weights}
    cache_key = search_cache.entry_key(cid, message, k, filter) if ends is not None else None
    if cache_key is not None and len(live) == len(slots):
        cached = _cache.get(cache_key, ends)
        if cached is not None:
            return {**cached, "took_ms": round((time.time() - wall_started) * 1000, 2), "cached": True}

    targets = {slot: [s for s in range(coll.shards) if slot_of[s] == slot] for slot in slots if slot in live}
    deadline = time.monotonic() + cfg.shard_timeout_s
    wait_until = time.time() + max(0.0, cfg.shard_timeout_s - WAIT_MARGIN_S)
    reply_key = keys.search_replies(search_id)
    if targets:
        replies.send(r, {keys.slot_searches(slot): {
            "op": queues.SLOT_SEARCH, "cid": cid, "shards": shards, "query": message, "k": k, "filter": filter,
            "wait_until": wait_until, "min_positions": {str(s): marks[s] for s in shards if s in marks}}
            for slot, shards in targets.items()}, reply_key, expires=time.time() + cfg.shard_timeout_s)
    slot_replies = replies.gather(r, reply_key, len(targets), deadline) if targets else []
    answers = [answer for reply in slot_replies for answer in reply["answers"]]
    failed = [a for a in answers if a.get("error")]
    answered = [a for a in answers if not a.get("error")]
    body = merge_hits(answered, k=k, total=coll.shards, started=wall_started)
    body["cached"] = False
    missing = coll.shards - len(answered)
    if missing:
        searched = sum(len(shards) for shards in targets.values())
        reasons = []
        if coll.shards - searched:
            reasons.append(f"{coll.shards - searched} had no live owner or replica")
        if searched - len(answers):
            reasons.append(f"{searched - len(answers)} did not answer within {cfg.shard_timeout_s:g} s")
        if failed:
            reasons.append(f"{len(failed)} could not serve ({failed[0]['error']})")
        body["shards"]["message"] = f"{missing} shard(s) not searched: " + "; ".join(reasons)
    if after_job:
        applied = all(a.get("applied", True) for a in answered)
        body["consistency"] = {"after_job": after_job, "counted": counted, "applied": applied,
                               "met": counted and applied and not missing}
    elif cache_key is not None and ends is not None and not missing and \
            all(at_least(a.get("position"), ends[a["shard"]]) for a in answered):
        _cache.put(cache_key, ends, body)
    return body


def merge_hits(results: list[dict[str, Any]], k: int, total: int, started: float) -> dict[str, Any]:
    """The merged body of the shards' answers."""
    hits = merge_topk([r["hits"] for r in sorted(results, key=lambda r: r["shard"])], k)
    return {"hits": hits, "k": k, "took_ms": round((time.time() - started) * 1000, 2),
            "shards": {"total": total, "answered": len(results)}}
