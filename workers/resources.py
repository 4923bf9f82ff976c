"""Per-process resources of a worker: its settings and its Redis client (made once)."""
from __future__ import annotations

import functools

import redis

from shared.runtime.config import Settings, get_settings
from shared.runtime.redis_conn import connect


def settings() -> Settings:
    return get_settings()


@functools.lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return connect(get_settings())
