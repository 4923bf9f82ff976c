"""The encode tasks of an API ingest: sent by the API, sent again by the stuck-job reaper.

Before it sends any task, the API stages the uploaded bytes (shared.store.staging) and creates
the job with each item's encode message (`jobs.create_job(messages=...)`: index, id, text,
metadata and image source, what `mmsearch.encode_items` gets for the item). A finished task
drops its items' messages and staged bytes (`release`). So an item whose task message was lost
(kombu's Redis transport pops a message and only then records it as unacknowledged, in a second
command: celery/celery#7950) or never sent (a request cut off halfway) can be sent again from
Redis (workers.reaper). `send` is the one place that turns messages into tasks.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import redis

from shared.store import keys, queues

if TYPE_CHECKING:
    from celery import Celery


def send(celery: "Celery", job_id: str, collection: str, cid: str, messages: list[dict[str, Any]],
         batch: int) -> int:
    """Send the items' messages as `encode_items` tasks of `batch` items each; how many tasks."""
    sent = 0
    for start in range(0, len(messages), batch):
        celery.send_task(queues.ENCODE_ITEMS, queue=queues.ENCODE, kwargs={
            "job_id": job_id, "collection": collection, "cid": cid, "items": messages[start:start + batch]})
        sent += 1
    return sent


def kept(r: redis.Redis, job_id: str) -> bool:
    """Whether the job keeps encode messages (an API ingest with items not counted yet)."""
    return bool(r.exists(keys.job_messages(job_id)))


def messages(r: redis.Redis, job_id: str, indexes: list[int]) -> dict[int, dict[str, Any]]:
    """The kept message of each item of `indexes` that has one."""
    if not indexes:
        return {}
    found = r.hmget(keys.job_messages(job_id), indexes)
    return {index: json.loads(raw) for index, raw in zip(indexes, found) if raw is not None}


def _staged_key(message: dict[str, Any]) -> str | None:
    return (message.get("image") or {}).get("staged")


def bytes_gone(r: redis.Redis, items: dict[int, dict[str, Any]]) -> set[int]:
    """Indexes of the messages whose uploaded bytes are no longer staged (expired, or the
    collection was deleted)."""
    staged = [(index, key) for index, message in items.items() if (key := _staged_key(message))]
    pipe = r.pipeline(transaction=False)
    for _, key in staged:
        pipe.exists(key)
    return {index for (index, _), there in zip(staged, pipe.execute() if staged else []) if not there}


def release(r: redis.Redis, job_id: str, items: list[dict[str, Any]]) -> None:
    """Drop the staged bytes and kept messages of items that a task has counted, in one round trip."""
    if not items:
        return
    pipe = r.pipeline(transaction=False)
    staged = [key for item in items if (key := _staged_key(item))]
    if staged:
        pipe.delete(*staged)
    pipe.hdel(keys.job_messages(job_id), *[item["index"] for item in items])
    pipe.execute()
