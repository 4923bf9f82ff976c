"""Job states seen from the client: which are final, and one state and one set of counters for several jobs."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

FINAL_STATES = frozenset({"succeeded", "completed_with_errors", "failed", "cancelled"})


def overall_state(bodies: Sequence[Mapping[str, Any]]) -> str:
    """One state for several jobs: the worst final state once all are final, else running/queued."""
    states = [b.get("state", "") for b in bodies]
    if not states:
        return "succeeded"
    if not all(s in FINAL_STATES for s in states):
        return "running" if any(s != "queued" for s in states) else "queued"
    for worst in ("failed", "cancelled", "completed_with_errors"):
        if worst in states:
            return worst
    return "succeeded"


def summed_counters(bodies: Iterable[Mapping[str, Any]]) -> tuple[int, int, int, str]:
    """(done, failed, total, overall state) of several job bodies together."""
    bodies = list(bodies)
    done = sum(b.get("done", 0) for b in bodies)
    failed = sum(b.get("failed", 0) for b in bodies)
    total = sum(b.get("total", 0) for b in bodies)
    return done, failed, total, overall_state(bodies)
