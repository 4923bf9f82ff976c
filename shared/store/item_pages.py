"""A page of a collection's items by id, asked of every shard slot at once (op `list`, answered
by workers.item_pages): the requests, and the merge of the slots' answers. Used by the API's
listing and deletes by filter, and by exports.

Each slot is asked for one more item than the page holds, so the merge knows whether a next
page exists without asking again.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any

from shared.store import queues
from shared.store.catalog import Collection


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None  # the last id of the page when more come after it
    unserved: list[int]      # shards not loaded where their slot answered: the page skips their items


def slot_requests(coll: Collection, shard_slots: int, after: str | None, limit: int,
                  filter: dict[str, Any] | None, fields: list[str]) -> dict[int, dict[str, Any]]:
    """Slot -> the `list` request for its shards of `coll`."""
    by_slot: dict[int, list[int]] = {}
    for shard in range(coll.shards):
        by_slot.setdefault(queues.slot_for_shard(shard, shard_slots), []).append(shard)
    return {slot: {"op": queues.SLOT_LIST, "cid": coll.cid, "shards": shards, "after": after, "limit": limit + 1,
                   "filter": filter, "fields": fields} for slot, shards in by_slot.items()}


def merged(answers: list[dict[str, Any]], limit: int) -> Page:
    """The page of `limit` items that the slots' answers (`{"page": ...}`) make together."""
    unserved = sorted(shard for answer in answers for shard in answer["page"]["unserved"])
    items = list(itertools.islice(heapq.merge(*(a["page"]["items"] for a in answers), key=lambda i: i["id"]),
                                  limit + 1))
    return Page(items[:limit], items[limit - 1]["id"] if len(items) > limit else None, unserved)
