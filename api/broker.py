"""The API's Celery client: sends tasks by name, waits for the answers it needs.

`workers.celery_app.app` is configured from the process-wide settings when it is imported.
`make_celery` builds a client with that app's configuration (JSON only, transport options,
routes) but with the broker and result backend of the Flask app's own settings, so
`create_app({"redis_url": ...})` talks to that Redis whatever the environment says, and two
apps in one process never share a connection pool.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from api.errors import ApiError
from shared.config import Settings
from shared.redis_conn import redis_url
from workers.celery_app import app as worker_app

log = logging.getLogger(__name__)

# Worker-side settings that mean nothing to a client.
_NOT_COPIED = {"include", "deprecated_settings"}


def make_celery(settings: Settings) -> Celery:
    url = redis_url(settings)
    client = Celery("mmsearch-api", set_as_current=False)
    conf = worker_app.conf.table(with_defaults=False, censored=False)
    client.conf.update({k: v for k, v in conf.items() if k not in _NOT_COPIED})
    client.conf.update(broker_url=url, result_backend=url, result_expires=settings.job_ttl_s)
    return client


def wait_result(result: AsyncResult, timeout_s: float, what: str) -> Any:
    """The task's return value; 503 when it does not come in time, 500 when the task failed."""
    try:
        value = result.get(timeout=timeout_s, propagate=False)
    except CeleryTimeoutError as exc:
        raise ApiError(503, "unavailable", f"{what} timed out", {"timeout_s": timeout_s}) from exc
    if result.state != states.SUCCESS:
        log.error("%s (task %s) ended in %s: %r", what, result.id, result.state, value)
        raise ApiError(500, "internal", f"{what} failed")
    result.forget()
    return value
