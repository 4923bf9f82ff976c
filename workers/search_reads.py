"""What the query worker reads before it sends a search: the collection, and in one pipelined
read whether it is live, which of its slots are, and either the shard logs' ends (for the result
cache) or, with `after_job`, that job's marks.

A collection's settings are read from the catalog once per process (they never change for a
collection id).
"""
from __future__ import annotations

from dataclasses import dataclass

import redis

from shared.store import catalog, keys, queues
from shared.store.catalog import Collection
from shared.store.slots import liveness_keys
from workers import search_cache
from workers.search_refused import SearchRefused

COLLECTIONS_KEPT = 256

_collections: dict[str, Collection] = {}  # cid -> its collection, read once per process


@dataclass(frozen=True)
class SearchState:
    """The collection's slots as a search finds them."""

    slot_shards: dict[int, list[int]]  # each slot holding shards of the collection -> those shards
    live: set[int]                     # the slots with a live owner or replica
    ends: search_cache.LogEnds | None  # the shard logs' last ids (without after_job)
    marks: dict[int, str]              # shard -> after_job's log position there
    counted: bool                      # whether after_job had counted all its items

    @property
    def all_live(self) -> bool:
        return len(self.live) == len(self.slot_shards)

    def targets(self) -> dict[int, list[int]]:
        """The live slots, each with its shards of the collection."""
        return {slot: shards for slot, shards in self.slot_shards.items() if slot in self.live}


def not_found(name: str) -> SearchRefused:
    return SearchRefused("not_found", f"collection {name!r} does not exist")


def known_collection(r: redis.Redis, name: str, cid: str) -> Collection:
    """The collection `name` if its id is `cid` (from this process's copy once read)."""
    coll = _collections.get(cid)
    if coll is None:
        coll = catalog.get_collection(r, name)
        if coll is None or coll.cid != cid:
            raise not_found(name)
        if len(_collections) >= COLLECTIONS_KEPT:
            _collections.clear()
        _collections[cid] = coll
    return coll


def read_state(r: redis.Redis, coll: Collection, shard_slots: int, after_job: str | None) -> SearchState:
    """The state of `coll` for a search, in one round trip; refused when the collection was
    deleted, or `after_job` is not a job of it."""
    slot_shards: dict[int, list[int]] = {}
    for shard in range(coll.shards):
        slot_shards.setdefault(queues.slot_for_shard(shard, shard_slots), []).append(shard)
    slot_shards = dict(sorted(slot_shards.items()))
    pipe = r.pipeline(transaction=False)
    pipe.sismember(keys.LIVE_CIDS, coll.cid)
    for slot in slot_shards:
        pipe.exists(*liveness_keys(slot))
    if after_job:
        pipe.hmget(keys.job(after_job), "cid", "total", "done", "failed")
        pipe.hgetall(keys.job_marks(after_job))
    else:
        search_cache.queue_log_ends(pipe, coll.cid, coll.shards)
    read = pipe.execute()
    if not read[0]:
        raise not_found(coll.name)
    live = {slot for slot, alive in zip(slot_shards, read[1:1 + len(slot_shards)]) if alive}
    rest = read[1 + len(slot_shards):]
    if not after_job:
        return SearchState(slot_shards, live, search_cache.log_ends(rest[0]), {}, True)
    marks, counted = _job_marks(coll.cid, after_job, rest[0], rest[1])
    return SearchState(slot_shards, live, None, marks, counted)


def _job_marks(cid: str, after_job: str, job: list[bytes | None],
               marks: dict[bytes, bytes]) -> tuple[dict[int, str], bool]:
    """From the job's record and marks: its log position per shard and whether all its items
    were counted."""
    if job[0] is None:
        raise SearchRefused("not_found", f"job {after_job!r} does not exist (or has expired)")
    if job[0].decode() != cid:
        raise SearchRefused("invalid_request", f"job {after_job!r} belongs to another collection")
    total, done, failed = (int(v or 0) for v in job[1:])
    return {int(s): m.decode() for s, m in marks.items()}, done + failed >= total
