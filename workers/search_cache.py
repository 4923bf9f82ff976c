"""The query worker's cache of merged search answers, valid only while the collection is unchanged.

Every write to a collection (upsert or delete) appends an entry to one of its shard logs, so
the last entry id of each shard log names the collection's state. An answer is stored under
(collection, query message, k, filter) together with those last ids, read before the search was
sent, and only when every shard answered from a state that had applied at least that far; it is
served only while every log still ends at the same id, so the answer served is one that the
collection's current items gave. Any later write retires the entry.

`LOG_ENDS` reads the last ids of a collection's logs in one script call (server side, so no
entry is sent back), pipelined by the query worker with its other reads of a search. The cache
lives in one process, is bounded (least recently used entries go first, by count and by
serialised size) and is safe to use from the worker's threads.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

import redis

from shared.store import keys

MAX_ENTRIES = 4096
MAX_BYTES = 64 << 20  # serialised answers held at most

# KEYS: the shard logs in shard order; returns each one's last entry id ("" for an empty log).
LOG_ENDS = """
local ends = {}
for i, key in ipairs(KEYS) do
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  ends[i] = last[1] and last[1][1] or ''
end
return ends
"""

LogEnds = tuple[str, ...]


def queue_log_ends(pipe: redis.client.Pipeline, cid: str, shards: int) -> None:
    """Queue the read of the last entry id of each of the collection's `shards` logs on `pipe`."""
    pipe.eval(LOG_ENDS, shards, *[keys.shard_log(cid, s) for s in range(shards)])


def log_ends(raw: list[bytes]) -> LogEnds:
    """The pipeline's answer to `queue_log_ends`."""
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in raw)


def entry_key(cid: str, query: dict[str, Any], k: int, filter: dict[str, Any] | None) -> bytes:
    """What identifies a search's answer: the collection, the encoded query (its blocks, their
    dims and the weights, as sent to the shards), k and the filter."""
    text = json.dumps([cid, query, k, filter or {}], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=20).digest()


class ResultCache:
    """Least-recently-used answers, each with the log ends it is valid for."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[LogEnds, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: bytes, ends: LogEnds) -> dict[str, Any] | None:
        """The answer stored under `key` if the logs still end at `ends` (a stale one is dropped)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] != ends:  # log ends only move forward: it can never be valid again
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            raw = entry[1]
        return json.loads(raw)

    def put(self, key: bytes, ends: LogEnds, body: dict[str, Any]) -> None:
        raw = json.dumps(body)
        if len(raw) > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (ends, raw)
            self._bytes += len(raw)
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: bytes) -> None:
        _, raw = self._entries.pop(key)
        self._bytes -= len(raw)
