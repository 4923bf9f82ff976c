"""Export and import at the API (no workers): an export is a job for the query workers whose
archive file is served from the export directory once it succeeded, for an hour; an import
streams the body to a file under its own size limit, checks the whole archive, creates the
collection with its settings and logs every item a batch at a time, or refuses it whole."""
from __future__ import annotations

import io
import os
import time
import tracemalloc

import numpy as np

from api import exports as export_routes
from shared.index.labels import shard_for
from shared.store import archive, catalog, export_files, jobs, keys, queues, shardlog
from shared.store.serializers import vector_to_b64
from tests.unit.api import test_api
from tests.unit.api.test_api import assert_error, queued

APP_SETTINGS = test_api.APP_SETTINGS
ZIP = {"Content-Type": "application/zip"}


def made_archive(name: str = "photos", n: int = 4, dims=None, setting: str = "v1") -> bytes:
    dims = dims or {"image": 1280, "text": 50}
    settings = {"name": name, "shards": 3, "image_model": "efficientnet_lite0", "text_model": "glove-6b-50d",
                "dims": dims, "precision": "fp32", "encoder_setting": setting, "store_thumbnails": True}
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    archive.write_archive(out, settings, [archive.item_line(
        f"item-{i}", f"caption {i}", {"n": i}, True, "anBlZw==", vector_to_b64(rng.normal(size=sum(dims.values()))))
        for i in sorted(range(n), key=str)])  # by id, as exports are
    return out.getvalue()


def test_an_import_creates_the_collection_and_logs_every_item(client, redis_client):
    resp = client.post("/v1/collections/import?name=restored", data=made_archive(), headers=ZIP)
    assert resp.status_code == 202, resp.json
    assert resp.json["collection"]["name"] == "restored" and resp.json["collection"]["shards"] == 3
    coll = catalog.get_collection(redis_client, "restored")
    assert coll.precision == "fp32" and coll.store_thumbnails is True and coll.encoder_setting == "v1"
    job = client.get(resp.json["status_url"]).json
    assert job["kind"] == "import" and job["total"] == job["done"] == 4
    entries = {}
    for shard in range(3):
        for _, fields in redis_client.xrange(keys.shard_log(coll.cid, shard)):
            entry = shardlog.LogEntry.from_fields(fields)
            assert shard_for(entry.item_id, 3) == shard
            entries[entry.item_id] = entry
    assert sorted(entries) == [f"item-{i}" for i in range(4)]
    assert entries["item-2"].metadata == {"n": 2} and entries["item-2"].thumbnail == b"jpeg"
    assert entries["item-2"].vector.shape == (1330,)
    assert client.post("/v1/collections/import", data=made_archive(), headers=ZIP).status_code == 202  # its name
    assert_error(client.post("/v1/collections/import", data=made_archive(), headers=ZIP), 409, "conflict")


def test_a_bad_archive_or_request_creates_nothing(client, redis_client):
    url = "/v1/collections/import"
    data = made_archive()
    cases = [(data[:-100], "archive"), (b"not a zip", "archive"), (made_archive(dims={"image": 1000, "text": 50}),
                                                                   "archive"),
             (made_archive(name="Bad Name"), "name"), (made_archive(setting="v0"), "archive")]
    for body, field in cases:
        assert assert_error(client.post(url, data=body, headers=ZIP), 400, "invalid_request")["details"]["field"] == field
    assert assert_error(client.post(f"{url}?name=Bad!", data=data, headers=ZIP), 400,
                        "invalid_request")["details"]["field"] == "name"
    assert_error(client.post(url, data=data, headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    assert catalog.list_collections(redis_client) == [] and not redis_client.keys("mms:log:*")
    assert_error(client.get("/v1/collections/import"), 404, "not_found")  # a collection's name, not a route


def test_an_import_has_its_own_size_limit_above_the_request_limit(make_app, redis_client, tmp_path, monkeypatch):
    monkeypatch.setattr(export_routes, "IMPORT_BATCH", 7)  # several batches
    data = made_archive(n=40)
    assert len(data) > APP_SETTINGS["max_request_bytes"]
    client = make_app(max_import_bytes=len(data)).test_client()
    assert_error(client.post("/v1/collections", data=b"{" + b" " * len(data) + b"}",
                             headers={"Content-Type": "application/json"}), 413, "payload_too_large")  # other routes
    resp = client.post("/v1/collections/import", data=data, headers=ZIP)
    assert resp.status_code == 202, resp.json
    job = client.get(resp.json["status_url"]).json
    assert job["total"] == job["done"] == 40 and jobs.counted(redis_client, job["id"]) == set(range(40))
    coll = catalog.get_collection(redis_client, "photos")
    logged = sorted(fields[b"id"].decode() for shard in range(3)
                    for _, fields in redis_client.xrange(keys.shard_log(coll.cid, shard)))
    assert logged == sorted(f"item-{i}" for i in range(40))
    assert os.listdir(tmp_path / "imports") == []  # the body's temporary file is gone

    small = make_app(max_import_bytes=len(data) - 1).test_client()
    error = assert_error(small.post("/v1/collections/import?name=other", data=data, headers=ZIP),
                         413, "payload_too_large")
    assert "MMSEARCH_MAX_IMPORT_BYTES" in error["message"] and error["details"] == {"limit": len(data) - 1}
    assert [c.name for c in catalog.list_collections(redis_client)] == ["photos"]


def test_an_import_holds_a_batch_in_memory_not_the_archive(make_app, redis_client, tmp_path, monkeypatch):
    monkeypatch.setattr(export_routes, "IMPORT_BATCH", 50)
    client = make_app().test_client()
    assert client.post("/v1/collections/import?name=warm", data=made_archive(n=60), headers=ZIP).status_code == 202
    path = tmp_path / "big.zip"
    path.write_bytes(made_archive(n=3000))  # 16 MB, 21 MB unpacked
    size = path.stat().st_size
    with open(path, "rb") as body:  # read by the request as a server's socket is, never copied here
        tracemalloc.start()
        try:
            resp = client.post("/v1/collections/import", input_stream=body,
                               headers={**ZIP, "Content-Length": str(size)})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert resp.status_code == 202 and client.get(resp.json["status_url"]).json["done"] == 3000
    assert peak < size / 4, (peak, size)


def test_the_import_limit_holds_for_a_body_the_server_ends_itself(make_app, redis_client):
    """gunicorn ends the body itself (wsgi.input_terminated): the limit is checked while reading."""
    data = made_archive()
    environ = {"wsgi.input_terminated": True}
    for limit, status in ((len(data) - 1, 413), (len(data), 202)):
        client = make_app(max_import_bytes=limit).test_client()
        resp = client.post("/v1/collections/import", input_stream=io.BytesIO(data), headers=ZIP,
                           environ_overrides=environ)
        assert resp.status_code == status, resp.json
    assert [c.name for c in catalog.list_collections(redis_client)] == ["photos"]


def test_an_export_is_a_query_worker_job_and_its_archive_is_served_once_done(client, redis_client, tmp_path):
    assert client.post("/v1/collections", json={"name": "photos"}).status_code == 201
    assert_error(client.post("/v1/collections/nope/export"), 404, "not_found")
    resp = client.post("/v1/collections/photos/export")
    assert resp.status_code == 202
    job_id = resp.json["job_id"]
    (message,) = queued(redis_client, queues.QUERY)
    assert message["_task"] == queues.EXPORT and message["job_id"] == job_id and message["collection"] == "photos"
    url = f"/v1/jobs/{job_id}/archive"
    assert_error(client.get(url), 404, "not_found")  # not done yet
    data = made_archive()
    with export_files.written(tmp_path / "exports", job_id) as out:  # what the worker leaves
        out.write(data)
    jobs.set_search_result(redis_client, job_id, {"archive": url, "items": 4, "bytes": len(data), "sha256": "x"},
                           None, 60)
    resp = client.get(url)
    assert resp.status_code == 200 and resp.data == data and resp.mimetype == "application/zip"
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Content-Disposition"] == 'attachment; filename="photos.mmsearch.zip"'
    assert_error(client.get("/v1/jobs/0123456789abcdef/archive"), 404, "not_found")
    old = time.time() - export_files.EXPORT_TTL_S - 1
    os.utime(export_files.archive_path(tmp_path / "exports", job_id), (old, old))
    assert_error(client.get(url), 404, "not_found")  # expired, and removed
    assert os.listdir(tmp_path / "exports") == []
