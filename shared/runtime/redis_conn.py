"""The Redis URL every process uses, and client construction.

With no `REDIS_URL`, every process talks to the embedded redis-server that the stack starts
(see `shared.runtime.embedded_redis`) on loopback at `MMSEARCH_REDIS_PORT` (default 6390).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Mapping

import redis

from shared.runtime.config import Settings, get_settings

EMBEDDED_PORT_DEFAULT = 6390


def embedded_port(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return int(env.get("MMSEARCH_REDIS_PORT") or EMBEDDED_PORT_DEFAULT)


def redis_url(settings: Settings | None = None, env: Mapping[str, str] | None = None) -> str:
    settings = settings or get_settings()
    return settings.redis_url or f"redis://127.0.0.1:{embedded_port(env)}/0"


def connect(settings: Settings | None = None) -> redis.Redis:
    """A binary-safe client (bytes in, bytes out) with bounded socket timeouts."""
    return redis.Redis.from_url(redis_url(settings), socket_connect_timeout=5,
                                socket_timeout=30, health_check_interval=30)


def wait_for_redis(settings: Settings | None = None, timeout_s: float = 60.0) -> None:
    """Block until Redis answers (processes of a stack may start before it)."""
    client = connect(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
            if time.monotonic() > deadline:
                raise
            logging.getLogger(__name__).info("waiting for Redis at %s", redis_url(settings))
            time.sleep(0.5)
