"""The API's Celery client: sends tasks by name, waits for the answers it needs.

The client is built from mmsearch's one Celery configuration (shared.runtime.celery_config)
with the Flask app's own settings, so `create_app({"redis_url": ...})` talks to that Redis
whatever the environment says, and two apps in one process never share a connection pool.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from api.errors import ApiError

log = logging.getLogger(__name__)


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
