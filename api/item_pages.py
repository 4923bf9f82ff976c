"""GET /v1/collections/<name>/items: a collection's items in id order, a page at a time.

Every shard slot of the collection is asked (shared.store.item_pages over api.slot_requests;
served by workers.item_pages) for the first `limit + 1` items of its shards with an id after the
cursor; the API merges them by id and answers the first `limit`, with `next_cursor` (the last id
answered) when there are more. Each page starts after the last id of the one before, so a
scan returns no item twice and never skips an item that is in the collection for the whole
scan, whatever is written meanwhile. A shard that is not loaded where the slot answered makes
the page 503, as a missing slot does: a page without it would skip its items.
"""
from __future__ import annotations

from typing import Any, Iterator

from flask import Blueprint, Response, jsonify, request

from api.collections import require_collection
from api.context import services
from api.errors import ApiError
from api.slot_requests import ask_slots, require_live
from api.validation.listing import MAX_PAGE, parse_list_args
from shared.store import catalog, item_pages

bp = Blueprint("item_pages", __name__, url_prefix="/collections/<name>/items")


def page(coll: catalog.Collection, after: str | None, limit: int, filter: dict[str, Any] | None,
         fields: tuple[str, ...]) -> tuple[list[dict[str, Any]], str | None]:
    """The first `limit` items of the collection after `after` meeting `filter`, and the cursor
    of the next page (None when this one is the last)."""
    requests = item_pages.slot_requests(coll, services().settings.shard_slots, after, limit, filter, list(fields))
    require_live(requests)
    found = item_pages.merged(ask_slots(requests, "listing"), limit)
    if found.unserved:
        raise ApiError(503, "unavailable", f"shard(s) {found.unserved} of {coll.name!r} are not served now",
                       {"shards": found.unserved})
    return found.items, found.next_cursor


def matching_ids(coll: catalog.Collection, filter: dict[str, Any]) -> Iterator[str]:
    """The ids of every item of the collection meeting `filter`, in order, page by page."""
    after: str | None = None
    while True:
        items, after = page(coll, after, MAX_PAGE, filter, ())
        yield from (item["id"] for item in items)
        if after is None:
            return


@bp.get("")
def list_items(name: str) -> Response:
    coll = require_collection(name)
    wanted = parse_list_args(request.args)
    items, next_cursor = page(coll, wanted.after, wanted.limit, wanted.filter, wanted.fields)
    return jsonify({"items": items, "next_cursor": next_cursor})
