"""Uploaded image bytes staged in Redis (with a TTL) until an encode worker picks them up.

The Celery message carries only the key, never the bytes.
"""
from __future__ import annotations

import redis

from shared.store import keys


def stage(r: redis.Redis, cid: str, job_id: str, blobs: dict[int, bytes], ttl_s: int) -> dict[int, str]:
    """Store each item's bytes; returns item index -> staging key."""
    out = {}
    pipe = r.pipeline(transaction=False)
    for index, data in blobs.items():
        key = keys.staged(cid, job_id, index)
        pipe.set(key, data, ex=ttl_s)
        out[index] = key
    pipe.execute()
    return out


def fetch(r: redis.Redis, key: str) -> bytes | None:
    return r.get(key)


def release(r: redis.Redis, staged_keys: list[str]) -> None:
    if staged_keys:
        r.delete(*staged_keys)


def purge_collection(r: redis.Redis, cid: str) -> int:
    removed = 0
    for key in r.scan_iter(match=keys.staged_pattern(cid), count=500):
        removed += r.delete(key)
    return removed
