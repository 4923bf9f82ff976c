"""Query workers (queue "query"): encode a search, fan it out to the shards, merge the top-k.

`search` encodes the query (text with GloVe, no torch; an image with the collection's image
model), then replaces itself by a chord: one `shard_search` per shard whose slot has a live
owner, and `merge_hits` on this queue as the body, which inherits the search's task id. Shards
without a live owner are not waited for: the response counts them as not answered.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from celery import chord

from shared import catalog, jobs, keys, logs, queues, staging
from shared.errors import MMSearchError
from shared.merge import merge_topk
from shared.serializers import vector_to_b64
from shared.sources import load_image_bytes
from workers.celery_app import app
from workers.resources import redis_client, settings

log = logging.getLogger(__name__)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _finish(job_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Store an async search's outcome in its job; return the body for the sync caller."""
    if job_id:
        error = body.get("error")
        jobs.set_search_result(redis_client(), job_id, None if error else body, error, settings().job_ttl_s)
    return body


def _live_slots(slots: set[int]) -> set[int]:
    r = redis_client()
    ordered = sorted(slots)
    pipe = r.pipeline(transaction=False)
    for slot in ordered:
        pipe.exists(keys.slot_owner(slot))
    return {slot for slot, alive in zip(ordered, pipe.execute()) if alive}


@app.task(name=queues.SEARCH, bind=True)
def search(self, collection: str, cid: str, text: str | None, image: dict[str, Any] | None, k: int,
           weights: dict[str, float] | None, filter: dict[str, Any] | None, job_id: str | None = None):
    from shared.encoding import collection_encoder

    logs.bind(job_id=job_id)  # async searches have a job; sync ones unbind the previous task's
    started = time.perf_counter()
    r, cfg = redis_client(), settings()
    coll = catalog.get_collection(r, collection)
    if coll is None or coll.cid != cid:
        return _finish(job_id, _error("not_found", f"collection {collection!r} does not exist"))
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
        fused = collection_encoder(coll.image_model, coll.text_model).query(rgb, text, weights)
    except ValueError as exc:
        return _finish(job_id, _error("invalid_request", str(exc)))

    message = {"vector": vector_to_b64(fused.vector), "image_dim": fused.image_dim,
               "image": vector_to_b64(fused.image) if fused.image is not None else None,
               "text": vector_to_b64(fused.text) if fused.text is not None else None,
               "weights": fused.weights}
    slot_of = {s: queues.slot_for_shard(s, cfg.shard_slots) for s in range(coll.shards)}
    live = _live_slots(set(slot_of.values()))
    header = [app.signature(queues.SHARD_SEARCH, kwargs={"cid": cid, "shard": s, "query": message, "k": k,
                                                         "filter": filter},
                            queue=queues.shard_queue(slot), expires=cfg.shard_timeout_s)
              for s, slot in slot_of.items() if slot in live]
    body = merge_hits.s(k=k, total=coll.shards, job_id=job_id, started=time.time() - (time.perf_counter() - started))
    if not header:
        return merge_hits(results=[], k=k, total=coll.shards, job_id=job_id, started=time.time())
    raise self.replace(chord(header, body))


@app.task(name=queues.MERGE_HITS)
def merge_hits(results: list[dict[str, Any]], k: int, total: int, job_id: str | None,
               started: float) -> dict[str, Any]:
    hits = merge_topk([r["hits"] for r in sorted(results, key=lambda r: r["shard"])], k)
    body = {"hits": hits, "k": k, "took_ms": round((time.time() - started) * 1000, 2),
            "shards": {"total": total, "answered": len(results)}}
    if len(results) < total:
        body["shards"]["message"] = f"{total - len(results)} shard(s) had no live owner and were not searched"
    return _finish(job_id, body)
