"""Stable ids for items: the hnswlib label of an item id and the shard that owns it.

Python's `hash()` of a str is salted per process, so it cannot name anything that outlives a
process; these use BLAKE2b instead and give the same answer on every machine and every run.
"""
from __future__ import annotations

import hashlib

_LABEL_MASK = (1 << 63) - 1


def label_for(item_id: str) -> int:
    """The item's hnswlib label: the first 8 bytes of BLAKE2b(id), masked to 63 bits."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _LABEL_MASK


def shard_for(item_id: str, shards: int) -> int:
    """The shard (0 .. shards-1) that owns the item."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return label_for(item_id) % shards
