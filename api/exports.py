"""Backing up and restoring a collection: POST /v1/collections/<name>/export (a job the query
workers run, workers.export), GET /v1/jobs/<job_id>/archive (the archive file it wrote in the
export directory, shared.store.export_files, kept for an hour) and POST
/v1/collections/import (an archive as the body).

An import reads and checks the whole archive first (shared.store.archive): one that is damaged,
altered, truncated or not an mmsearch export is refused with 400 and nothing is created. Its
models must be this server's (same image and text model, same block sizes): the vectors are
used as they are, never encoded again. Then the collection is created with the archive's
settings (under `?name=` when given; 409 when the name is taken) and every item is appended to
its shard's log at once, under one `import` job that succeeds once the shards applied them.
"""
from __future__ import annotations

import os

from flask import Blueprint, Response, request
from werkzeug.wsgi import wrap_file

from api.collections import require_collection
from api.context import services
from api.errors import ApiError
from api.jobs import accepted
from api.readiness import require_role
from api.validation.common import invalid
from shared.errors import ModelUnavailableError
from shared.index.labels import shard_for
from shared.store import archive, catalog, export_files, jobs, queues, shardlog

bp = Blueprint("exports", __name__)
ARCHIVE_TYPES = ("application/zip", "application/octet-stream")
BODY_CHUNK = 2**20


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


@bp.post("/collections/import")
def import_collection() -> tuple[Response, int]:
    if request.mimetype not in ARCHIVE_TYPES:
        raise ApiError(415, "unsupported_media_type", f"send the archive as {' or '.join(ARCHIVE_TYPES)}",
                       {"content_type": (request.content_type or "")[:200]})
    name = request.args.get("name")
    if name is not None and not catalog.NAME_RE.match(name):
        raise invalid("name must be a collection name", field="name")
    try:
        found = archive.read_archive(request.get_data(cache=False))
    except archive.ArchiveError as exc:
        raise invalid(f"archive refused: {exc}", field="archive") from exc
    settings = _checked_settings(found, name)
    svc = services()
    try:
        coll = catalog.create_collection(svc.redis, svc.settings, **settings)
    except ModelUnavailableError as exc:
        raise invalid(f"the archive's settings are not possible here: {exc}", field="archive") from exc
    except catalog.CollectionExists as exc:
        raise ApiError(409, "conflict", str(exc), {"collection": settings["name"]}) from exc
    job_id = jobs.create_job(svc.redis, "import", coll.name, coll.cid, len(found.items),
                             ids=[item.id for item in found.items])
    entries = [(shard_for(item.id, coll.shards), shardlog.LogEntry(
        "upsert", item.id, item.vector, item.text, item.metadata, item.has_image, item.thumbnail))
        for item in found.items]
    if shardlog.COLLECTION_GONE in shardlog.log_items(svc.redis, coll.cid, job_id, entries):
        raise ApiError(404, "not_found", f"collection {coll.name!r} was deleted meanwhile", {"collection": coll.name})
    return accepted(job_id, collection=coll.public(0))
