"""One search's fan-out to the shard slots, and the merge of what they answered.

`ask_slots` sends one search request per live slot (shared.store.replies, on the slot's list
keys.slot_searches; see workers.shard), naming every shard of the collection that the slot
holds, all in one pipelined write; whichever process of the slot takes one searches those
shards and answers for all of them at once. The answers are gathered until every slot answered
or the shard deadline (`MMSEARCH_SHARD_TIMEOUT_S`) passed. `merged_body` merges whatever
answered by then: a shard that died, hangs or cannot serve counts as not answered
(`shards.answered < total`, with a message saying why), so a search never waits longer than
the shard deadline. A page past the first (`offset`) asks every shard for `offset + k`, merges
that deep and answers its slice (`page_of`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from shared.index.merge import merge_topk
from shared.store import keys, queues, replies

WAIT_MARGIN_S = 0.25  # a shard stops waiting for read-your-writes this long before the deadline


@dataclass(frozen=True)
class SlotAnswers:
    """What the slots asked for a search answered."""

    searched: int                 # shards asked (those of live slots)
    answers: list[dict[str, Any]]  # one body per shard that answered in time, failed ones too

    @property
    def answered(self) -> list[dict[str, Any]]:
        return [a for a in self.answers if not a.get("error")]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [a for a in self.answers if a.get("error")]


def ask_slots(r: redis.Redis, search_id: str, cid: str, targets: dict[int, list[int]], query: dict[str, Any],
              k: int, filter: dict[str, Any] | None, marks: dict[int, str], timeout_s: float) -> SlotAnswers:
    """Search `targets` (slot -> its shards) with the encoded `query` within `timeout_s`; with
    `marks` (shard -> log position), each shard first waits until it has applied that far."""
    if not targets:
        return SlotAnswers(0, [])
    deadline = time.monotonic() + timeout_s
    now = time.time()
    wait_until = now + max(0.0, timeout_s - WAIT_MARGIN_S)
    requests = {keys.slot_searches(slot): {
        "op": queues.SLOT_SEARCH, "cid": cid, "shards": shards, "query": query, "k": k, "filter": filter,
        "wait_until": wait_until, "min_positions": {str(s): marks[s] for s in shards if s in marks}}
        for slot, shards in targets.items()}
    reply_key = keys.search_replies(search_id)
    replies.send(r, requests, reply_key, expires=now + timeout_s)
    slot_replies = replies.gather(r, reply_key, len(targets), deadline)
    return SlotAnswers(sum(len(shards) for shards in targets.values()),
                       [answer for reply in slot_replies for answer in reply["answers"]])


def merged_body(result: SlotAnswers, k: int, total: int, started: float, timeout_s: float) -> dict[str, Any]:
    """The search's answer from the shards that answered (`started`: its epoch second)."""
    answered = sorted(result.answered, key=lambda a: a["shard"])
    body: dict[str, Any] = {"hits": merge_topk([a["hits"] for a in answered], k), "k": k,
                            "took_ms": round((time.time() - started) * 1000, 2),
                            "shards": {"total": total, "answered": len(answered)}, "cached": False}
    if len(answered) < total:
        body["shards"]["message"] = _not_searched(result, total, timeout_s)
    return body


def page_of(body: dict[str, Any], offset: int, k: int) -> dict[str, Any]:
    """Hits `offset`..`offset + k - 1` of a merged answer of depth `offset + k`: pages of one
    ranking that neither overlap nor leave a hit out."""
    return {**body, "hits": body["hits"][offset:offset + k], "k": k, "offset": offset}


def _not_searched(result: SlotAnswers, total: int, timeout_s: float) -> str:
    """Why some of the `total` shards are missing from the answer."""
    reasons = []
    if total - result.searched:
        reasons.append(f"{total - result.searched} had no live owner or replica")
    if result.searched - len(result.answers):
        reasons.append(f"{result.searched - len(result.answers)} did not answer within {timeout_s:g} s")
    failed = result.failed
    if failed:
        reasons.append(f"{len(failed)} could not serve ({failed[0]['error']})")
    return f"{total - len(result.answered)} shard(s) not searched: " + "; ".join(reasons)
