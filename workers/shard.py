"""Shard workers (queue "shard.<slot>"): per-shard searches and item look-ups.

`python -m workers shard [--slot N]` takes the lease of a slot, loads its shards (snapshot +
log replay) and then consumes `shard.<slot>` with a thread pool; the owner's applier thread
keeps the indexes up to date with the logs meanwhile.
"""
from __future__ import annotations

import base64
import os
import logging
import time
from typing import Any

from shared import metrics, queues
from shared.fusion import FusedQuery
from shared.serializers import vector_from_b64
from workers.celery_app import app
from workers.resources import redis_client, settings
from workers.shard_owner import ShardOwner

log = logging.getLogger(__name__)

_owner: ShardOwner | None = None


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


@app.task(name=queues.SHARD_SEARCH)
def shard_search(cid: str, shard: int, query: dict[str, Any], k: int,
                 filter: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top-k of one shard: {"shard", "hits": [{"id", "score", "scores", "text", "metadata"}]}."""
    state = owner().get(cid, shard)
    if state is None:
        return {"shard": shard, "hits": []}
    fused = _query_from_message(query)
    started = time.perf_counter()
    hits = state.index.search(fused.vector, k, filter=filter or None, return_vectors=True)
    metrics.record_shard_search(redis_client(), cid, shard, time.perf_counter() - started)
    return {"shard": shard, "hits": [
        {"id": h.id, "score": float(h.score), "scores": fused.score_parts(h.vector),
         "text": h.record.text, "metadata": h.record.metadata}
        for h in hits]}


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


def run(slot: int | None, concurrency: int) -> None:
    """Claim a slot, load its shards, then serve its queue until stopped."""
    from workers.lease import claim_slot

    global _owner
    cfg = settings()
    lease = claim_slot(redis_client(), cfg.shard_slots, slot)
    log.info("owning shard slot %d of %d", lease.slot, cfg.shard_slots)
    _owner = ShardOwner(lease.slot, cfg, redis_client())
    _owner.start()
    try:
        app.worker_main(["worker", "-Q", queues.shard_queue(lease.slot), "-P", "threads",
                         "-c", str(concurrency), "-n", f"shard{lease.slot}-{os.getpid()}@%h",
                         "--without-gossip", "--without-mingle", "-l", cfg.log_level])
    finally:
        _owner.stop()
        lease.release()
