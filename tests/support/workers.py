"""Workers reporting ready (shared.store.roles) for tests that run the API without them."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

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
