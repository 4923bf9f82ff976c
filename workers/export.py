"""Export jobs (queue "query", run by the query workers): one collection into one archive.

The task pages through the collection by id as a listing does (shared.store.item_pages: every
slot asked at once, `MMSEARCH_SHARD_TIMEOUT_S` per page), with each item's record, thumbnail and
stored vector, and writes the archive (shared.store.archive) to a temporary file. The archive
is then kept in Redis in chunks (`mms:export:<job id>`, for EXPORT_TTL_S), where any API
process serves it (GET /v1/jobs/<id>/archive), and the job ends `succeeded` with its `result`:
`{"archive", "items", "bytes", "sha256"}`. A page that cannot be had (a slot without a live
process, a shard not served, no answer in time) fails the job with `unavailable`; a
redelivered task writes the archive again from the start.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import asdict
from typing import Any, Iterator

import redis

from shared.store import archive, catalog, item_pages, jobs, keys, queues, replies
from shared.store.catalog import Collection
from workers.celery_app import app
from workers.resources import redis_client, settings

log = logging.getLogger(__name__)

EXPORT_TTL_S = 3600
PAGE = 1000
CHUNK_BYTES = 4 * 2**20
SPOOL_BYTES = 64 * 2**20  # an archive up to this size stays in memory while it is written
FIELDS = ["text", "metadata", "has_image", "thumbnail", "vector"]


class ExportFailed(Exception):
    """A page of the collection could not be read; the job fails with this message."""


def _items(r: redis.Redis, coll: Collection) -> Iterator[dict[str, Any]]:
    """Every item of the collection by id, with its vector, page after page."""
    cfg = settings()
    after: str | None = None
    while True:
        requests = item_pages.slot_requests(coll, cfg.shard_slots, after, PAGE, None, FIELDS)
        answers = replies.ask(r, {keys.slot_searches(slot): body for slot, body in requests.items()},
                              keys.search_replies(jobs.new_job_id()), cfg.shard_timeout_s)
        if len(answers) < len(requests) or any(a.get("error") for a in answers):
            raise ExportFailed(f"a shard slot of {coll.name!r} did not answer in time (or failed)")
        page = item_pages.merged(answers, PAGE)
        if page.unserved:
            raise ExportFailed(f"shard(s) {page.unserved} of {coll.name!r} are not served now")
        yield from page.items
        after = page.next_cursor
        if after is None:
            return


def _store(r: redis.Redis, job_id: str, data: Any) -> tuple[int, str]:
    """Keep the archive file `data` in Redis in chunks; (bytes, sha256)."""
    key, size, digest = keys.export_chunks(job_id), 0, hashlib.sha256()
    r.delete(key)
    while chunk := data.read(CHUNK_BYTES):
        pipe = r.pipeline(transaction=False)
        pipe.rpush(key, chunk)
        pipe.expire(key, EXPORT_TTL_S)
        pipe.execute()
        size += len(chunk)
        digest.update(chunk)
    return size, digest.hexdigest()


@app.task(name=queues.EXPORT)
def export(job_id: str, collection: str, cid: str) -> None:
    r, ttl = redis_client(), settings().job_ttl_s
    jobs.mark_started(r, job_id)
    coll = catalog.get_collection(r, collection)
    if coll is None or coll.cid != cid:
        jobs.set_search_result(r, job_id, None, {"code": "not_found", "message": f"collection {collection!r} "
                                                  "was deleted"}, ttl)
        return
    try:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as out:
            count = archive.write_archive(out, asdict(coll), (
                archive.item_line(i["id"], i["text"], i["metadata"], i["has_image"], i["thumbnail"], i["vector"])
                for i in _items(r, coll)))
            out.seek(0)
            size, sha256 = _store(r, job_id, out)
    except ExportFailed as exc:
        log.warning("export %s of %s failed: %s", job_id, collection, exc)
        jobs.set_search_result(r, job_id, None, {"code": "unavailable", "message": str(exc)}, ttl)
        return
    jobs.set_search_result(r, job_id, {"archive": f"/v1/jobs/{job_id}/archive", "items": count, "bytes": size,
                                       "sha256": sha256}, None, ttl)
