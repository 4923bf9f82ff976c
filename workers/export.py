"""Export jobs (queue "query", run by the query workers): one collection into one archive.

The task pages through the collection by id as a listing does (shared.store.item_pages: every
slot asked at once, `MMSEARCH_SHARD_TIMEOUT_S` per page), with each item's record, thumbnail and
stored vector, and writes the archive (shared.store.archive) into the export directory
(`MMSEARCH_EXPORT_DIR`, shared.store.export_files): under a temporary name, renamed to
`<job id>.zip` once whole. Any API process serves it from there (GET /v1/jobs/<id>/archive)
for EXPORT_TTL_S, and the job ends `succeeded` with its `result`: `{"archive", "items",
"bytes", "sha256"}`. A page that cannot be had (a slot without a live process, a shard not
served, no answer in time) fails the job with `unavailable` and leaves no file; a redelivered
task writes the archive again from the start.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Iterator

import redis

from shared.store import archive, catalog, export_files, item_pages, jobs, keys, queues, replies
from shared.store.catalog import Collection
from workers.celery_app import app
from workers.resources import redis_client, settings

log = logging.getLogger(__name__)

PAGE = 1000
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


@app.task(name=queues.EXPORT)
def export(job_id: str, collection: str, cid: str) -> None:
    r, ttl, directory = redis_client(), settings().job_ttl_s, settings().exports_path
    jobs.mark_started(r, job_id)
    coll = catalog.get_collection(r, collection)
    if coll is None or coll.cid != cid:
        jobs.set_search_result(r, job_id, None, {"code": "not_found", "message": f"collection {collection!r} "
                                                  "was deleted"}, ttl)
        return
    try:
        with export_files.written(directory, job_id) as out:
            count = archive.write_archive(out, asdict(coll), (
                archive.item_line(i["id"], i["text"], i["metadata"], i["has_image"], i["thumbnail"], i["vector"])
                for i in _items(r, coll)))
    except ExportFailed as exc:
        log.warning("export %s of %s failed: %s", job_id, collection, exc)
        jobs.set_search_result(r, job_id, None, {"code": "unavailable", "message": str(exc)}, ttl)
        return
    size, sha256 = export_files.described(export_files.archive_path(directory, job_id))
    jobs.set_search_result(r, job_id, {"archive": f"/v1/jobs/{job_id}/archive", "items": count, "bytes": size,
                                       "sha256": sha256}, None, ttl)
