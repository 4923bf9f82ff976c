"""Encode workers (queue "encode"): item images and captions -> fused vectors -> shard logs.

One task carries a batch of items of one job. Images are fetched and decoded in a small thread
pool, encoded in one model batch, fused with their text, and each item is appended to its
shard's log and counted in its job in one atomic step. A bad item fails alone, with a reason in
the job's errors; a redelivered task skips the items its job already counted.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shared import catalog, jobs, logs, metrics, queues, shardlog, staging
from shared.errors import MMSearchError
from shared.labels import shard_for
from shared.sources import load_image_bytes
from workers.celery_app import app
from workers.resources import redis_client, settings

log = logging.getLogger(__name__)
_decoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode")


def _decode(item: dict[str, Any]) -> np.ndarray | MMSearchError | None:
    """The RGB image of an item, None when it has none, or the error that stopped it."""
    from shared.imagedecode import decode_image

    source = item.get("image")
    if not source:
        return None
    cfg = settings()
    try:
        data = load_image_bytes(source, redis_client(), cfg)
        return decode_image(data, max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
    except MMSearchError as exc:
        return exc


def _fail(job_id: str, item: dict[str, Any], code: str, message: str) -> None:
    jobs.record_failure(redis_client(), job_id, item["index"], item["id"], code, message)


def _encode_and_log(job_id: str, coll: catalog.Collection, todo: list[dict[str, Any]],
                    outcome: dict[str, int]) -> None:
    """Decode, encode and log the items of `todo`, counting each in the job."""
    from shared.encoding import collection_encoder
    from shared.imagedecode import make_thumbnail

    r = redis_client()
    decoded = list(_decoders.map(_decode, todo))
    ready, images = [], []
    for item, image in zip(todo, decoded):
        if isinstance(image, MMSearchError):
            _fail(job_id, item, image.code, str(image))
            outcome["failed"] += 1
        else:
            ready.append(item)
            images.append(image)

    encoder = collection_encoder(coll.image_model, coll.text_model)
    vectors = encoder.encode_items(images, [it.get("text") for it in ready])
    metrics.record_encoded(r, sum(img is not None for img in images), sum(v is not None for v in vectors))
    for item, image, encoded in zip(ready, images, vectors):
        if encoded is None:
            _fail(job_id, item, "invalid_item", "the item has no image and no known word in its text")
            outcome["failed"] += 1
            continue
        thumb = make_thumbnail(image) if image is not None and coll.store_thumbnails else None
        entry = shardlog.LogEntry("upsert", item["id"], encoded.vector, item.get("text"),
                                  item.get("metadata") or {}, encoded.has_image, thumb)
        status = shardlog.log_item(r, coll.cid, shard_for(item["id"], coll.shards), job_id, item["index"], entry)
        if status == shardlog.COLLECTION_GONE:
            _fail(job_id, item, "not_found", f"collection {coll.name!r} was deleted")
            outcome["failed"] += 1
        else:
            outcome["done"] += status == shardlog.LOGGED


@app.task(name=queues.ENCODE_ITEMS)
def encode_items(job_id: str, collection: str, cid: str, items: list[dict[str, Any]]) -> dict[str, int]:
    logs.bind(job_id=job_id)  # every log line of this task names its job
    r = redis_client()
    coll = catalog.get_collection(r, collection)
    already = jobs.counted(r, job_id)
    todo = [it for it in items if it["index"] not in already]
    staged_keys = [it["image"]["staged"] for it in items if (it.get("image") or {}).get("staged")]
    outcome = {"done": 0, "failed": 0, "skipped": len(items) - len(todo)}
    refusal = None
    if coll is None or coll.cid != cid:
        refusal = ("not_found", f"collection {collection!r} no longer exists")
    elif jobs.is_cancelled(r, job_id):
        refusal = ("cancelled", "the job was cancelled before this item ran")
    if refusal is not None:
        for item in todo:
            _fail(job_id, item, *refusal)
        outcome["failed"] += len(todo)
    else:
        jobs.mark_started(r, job_id)
        try:
            _encode_and_log(job_id, coll, todo, outcome)
        except Exception:
            # Never leave items uncounted (the job would stay running): fail what is left.
            log.exception("job %s: encoding a batch failed", job_id)
            left = [it for it in todo if it["index"] not in jobs.counted(r, job_id)]
            for item in left:
                _fail(job_id, item, "internal", "encoding failed on the worker; see its log")
            outcome["failed"] += len(left)
    staging.release(r, staged_keys)
    log.info("job %s: %s", job_id, outcome)
    return outcome
