"""The per-shard durable write log: one Redis stream per (collection, shard).

Encode workers (and the API, for deletes) append; only the shard's owner reads and applies.
`log_item` appends an entry *and* counts the item done in its job in one Lua script: an item
is done exactly when its entry is in the log, a redelivered item is neither logged nor counted
twice, and nothing is appended for a collection that has been deleted meanwhile.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import redis

from shared.store import keys
from shared.store.jobs import now
from shared.store.serializers import vector_from_bytes, vector_to_bytes

_LOG_ITEM = """
-- KEYS: live cids, log, job, items, marks ; ARGV: cid, shard, index, now, field, value, ...
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return -2 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[4], ARGV[3]) == 1 then return 0 end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('HSET', KEYS[4], ARGV[3], 'done')
redis.call('HINCRBY', KEYS[3], 'done', 1)
redis.call('HSETNX', KEYS[3], 'started_at', ARGV[4])
redis.call('HSET', KEYS[3], 'updated_at', ARGV[4])
redis.call('HSET', KEYS[5], ARGV[2], id)
return id
"""

LOGGED, ALREADY_COUNTED, JOB_GONE, COLLECTION_GONE = "logged", "already_counted", "job_gone", "collection_gone"


@dataclass
class LogEntry:
    """One write: `op` is "upsert" (with vector and record) or "delete" (with the `job` that asked
    for it, so the owner can report an id that was not there)."""

    op: str
    item_id: str
    vector: np.ndarray | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    has_image: bool = False
    thumbnail: bytes | None = None
    job: str | None = None

    def to_fields(self) -> dict[str, bytes]:
        fields = {"op": self.op.encode(), "id": self.item_id.encode()}
        if self.op == "delete" and self.job:
            fields["job"] = self.job.encode()
        if self.op == "upsert":
            assert self.vector is not None
            fields["vec"] = vector_to_bytes(self.vector)
            fields["rec"] = json.dumps({"text": self.text, "metadata": self.metadata,
                                        "has_image": self.has_image}).encode()
            if self.thumbnail:
                fields["thumb"] = self.thumbnail
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> "LogEntry":
        op = fields[b"op"].decode()
        item_id = fields[b"id"].decode()
        if op != "upsert":
            job = fields.get(b"job")
            return cls(op, item_id, job=job.decode() if job else None)
        rec = json.loads(fields[b"rec"])
        return cls(op, item_id, vector_from_bytes(fields[b"vec"]), rec.get("text"),
                   rec.get("metadata") or {}, bool(rec.get("has_image")), fields.get(b"thumb"))


def _log_item_call(cid: str, shard: int, job_id: str, index: int, entry: LogEntry) -> list[Any]:
    """The arguments of the _LOG_ITEM script for one entry."""
    args: list[Any] = [cid, shard, index, now()]
    for name, value in entry.to_fields().items():
        args += [name, value]
    return [_LOG_ITEM, 5, keys.LIVE_CIDS, keys.shard_log(cid, shard), keys.job(job_id),
            keys.job_items(job_id), keys.job_marks(job_id), *args]


def _outcome(result: Any) -> str:
    if result == 0:
        return ALREADY_COUNTED
    if result == -1:
        return JOB_GONE
    if result == -2:
        return COLLECTION_GONE
    return LOGGED


def log_item(r: redis.Redis, cid: str, shard: int, job_id: str, index: int, entry: LogEntry) -> str:
    """Append `entry` to the shard's log and count item `index` of the job done, atomically."""
    return _outcome(r.eval(*_log_item_call(cid, shard, job_id, index, entry)))


def log_items(r: redis.Redis, cid: str, job_id: str, entries: list[tuple[int, LogEntry]],
              batch: int = 1000, first: int = 0) -> list[str]:
    """`log_item` for item first + i of the job = entries[i] (shard, entry), `batch` per
    pipelined round trip; the outcome of each, in order."""
    outcomes: list[str] = []
    for start in range(0, len(entries), batch):
        pipe = r.pipeline(transaction=False)
        for index, (shard, entry) in enumerate(entries[start:start + batch], first + start):
            pipe.eval(*_log_item_call(cid, shard, job_id, index, entry))
        outcomes += [_outcome(result) for result in pipe.execute()]
    return outcomes


def read_entries(r: redis.Redis, positions: dict[str, str], count: int, block_ms: int | None
                 ) -> list[tuple[str, list[tuple[str, LogEntry]]]]:
    """Entries after each stream's position: [(stream key, [(entry id, entry), ...]), ...]."""
    if not positions:
        return []
    reply = r.xread(positions, count=count, block=block_ms)
    out = []
    for stream, entries in reply or []:
        key = stream.decode() if isinstance(stream, bytes) else stream
        out.append((key, [(eid.decode(), LogEntry.from_fields(f)) for eid, f in entries]))
    return out


def trim_before(r: redis.Redis, cid: str, shard: int, covered_id: str) -> int:
    """Drop entries strictly older than `covered_id` (which a verified snapshot covers).

    The shard state's `trimmed` field says so first: a reader (a replica, or an owner whose
    lease lapsed) whose position is older than it may have missed entries and must reload a
    snapshot instead of reading on. Written before the trim, so whoever finds entries missing
    also finds the mark.
    """
    r.hset(keys.shard_state(cid, shard), "trimmed", covered_id)
    return r.xtrim(keys.shard_log(cid, shard), minid=covered_id, approximate=False)


def trimmed_before(r: redis.Redis, cid: str, shard: int) -> str | None:
    """The log position before which the shard's entries may have been trimmed (None: never)."""
    value = r.hget(keys.shard_state(cid, shard), "trimmed")
    return value.decode() if value else None


def delete_logs(r: redis.Redis, cid: str, shards: Iterable[int]) -> None:
    r.delete(*[keys.shard_log(cid, s) for s in shards], *[keys.shard_state(cid, s) for s in shards])
