"""Names shared by the senders (the API, the query workers) and the workers that serve them:
Celery queues and tasks, and the requests on a shard slot's request list."""
from __future__ import annotations

ENCODE = "encode"
QUERY = "query"

ENCODE_ITEMS = "mmsearch.encode_items"   # kwargs: job_id, collection, cid, items
SEARCH = "mmsearch.search"               # kwargs: collection, cid, text, image, k, weights, filter, job_id
# (an asynchronous search; a synchronous one is a request on keys.SEARCH_REQUESTS with the same
# fields and its `search_id`, shared.store.replies)
EXPORT = "mmsearch.export"               # kwargs: job_id, collection, cid

# What a request on a slot's list (keys.slot_searches, shared.store.replies) asks, its "op".
SLOT_SEARCH = "search"   # cid, shards, query, k, filter, wait_until, min_positions
SLOT_ITEM = "item"       # cid, shard, item_id, thumbnail
SLOT_EXISTS = "exists"   # cid, ids (shard -> item ids of the slot's shards)
SLOT_LIST = "list"       # cid, shards, after, limit, filter, fields (a page of items in id order)


def slot_for_shard(shard: int, slots: int) -> int:
    """Shard `shard` of every collection is owned by slot `shard mod slots`."""
    return shard % slots
