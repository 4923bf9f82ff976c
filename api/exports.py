"""Backing up and restoring a collection: POST /v1/collections/<name>/export (a job the query
workers run, workers.export), GET /v1/jobs/<job_id>/archive (the archive file it wrote in the
export directory, shared.store.export_files, kept for an hour) and POST
/v1/collections/import (an archive as the body).

An import streams the body into an unnamed temporary file under `<data dir>/imports`, up to
MMSEARCH_MAX_IMPORT_BYTES (413 above; every other route keeps MMSEARCH_MAX_REQUEST_BYTES), then
checks the whole archive from it (shared.store.archive): one that is damaged, altered,
truncated or not an mmsearch export is refused with 400 and nothing is created. Its models must
be this server's (same image and text model, same block sizes): the vectors are used as they
are, never encoded again. Then the collection is created with the archive's settings (under
`?name=` when given; 409 when the name is taken) and the items are read from the file again and
appended to their shards' logs a batch at a time, under one `import` job that succeeds once the
shards applied them. The request's memory is a batch, whatever the archive's size.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

from flask import Blueprint, Response, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import wrap_file

from api.collections import require_collection
from api.context import services
from api.errors import ApiError
from api.jobs import accepted
from api.readiness import require_role
from api.validation.common import invalid
from shared.errors import ModelUnavailableError
from shared.index.labels import shard_for
from shared.runtime.config import Settings
from shared.store import archive, catalog, export_files, jobs, queues, shardlog

bp = Blueprint("exports", __name__)
ARCHIVE_TYPES = ("application/zip", "application/octet-stream")
BODY_CHUNK = 2**20
IMPORT_BATCH = 1000                 # items logged per batch (one pipelined round trip)...
IMPORT_BATCH_BYTES = 32 * 2**20     # ...whose lines in the archive hold at most this together


@bp.post("/collections/<name>/export")
def export(name: str) -> tuple[Response, int]:
    coll = require_collection(name)
    require_role("query", "export")
    svc = services()
    job_id = jobs.create_job(svc.redis, "export", name, coll.cid, 1)
    svc.celery.send_task(queues.EXPORT, kwargs={"job_id": job_id, "collection": name, "cid": coll.cid},
                         task_id=job_id, queue=queues.QUERY)
    return accepted(job_id)


@bp.get("/jobs/<job_id>/archive")
def download(job_id: str) -> Response:
    svc = services()
    view = jobs.job_view(svc.redis, job_id, svc.settings.job_ttl_s)
    file = None
    if view is not None and view["kind"] == "export" and view["state"] == "succeeded":
        path = export_files.live(svc.settings.exports_path, job_id)
        try:
            file = open(path, "rb") if path is not None else None  # once open, a removal cannot cut it short
        except FileNotFoundError:
            pass  # removed meanwhile
    if file is None:
        raise ApiError(404, "not_found", f"job {job_id!r} has no archive (not an export, not done, or expired)",
                       {"job_id": job_id})
    return Response(wrap_file(request.environ, file, BODY_CHUNK), mimetype="application/zip",
                    direct_passthrough=True, headers={
                        "Content-Length": str(os.fstat(file.fileno()).st_size),
                        "Content-Disposition": f'attachment; filename="{view["collection"]}.mmsearch.zip"'})


def _checked_settings(found: archive.Archive, name: str | None) -> dict[str, object]:
    """The settings of the collection to create from `found` (400 when this server cannot)."""
    settings = dict(found.collection)
    settings["name"] = name or settings["name"]
    if not isinstance(settings["name"], str) or not catalog.NAME_RE.match(settings["name"]):
        raise invalid("the archive's collection name is not valid here; give ?name=", field="name")
    shards = settings["shards"]
    if not isinstance(shards, int) or not 1 <= shards <= catalog.MAX_SHARDS:
        raise invalid(f"the archive's shard count is not in 1..{catalog.MAX_SHARDS}", field="archive")
    try:
        dims = catalog.check_models(services().settings, str(settings["image_model"]), str(settings["text_model"]))
    except ModelUnavailableError as exc:
        raise invalid(f"the archive's models are not on this server: {exc}", field="archive") from exc
    if dims != settings.pop("dims"):
        raise invalid(f"this server's models give blocks of {dims}, the archive's vectors others: they would "
                      "have to be encoded again, from images the archive does not hold", field="archive")
    return settings


@contextmanager
def _received_archive(settings: Settings) -> Iterator[IO[bytes]]:
    """The request body in an unnamed temporary file under `<data dir>/imports` (gone when the
    block ends, or the process does), read a piece at a time; 413 over MMSEARCH_MAX_IMPORT_BYTES."""
    limit = settings.max_import_bytes
    too_large = ApiError(413, "payload_too_large", f"an archive to import may be at most {limit} bytes "
                         "(MMSEARCH_MAX_IMPORT_BYTES)", {"limit": limit})
    # This route's own limit, instead of MMSEARCH_MAX_REQUEST_BYTES. One byte more: Werkzeug refuses
    # a body the server ends itself (gunicorn's) once it reaches the limit, even at its end.
    request.max_content_length = limit + 1
    folder = settings.data_dir / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder) as body:
        try:
            stream = request.stream
            while chunk := stream.read(BODY_CHUNK):
                body.write(chunk)
        except RequestEntityTooLarge:
            raise too_large from None
        if body.tell() > limit:
            raise too_large
        yield body


@bp.post("/collections/import")
def import_collection() -> tuple[Response, int]:
    if request.mimetype not in ARCHIVE_TYPES:
        raise ApiError(415, "unsupported_media_type", f"send the archive as {' or '.join(ARCHIVE_TYPES)}",
                       {"content_type": (request.content_type or "")[:200]})
    name = request.args.get("name")
    if name is not None and not catalog.NAME_RE.match(name):
        raise invalid("name must be a collection name", field="name")
    svc = services()
    with _received_archive(svc.settings) as body:
        try:
            found = archive.read_archive(body)
        except archive.ArchiveError as exc:
            raise invalid(f"archive refused: {exc}", field="archive") from exc
        settings = _checked_settings(found, name)
        try:
            coll = catalog.create_collection(svc.redis, svc.settings, **settings)
        except ModelUnavailableError as exc:
            raise invalid(f"the archive's settings are not possible here: {exc}", field="archive") from exc
        except catalog.CollectionExists as exc:
            raise ApiError(409, "conflict", str(exc), {"collection": settings["name"]}) from exc
        # No `ids=`: a million ids would sit in Redis as long as the job; a reaped item is named by
        # its index, its line in items.jsonl.
        job_id = jobs.create_job(svc.redis, "import", coll.name, coll.cid, found.count)
        logged = 0
        for batch in found.batches(IMPORT_BATCH, IMPORT_BATCH_BYTES):
            entries = [(shard_for(item.id, coll.shards), shardlog.LogEntry(
                "upsert", item.id, item.vector, item.text, item.metadata, item.has_image, item.thumbnail))
                for item in batch]
            if shardlog.COLLECTION_GONE in shardlog.log_items(svc.redis, coll.cid, job_id, entries, first=logged):
                raise ApiError(404, "not_found", f"collection {coll.name!r} was deleted meanwhile",
                               {"collection": coll.name})
            logged += len(batch)
    return accepted(job_id, collection=coll.public(0))
