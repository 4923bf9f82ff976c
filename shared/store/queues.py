"""Celery queue and task names shared by the API (which sends by name) and the workers."""
from __future__ import annotations

ENCODE = "encode"
QUERY = "query"

ENCODE_ITEMS = "mmsearch.encode_items"   # kwargs: job_id, collection, cid, items
SEARCH = "mmsearch.search"               # kwargs: collection, cid, text, image, k, weights, filter, job_id
MERGE_HITS = "mmsearch.merge_hits"       # chord body on the query queue
SHARD_SEARCH = "mmsearch.shard_search"   # on the owning slot's queue
GET_ITEM = "mmsearch.get_item"           # kwargs: cid, shard, item_id, thumbnail


def slot_for_shard(shard: int, slots: int) -> int:
    """Shard `shard` of every collection is owned by slot `shard mod slots`."""
    return shard % slots


def shard_queue(slot: int) -> str:
    return f"shard.{slot}"
