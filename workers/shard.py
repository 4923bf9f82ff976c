"""Shard workers (queue "shard.<slot>"): per-shard searches and item look-ups.

`python -m workers shard [--slot N]` takes the lease of a slot, loads its shards (snapshot +
log replay) and then consumes `shard.<slot>` with a thread pool; the owner's applier thread
keeps the indexes up to date with the logs meanwhile.

`python -m workers shard --replica [--slot N]` runs a read replica of a slot (the slot with the
fewest replicas by default): it loads the owner's snapshots from the same `MMSEARCH_DATA_DIR`,
follows the same logs, and consumes the same `shard.<slot>` queue, so Celery spreads the slot's
searches and look- ups over the owner and its replicas. It never writes a snapshot or trims a
log. A search that asks for read-your-writes (`min_position`) waits, up to its deadline, until
the process that took it has applied the log that far, and says whether it got there.
"""
from __future__ import annotations

import base64
import json
import os
import logging
import time
from typing import Any

from shared import metrics, queues
from shared.fusion import FusedQuery
from shared.serializers import vector_from_b64
from shared.streamids import at_least
from workers.celery_app import app
from workers.resources import redis_client, settings
from workers.shard_owner import ShardOwner

log = logging.getLogger(__name__)

_owner: ShardOwner | None = None
REPLY_TTL_S = 60
WAIT_POLL_S = 0.01


def owner() -> ShardOwner:
    if _owner is None:
        raise RuntimeError("this process owns no shard slot (start it with `python -m workers shard`)")
    return _owner


def _query_from_message(query: dict[str, Any]) -> FusedQuery:
    return FusedQuery(
        vector=vector_from_b64(query["vector"]),
        image_dim=query["image_dim"],
        image=vector_from_b64(query["image"]) if query.get("image") else None,
        text=vector_from_b64(query["text"]) if query.get("text") else None,
        weights=query.get("weights") or {},
    )


def _reply(reply_to: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Hand the answer to the waiting query worker (a list it BLPOPs), and return it."""
    if reply_to:
        pipe = redis_client().pipeline()
        pipe.rpush(reply_to, json.dumps(body))
        pipe.expire(reply_to, REPLY_TTL_S)
        pipe.execute()
    return body


def _wait_applied(key: tuple[str, int], min_position: str | None, wait_until: float | None) -> bool:
    """Until this process has applied shard `key`'s log up to `min_position`, or `wait_until`
    (epoch seconds) has passed; whether it got there."""
    if not min_position:
        return True
    deadline = wait_until if wait_until is not None else time.time()
    while True:
        state = owner().shards.get(key)  # a reload may replace the state meanwhile
        if state is not None and at_least(state.position, min_position):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(WAIT_POLL_S)


@app.task(name=queues.SHARD_SEARCH)
def shard_search(cid: str, shard: int, query: dict[str, Any], k: int,
                 filter: dict[str, Any] | None = None, reply_to: str | None = None,
                 min_position: str | None = None, wait_until: float | None = None) -> dict[str, Any]:
    """Top-k of one shard: {"shard", "hits": [{"id", "score", "scores", "text", "metadata"}]},
    plus "applied": whether `min_position` was reached, or "error" when the shard cannot answer."""
    own = owner()
    state = own.get(cid, shard)
    if state is None:
        refused = own.refused.get((cid, shard))
        if refused:
            return _reply(reply_to, {"shard": shard, "hits": [], "error": refused[0]})
        return _reply(reply_to, {"shard": shard, "hits": []})
    applied = _wait_applied((cid, shard), min_position, wait_until)
    state = own.shards.get((cid, shard)) or state
    fused = _query_from_message(query)
    started = time.perf_counter()
    hits = state.index.search(fused.vector, k, filter=filter or None, return_vectors=True)
    metrics.record_shard_search(redis_client(), cid, shard, time.perf_counter() - started)
    body = {"shard": shard, "hits": [
        {"id": h.id, "score": float(h.score), "scores": fused.score_parts(h.vector),
         "text": h.record.text, "metadata": h.record.metadata}
        for h in hits]}
    if min_position:
        body["applied"] = applied
    if own.replica:
        body["replica"] = True
    return _reply(reply_to, body)


@app.task(name=queues.GET_ITEM)
def get_item(cid: str, shard: int, item_id: str, thumbnail: bool = False) -> dict[str, Any] | None:
    state = owner().get(cid, shard)
    record = state.index.get(item_id) if state is not None else None
    if record is None:
        return None
    return {"id": record.id, "text": record.text, "metadata": record.metadata,
            "has_image": record.has_image, "shard": shard,
            "thumbnail_b64": base64.b64encode(record.thumbnail).decode()
            if thumbnail and record.thumbnail else None}


def run(slot: int | None, concurrency: int, replica: bool = False) -> None:
    """Claim a slot (or a replica lease on one), load its shards, then serve its queue until stopped."""
    from workers.lease import claim_replica, claim_slot

    global _owner
    cfg = settings()
    if replica:
        lease = claim_replica(redis_client(), cfg.shard_slots, slot)
        log.info("read replica of shard slot %d of %d (%s)", lease.slot, cfg.shard_slots, lease.key)
    else:
        lease = claim_slot(redis_client(), cfg.shard_slots, slot)
        log.info("owning shard slot %d of %d", lease.slot, cfg.shard_slots)
    _owner = ShardOwner(lease.slot, cfg, redis_client(), replica=replica, lease=lease)
    _owner.start()
    # Serve only once the logs were replayed to their end, so no search sees a half-loaded shard.
    started = time.monotonic()
    while not _owner.caught_up.wait(10):
        log.info("slot %d: still replaying the logs (%.0f s)", lease.slot, time.monotonic() - started)
    log.info("slot %d: caught up with the logs in %.1f s", lease.slot, time.monotonic() - started)
    name = f"shard{lease.slot}{'r' if replica else ''}-{os.getpid()}@%h"
    try:
        app.worker_main(["worker", "-Q", queues.shard_queue(lease.slot), "-P", "threads",
                         "-c", str(concurrency), "-n", name,
                         "--without-gossip", "--without-mingle", "-l", cfg.log_level])
    finally:
        _owner.stop()
        lease.release()
