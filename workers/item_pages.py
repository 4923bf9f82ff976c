"""A shard's items in id order, one page at a time: the shard side of listing a collection
(GET /v1/collections/{c}/items) and of deleting by filter.

A page is the first `limit` items of the shard whose id comes after a cursor (an id; code point
order), optionally only those meeting a metadata filter (the operators of
`shared.index.filters`, answered by a `MetadataIndex` of each chunk of candidates, so exactly
as searches answer them). Since every page starts after the last id of the one before, a scan
returns no item twice, and an item that is live for the whole scan is in the shard whenever
its turn comes, so it is never skipped.

`vector` (base64 float32, the fused vector as the shard stores it) is asked by exports only.

The shard's ids are sorted once and kept, with the log position the shard had applied when they
were read, until the shard applies more (its position moves); a scan over a collection that
nobody writes to sorts each shard once. Read while the applier writes: the copy of the index's
records is taken at once (atomic under the GIL, as `ShardIndex.get` is), and each record is
read again when its page is built, so an item deleted since is left out.
"""
from __future__ import annotations

import base64
import weakref
from bisect import bisect_right
from typing import Any

from shared.index.filters import MetadataIndex
from shared.index.shard_index import ItemRecord, ShardIndex
from shared.store.serializers import vector_to_b64

FIELDS = ("text", "metadata", "has_image", "thumbnail", "vector")  # what an item may carry besides id, shard
FILTER_CHUNK = 1024  # candidates whose metadata is matched at once

_sorted: weakref.WeakKeyDictionary[ShardIndex, tuple[str, list[str]]] = weakref.WeakKeyDictionary()


def sorted_ids(index: ShardIndex, position: str) -> list[str]:
    """The index's ids in order, as of log position `position` (read before this is called)."""
    cached = _sorted.get(index)
    if cached is not None and cached[0] == position:
        return cached[1]
    ids = sorted(index.ids())
    _sorted[index] = (position, ids)
    return ids


def _matching(records: list[ItemRecord], filter: dict[str, Any]) -> list[ItemRecord]:
    """The records (in their order) whose metadata meets `filter`."""
    chunk = MetadataIndex()
    for label, record in enumerate(records):
        chunk.add(label, record.metadata)
    held = chunk.matching(filter)
    return [record for label, record in enumerate(records) if label in held]


def _view(record: ItemRecord, shard: int, fields: tuple[str, ...], vector: str | None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": record.id, "shard": shard}
    for field in fields:
        if field == "thumbnail":
            view["thumbnail"] = base64.b64encode(record.thumbnail).decode() if record.thumbnail else None
        elif field == "vector":
            view["vector"] = vector
        else:
            view[field] = getattr(record, field)
    return view


def shard_page(index: ShardIndex, position: str, shard: int, after: str | None, limit: int,
               filter: dict[str, Any] | None, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """The first `limit` items of the shard with an id after `after` (all when None) that meet
    `filter`, in id order, each with `fields` (of FIELDS) besides its id and shard."""
    ids = sorted_ids(index, position)
    start = 0 if after is None else bisect_right(ids, after)
    page: list[ItemRecord] = []
    while start < len(ids) and len(page) < limit:
        size = FILTER_CHUNK if filter else limit - len(page)
        records = [r for r in map(index.get, ids[start:start + size]) if r is not None]
        start += size
        page += (_matching(records, filter) if filter else records)[:limit - len(page)]
    if "vector" in fields:
        with_vectors = [(record, vector_to_b64(vector)) for record, vector in index.with_vectors([r.id for r in page])]
    else:
        with_vectors = [(record, None) for record in page]
    return [_view(record, shard, fields, vector) for record, vector in with_vectors]
