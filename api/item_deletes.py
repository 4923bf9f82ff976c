"""POST /v1/collections/<name>/items/delete: delete many items, named by id or by a filter, as
one `delete` job.

With `ids`, each id becomes one item of the job; with `filter`, the ids of the items meeting it
when the request is answered (api.item_pages.matching_ids, in id order). Every delete entry is
appended to its shard's log and counted in the job at once (shared.store.shardlog.log_items);
the job succeeds once every shard has applied them, with the ids that were not there (any
more) in its `not_found`, as a single delete reports them.
"""
from __future__ import annotations

from flask import Blueprint, Response

from api.bodies import read_json_object
from api.collections import require_collection
from api.context import services
from api.errors import ApiError
from api.item_pages import matching_ids
from api.jobs import accepted
from api.validation.listing import parse_delete_request
from shared.index.labels import shard_for
from shared.store import jobs, shardlog

bp = Blueprint("item_deletes", __name__, url_prefix="/collections/<name>/items")


@bp.post("/delete")
def delete_many(name: str) -> tuple[Response, int]:
    coll = require_collection(name)
    wanted = parse_delete_request(read_json_object())
    ids = wanted.ids if wanted.ids is not None else list(matching_ids(coll, wanted.filter or {}))
    r = services().redis
    job_id = jobs.create_job(r, "delete", name, coll.cid, len(ids), ids=ids)
    entries = [(shard_for(item_id, coll.shards), shardlog.LogEntry("delete", item_id, job=job_id)) for item_id in ids]
    if shardlog.COLLECTION_GONE in shardlog.log_items(r, coll.cid, job_id, entries):
        raise ApiError(404, "not_found", f"collection {name!r} was deleted", {"collection": name})
    return accepted(job_id, total=len(ids))
