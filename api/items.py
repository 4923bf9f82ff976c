"""/v1/collections/<name>/items: bulk ingest (JSON or multipart), look-up, thumbnail, delete.

Ingest validates the whole request first (api.validation), then stages the uploaded bytes in
Redis, creates the job with every item's encode message (shared.store.encode_tasks) and
enqueues one encode task per MMSEARCH_ENCODE_BATCH items; the encode workers do the rest and
count each item in the job; while no encode worker is ready a valid ingest is refused with 503
naming its start-up stage (api.readiness). A look-up pushes a request onto the
request list of the slot holding the item's shard (api.slot_requests; served by the slot's
owner and replicas as its searches are; see workers.shard) and waits up to
MMSEARCH_SHARD_TIMEOUT_S for the answer (503 when that slot has no live owner or replica or
does not answer in time, 500 when the look-up failed there). A delete appends a delete entry to the shard's write log
under a one-item job: idempotent, an unknown id is accepted too.

Item ids may contain "/" (they are often file paths), so the id is the rest of the URL; an
id that itself ends in "/thumbnail" is then reached by GET as the thumbnail of the shorter id.
"""
from __future__ import annotations

import base64
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from kombu.exceptions import OperationalError

from api.bodies import JSON, MULTIPART, body_kind, read_json_object
from api.collections import require_collection
from api.context import services
from api.errors import ApiError
from api.jobs import accepted, status_url
from api.readiness import require_role
from api.slot_requests import ask_slots, require_live
from api.validation import (ItemInput, image_source, is_valid_id, parse_items_json,
                            parse_items_multipart)
from shared.store import catalog, encode_tasks, jobs, queues, shardlog, slots, staging
from shared.index.labels import shard_for

bp = Blueprint("items", __name__, url_prefix="/collections/<name>/items")
MAX_EXISTS_IDS = 1000


def _enqueue(coll: catalog.Collection, items: list[ItemInput]) -> str:
    """Stage the uploads, create the ingest job with its items' encode messages, then send the
    encode tasks; the job id. Everything a task needs is in Redis before the first is sent, so
    the reaper sends again what a request cut off while sending leaves unsent."""
    svc = services()
    job_id = jobs.new_job_id()
    uploads = {i: item.image for i, item in enumerate(items) if isinstance(item.image, bytes)}
    staged = staging.stage(svc.redis, coll.cid, job_id, uploads, svc.settings.staging_ttl_s)
    messages = [{"index": i, "id": item.id, "text": item.text, "metadata": item.metadata,
                 "image": image_source(item.image, staged.get(i))} for i, item in enumerate(items)]
    jobs.create_job(svc.redis, "ingest", coll.name, coll.cid, len(items), job_id=job_id,
                    ids=[item.id for item in items], messages=messages)
    try:
        encode_tasks.send(svc.celery, job_id, coll.name, coll.cid, messages, svc.settings.encode_batch)
    except (OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise ApiError(503, "unavailable", "the task broker went away while the ingest's tasks were being "
                       "sent; the job exists and the service sends what was left unsent again "
                       "(after MMSEARCH_JOB_STALL_S)",
                       {"reason": type(exc).__name__, "job_id": job_id, "status_url": status_url(job_id)}) from exc
    return job_id


@bp.post("")
def ingest(name: str) -> tuple[Response, int]:
    coll = require_collection(name)
    settings = services().settings
    if body_kind((JSON, MULTIPART)) == JSON:
        items = parse_items_json(read_json_object(), settings)
    else:
        items = parse_items_multipart(request.form, request.files, settings)
    require_role("encode", "ingest")
    return accepted(_enqueue(coll, items), ids=[item.id for item in items])


def _item_not_found(name: str, item_id: str) -> ApiError:
    return ApiError(404, "not_found", f"item {item_id!r} is not in collection {name!r}",
                    {"collection": name, "id": item_id})


def _look_up(name: str, item_id: str, thumbnail: bool) -> dict[str, Any]:
    """The shard owner's record of an item (404 when it has none)."""
    coll = require_collection(name)
    if not is_valid_id(item_id):
        raise _item_not_found(name, item_id)
    svc = services()
    shard = shard_for(item_id, coll.shards)
    slot = queues.slot_for_shard(shard, svc.settings.shard_slots)
    if not slots.live_slots(svc.redis, [slot]):
        raise ApiError(503, "unavailable", f"shard {shard} has no live owner or replica", {"shard": shard, "slot": slot})
    answer = ask_slots({slot: {"op": queues.SLOT_ITEM, "cid": coll.cid, "shard": shard, "item_id": item_id,
                                "thumbnail": thumbnail}}, f"look-up on shard {shard}")[0]
    if answer["item"] is None:
        raise _item_not_found(name, item_id)
    return answer["item"]


@bp.post("/exists")
def exists(name: str) -> Response:
    """Which of up to MAX_EXISTS_IDS ids the collection holds: one request per shard slot."""
    coll = require_collection(name)
    ids = read_json_object().get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_EXISTS_IDS or not all(is_valid_id(i) for i in ids):
        raise ApiError(400, "invalid_request", f"ids must be a list of 1 to {MAX_EXISTS_IDS} item ids",
                       {"field": "ids"})
    svc = services()
    by_slot: dict[int, dict[str, list[str]]] = {}
    for item_id in dict.fromkeys(ids):
        shard = shard_for(item_id, coll.shards)
        by_slot.setdefault(queues.slot_for_shard(shard, svc.settings.shard_slots), {}).setdefault(
            str(shard), []).append(item_id)
    require_live(by_slot)
    answers = ask_slots({slot: {"op": queues.SLOT_EXISTS, "cid": coll.cid, "ids": wanted}
                          for slot, wanted in by_slot.items()}, "existence check")
    held = {item_id for a in answers for item_id in a["present"]}
    return jsonify({"present": [i for i in dict.fromkeys(ids) if i in held]})


@bp.get("/<path:item_id>")
def show(name: str, item_id: str) -> Response:
    record = _look_up(name, item_id, thumbnail=False)
    return jsonify({field: record.get(field) for field in ("id", "text", "metadata", "has_image", "shard")})


@bp.get("/<path:item_id>/thumbnail")
def thumbnail(name: str, item_id: str) -> Response:
    record = _look_up(name, item_id, thumbnail=True)
    if not record.get("thumbnail_b64"):
        raise ApiError(404, "not_found", f"item {item_id!r} has no thumbnail", {"collection": name, "id": item_id})
    return Response(base64.b64decode(record["thumbnail_b64"]), mimetype="image/jpeg")


@bp.delete("/<path:item_id>")
def delete(name: str, item_id: str) -> tuple[Response, int]:
    coll = require_collection(name)
    if not is_valid_id(item_id):
        raise _item_not_found(name, item_id)
    r = services().redis
    job_id = jobs.create_job(r, "delete", name, coll.cid, 1)
    entry = shardlog.LogEntry("delete", item_id, job=job_id)
    if shardlog.log_item(r, coll.cid, shard_for(item_id, coll.shards), job_id, 0, entry) == shardlog.COLLECTION_GONE:
        raise ApiError(404, "not_found", f"collection {name!r} was deleted", {"collection": name})
    return accepted(job_id)
