"""For tests that run the API without workers: workers reporting ready (shared.store.roles),
and the task messages the API queued for them."""
from __future__ import annotations

import base64
import json
from contextlib import contextmanager
from typing import Any, Iterator

import redis

from shared.store.roles import READY, RoleReporter


@contextmanager
def reporting_ready(r: redis.Redis, roles: tuple[str, ...] = ("encode", "query")) -> Iterator[list[RoleReporter]]:
    """One process of each role reporting ready, heartbeat running, as a started worker does;
    withdrawn on exit."""
    reporters = [RoleReporter(r, role, process=f"test-{role}") for role in roles]
    for reporter in reporters:
        reporter.stage(READY)
        reporter.start()
    try:
        yield reporters
    finally:
        for reporter in reporters:
            reporter.withdraw()


def queued(r: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The kwargs of the task messages waiting in a queue (kombu's Redis list, JSON bodies), in
    the order they were sent, each with its task name (`_task`) and id (`_id`)."""
    messages = [json.loads(raw) for raw in r.lrange(queue, 0, -1)]
    return [json.loads(base64.b64decode(m["body"]))[1] | {"_task": m["headers"]["task"], "_id": m["headers"]["id"]}
            for m in reversed(messages)]
