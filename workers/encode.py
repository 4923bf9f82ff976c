"""Encode workers (queue "encode"): item images and captions -> fused vectors -> shard logs.

One task carries a batch of items of one job. The worker runs several tasks at once in threads
(`python -m workers encode -c N`): each task's images are fetched, decoded, resized for the model
and thumbnailed in a decode pool (one thread per core), then handed to the process's one model
thread (shared.encoding.model_batcher), which runs the images of all waiting tasks as one model batch
while other tasks decode. The features are fused with their text, and each item is appended to
its shard's log and counted in its job in one atomic step. A bad item fails alone, with a reason
in the job's errors; a redelivered task skips the items its job already counted, so a task
that the stuck-job reaper sent again while its first message was only late counts nothing twice.
Once its items are counted, the task drops their staged bytes and the encode messages their job
kept for the reaper (shared.store.encode_tasks).

Messages are acknowledged late: a worker killed mid-batch leaves its message unacknowledged and
Redis hands it to a worker again after the visibility timeout (the tasks run in threads of the
worker process, so there is no pool process to die alone). Each start of a task is counted in
Redis by task id; a message that has started `MMSEARCH_TASK_MAX_DELIVERIES` times without
finishing (a poison batch that kills its worker) fails its uncounted items with
`retries_exhausted` instead of looping for ever. A batch whose model answer has not come by the
soft time limit fails what it has not counted with `timeout` (the thread pool does not enforce
Celery's time limits, so the task keeps its own deadline).

Losing Redis mid-batch (a restart) fails nothing: the task rejects its message with requeue
(or, while Redis is still away, leaves it unacknowledged for the visibility timeout), so the
batch runs again and skips what was already counted. A task that merely raised would be
acknowledged as failed and its message gone with its items uncounted.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
from celery.exceptions import Reject, SoftTimeLimitExceeded

from shared.store import catalog, encode_tasks, jobs, keys, queues, shardlog
from shared.runtime import logs, metrics
from shared.errors import MMSearchError
from shared.index.labels import shard_for
from shared.encoding.sources import load_image_bytes
from shared.runtime.celery_config import soft_time_limit
from workers.celery_app import app
from workers.resources import redis_client, settings

if TYPE_CHECKING:
    from shared.encoding.encoders import CollectionEncoder

log = logging.getLogger(__name__)
_decoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="decode")


@dataclass
class DecodedImage:
    """An item's image as the model takes it, and its thumbnail (when the collection keeps them)."""

    model_input: np.ndarray
    thumbnail: bytes | None


def _decode(item: dict[str, Any], encoder: "CollectionEncoder", thumbnails: bool) -> DecodedImage | MMSearchError | None:
    """The item's image ready for the model, None when it has none, or the error that stopped it."""
    from shared.encoding.imagedecode import decode_image, make_thumbnail

    source = item.get("image")
    if not source:
        return None
    cfg = settings()
    try:
        data = load_image_bytes(source, redis_client(), cfg)
        rgb = decode_image(data, max_pixels=cfg.max_image_pixels, max_bytes=cfg.max_image_bytes)
    except MMSearchError as exc:
        return exc
    return DecodedImage(encoder.prepare_image(rgb), make_thumbnail(rgb) if thumbnails else None)


def _fail(job_id: str, item: dict[str, Any], code: str, message: str) -> None:
    jobs.record_failure(redis_client(), job_id, item["index"], item["id"], code, message)


def _encode_and_log(job_id: str, coll: catalog.Collection, todo: list[dict[str, Any]],
                    outcome: dict[str, int], deadline: float) -> None:
    """Decode, encode and log the items of `todo`, counting each in the job; SoftTimeLimitExceeded
    when the model has not answered by `deadline` (time.monotonic)."""
    from shared.encoding.encoders import collection_encoder

    r = redis_client()
    encoder = collection_encoder(coll.image_model, coll.text_model, coll.precision, coll.encoder_setting)
    decoded = list(_decoders.map(lambda item: _decode(item, encoder, coll.store_thumbnails), todo))
    ready, images = [], []
    for item, image in zip(todo, decoded):
        if isinstance(image, MMSearchError):
            _fail(job_id, item, image.code, str(image))
            outcome["failed"] += 1
        else:
            ready.append(item)
            images.append(image)

    try:
        vectors = encoder.encode_items([img.model_input if img else None for img in images],
                                       [it.get("text") for it in ready],
                                       timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError as exc:
        raise SoftTimeLimitExceeded(str(exc)) from exc
    metrics.record_encoded(r, sum(img is not None for img in images), sum(v is not None for v in vectors))
    for item, image, encoded in zip(ready, images, vectors):
        if encoded is None:
            _fail(job_id, item, "invalid_item", "the item has no image and no known word in its text")
            outcome["failed"] += 1
            continue
        thumb = image.thumbnail if image is not None else None
        entry = shardlog.LogEntry("upsert", item["id"], encoded.vector, item.get("text"),
                                  item.get("metadata") or {}, encoded.has_image, thumb)
        status = shardlog.log_item(r, coll.cid, shard_for(item["id"], coll.shards), job_id, item["index"], entry)
        if status == shardlog.COLLECTION_GONE:
            _fail(job_id, item, "not_found", f"collection {coll.name!r} was deleted")
            outcome["failed"] += 1
        else:
            outcome["done"] += status == shardlog.LOGGED


def count_delivery(task_id: str | None) -> int:
    """This start of the task is its n-th (1 the first time); kept as long as a job."""
    if not task_id:
        return 1
    r, key = redis_client(), keys.deliveries(task_id)
    pipe = r.pipeline()
    pipe.incr(key)
    pipe.expire(key, settings().job_ttl_s)
    return int(pipe.execute()[0])


REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@app.task(name=queues.ENCODE_ITEMS, bind=True)
def encode_items(self, job_id: str, collection: str, cid: str, items: list[dict[str, Any]]) -> dict[str, int]:
    logs.bind(job_id=job_id)  # every log line of this task names its job
    try:
        return _encode_items(self.request.id, job_id, collection, cid, items)
    except REDIS_DOWN as exc:
        log.warning("job %s: Redis went away during the batch (%s); handing the message back", job_id, exc)
        try:  # this start does not count against the delivery limit
            if self.request.id:
                redis_client().decr(keys.deliveries(self.request.id))
        except REDIS_DOWN:
            pass
        raise Reject(exc, requeue=True) from exc


def _encode_items(task_id: str | None, job_id: str, collection: str, cid: str,
                  items: list[dict[str, Any]]) -> dict[str, int]:
    deadline = time.monotonic() + soft_time_limit(settings())
    r = redis_client()
    coll = catalog.get_collection(r, collection)
    already = jobs.counted(r, job_id)
    todo = [it for it in items if it["index"] not in already]
    outcome = {"done": 0, "failed": 0, "skipped": len(items) - len(todo)}
    delivery = count_delivery(task_id) if todo else 1
    limit = settings().task_max_deliveries
    refusal = None
    if coll is None or coll.cid != cid:
        refusal = ("not_found", f"collection {collection!r} no longer exists")
    elif jobs.is_cancelled(r, job_id):
        refusal = ("cancelled", "the job was cancelled before this item ran")
    elif delivery > limit:
        log.error("job %s: task %s started %d times (limit %d); failing its items", job_id, task_id,
                  delivery, limit)
        refusal = ("retries_exhausted", f"the batch holding this item was started {delivery - 1} times and its "
                   "worker never finished it (MMSEARCH_TASK_MAX_DELIVERIES)")
    if refusal is not None:
        for item in todo:
            _fail(job_id, item, *refusal)
        outcome["failed"] += len(todo)
    else:
        jobs.mark_started(r, job_id)
        try:
            _encode_and_log(job_id, coll, todo, outcome, deadline)
        except REDIS_DOWN:
            raise  # nothing is failed for that: the batch runs again
        except Exception as exc:
            # Never leave items uncounted (the job would stay running): fail what is left.
            timeout = isinstance(exc, SoftTimeLimitExceeded)
            log.exception("job %s: encoding a batch %s", job_id, "ran out of time" if timeout else "failed")
            left = [it for it in todo if it["index"] not in jobs.counted(r, job_id)]
            for item in left:
                if timeout:
                    _fail(job_id, item, "timeout", "encoding the batch took longer than MMSEARCH_TASK_TIME_LIMIT_S")
                else:
                    _fail(job_id, item, "internal", "encoding failed on the worker; see its log")
            outcome["failed"] += len(left)
    encode_tasks.release(r, job_id, items)  # every item of the batch is counted now
    if task_id:
        r.delete(keys.deliveries(task_id))
    log.info("job %s: %s", job_id, outcome)
    return outcome
