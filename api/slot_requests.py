"""Requests from the API to the shard slots (item look-ups, existence checks, pages of items):
one request per slot pushed onto the slot's list (shared.store.replies, served by the slot's
owner and read replicas as its searches are; see workers.shard), answers awaited up to
MMSEARCH_SHARD_TIMEOUT_S."""
from __future__ import annotations

import logging
from typing import Any, Iterable

from api.context import services
from api.errors import ApiError
from shared.store import jobs, keys, replies, slots

log = logging.getLogger(__name__)


def require_live(wanted: Iterable[int]) -> None:
    """503 naming the slots among `wanted` that have no live owner or replica."""
    wanted = set(wanted)
    dead = sorted(wanted - slots.live_slots(services().redis, wanted))
    if dead:
        raise ApiError(503, "unavailable", f"shard slot(s) {dead} have no live owner or replica", {"slots": dead})


def ask_slots(requests: dict[int, dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """The answers of the slots' owners or replicas to one request each (slot -> request; 503
    when not all come within MMSEARCH_SHARD_TIMEOUT_S, 500 when one says it failed there)."""
    svc = services()
    timeout = svc.settings.shard_timeout_s
    answers = replies.ask(svc.redis, {keys.slot_searches(slot): body for slot, body in requests.items()},
                          keys.search_replies(jobs.new_job_id()), timeout)
    if len(answers) < len(requests):
        raise ApiError(503, "unavailable", f"{what} timed out", {"timeout_s": timeout})
    failed = [a["error"] for a in answers if a.get("error")]
    if failed:
        log.error("%s failed on a shard slot: %s", what, failed[0])
        raise ApiError(500, "internal", f"{what} failed")
    return answers
