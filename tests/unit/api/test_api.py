"""The Flask API alone against a real Redis (no Celery workers): collections, validation,
ingest staging and enqueueing, jobs, deletes, search timeouts, auth, readiness, OpenAPI."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.encoding.encoder_settings import ENCODER_SETTINGS, V1
from shared.store import catalog, keys, queues, replies
from shared.index.labels import shard_for
from tests.support.workers import queued

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64  # the API never decodes images: any bytes do
APP_SETTINGS = {"max_items_per_request": 5, "max_request_bytes": 64 * 1024, "max_image_bytes": 2048,
          "max_text_chars": 50, "encode_batch": 2, "search_timeout_s": 0.5, "shard_timeout_s": 0.3,
          "shard_slots": 2, "api_keys": (), "ingest_root": None}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def coll(client) -> dict[str, Any]:
    resp = client.post("/v1/collections", json={"name": "photos", "shards": 3})
    assert resp.status_code == 201, resp.json
    return resp.json


def cid(redis_client, name: str = "photos") -> str:
    return catalog.get_collection(redis_client, name).cid


def assert_error(resp, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.data[:500])
    assert resp.content_type == "application/json; charset=utf-8"
    body = resp.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert "Traceback" not in resp.get_data(as_text=True)
    return body["error"]


# Collections ----------------------------------------------------------------------------

def test_collection_crud(client, redis_client):
    resp = client.post("/v1/collections", json={"name": "photos", "shards": 3, "store_thumbnails": False})
    assert resp.status_code == 201
    assert resp.content_type == "application/json; charset=utf-8"
    body = resp.json
    assert body["name"] == "photos" and body["shards"] == 3 and body["count"] == 0
    assert body["dims"] == {"image": 1280, "text": 50} and body["store_thumbnails"] is False
    assert_error(client.post("/v1/collections", json={"name": "photos"}), 409, "conflict")
    client.post("/v1/collections", json={"name": "art"})
    listed = client.get("/v1/collections").json["collections"]
    assert [c["name"] for c in listed] == ["art", "photos"]
    assert listed[0]["shards"] == 2  # settings.default_shards
    redis_client.hset(keys.shard_state(cid(redis_client), 1), "count", 7)
    assert client.get("/v1/collections/photos").json["count"] == 7
    resp = client.delete("/v1/collections/photos")
    assert resp.status_code == 202 and resp.json == {"deleted": "photos"}
    assert_error(client.get("/v1/collections/photos"), 404, "not_found")
    assert_error(client.delete("/v1/collections/photos"), 404, "not_found")


@pytest.mark.parametrize("body, field", [
    ({"name": "Photos"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "photos\n"}, "name"),
    ({"shards": 2}, "name"),
    ({"name": "p", "shards": 0}, "shards"),
    ({"name": "p", "shards": catalog.MAX_SHARDS + 1}, "shards"),
    ({"name": "p", "shards": True}, "shards"),
    ({"name": "p", "shards": "2"}, "shards"),
    ({"name": "p", "store_thumbnails": "yes"}, "store_thumbnails"),
    ({"name": "p", "image_model": 3}, "image_model"),
    ({"name": "p", "replicas": 2}, "replicas"),
    ({"name": "p", "precision": "int8"}, "precision"),
    ({"name": "p", "precision": 16}, "precision"),
    ({"name": "p", "encoder_setting": "v0"}, "encoder_setting"),
    ({"name": "p", "encoder_setting": 1}, "encoder_setting"),
])
def test_bad_collection_requests(client, body, field):
    assert assert_error(client.post("/v1/collections", json=body), 400, "invalid_request")["details"]["field"] == field


def test_a_collection_keeps_the_precision_it_was_created_with(client, redis_client):
    from shared.encoding.precision import host_precision

    assert client.post("/v1/collections", json={"name": "half", "precision": "fp16"}).json["precision"] == "fp16"
    assert client.post("/v1/collections", json={"name": "auto", "precision": "auto"}).json["precision"] == host_precision()
    assert client.post("/v1/collections", json={"name": "plain"}).json["precision"] == host_precision()
    assert client.get("/v1/collections/half").json["precision"] == "fp16"
    # A collection stored before precisions existed was encoded in fp32.
    legacy = json.loads(redis_client.hget(keys.COLLECTIONS, "plain"))
    del legacy["precision"]
    redis_client.hset(keys.COLLECTIONS, "plain", json.dumps(legacy))
    assert client.get("/v1/collections/plain").json["precision"] == "fp32"


def test_a_collection_names_its_encoder_setting(make_app, redis_client, monkeypatch):
    monkeypatch.setitem(ENCODER_SETTINGS, "v-test", replace(V1, caption_conse_mix=0.5))
    client = make_app(encoder_setting="v-test").test_client()
    assert client.post("/v1/collections", json={"name": "new"}).json["encoder_setting"] == "v-test"  # the default
    assert client.post("/v1/collections", json={"name": "old", "encoder_setting": "v1"}).json["encoder_setting"] == "v1"
    assert client.get("/v1/collections/new").json["encoder_setting"] == "v-test"
    schema = client.get("/openapi.json").json["components"]["schemas"]["CollectionCreate"]["properties"]
    assert schema["encoder_setting"]["default"] == "v-test" and "v1" in schema["encoder_setting"]["enum"]
    # A collection stored before encoder settings existed was encoded with v1.
    legacy = json.loads(redis_client.hget(keys.COLLECTIONS, "new"))
    del legacy["encoder_setting"]
    redis_client.hset(keys.COLLECTIONS, "new", json.dumps(legacy))
    assert client.get("/v1/collections/new").json["encoder_setting"] == "v1"


def test_an_unknown_encoder_setting_is_refused_with_the_known_ones(client, redis_client):
    error = assert_error(client.post("/v1/collections", json={"name": "p", "encoder_setting": "v0"}),
                         400, "invalid_request")
    assert error["message"] == f"encoder_setting must be one of {', '.join(ENCODER_SETTINGS)}; got 'v0'"
    assert error["details"]["field"] == "encoder_setting" and not redis_client.exists(keys.COLLECTIONS)


def test_unavailable_model_is_a_bad_request(client, redis_client):
    error = assert_error(client.post("/v1/collections", json={"name": "p", "image_model": "vgg"}),
                         400, "invalid_request")
    assert "vgg" in error["message"]
    assert not redis_client.exists(keys.COLLECTIONS)


# Validation: nothing is enqueued or stored for a malformed request ------------------------

ITEM = {"id": "a", "image": {"base64": b64(PNG)}, "text": "a cat"}


def items_json(*items: Any) -> dict[str, Any]:
    return {"json": {"items": list(items)}}


def multipart(images: int = 0, items: Any = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"image": [(io.BytesIO(PNG), f"{i}.png") for i in range(images)], **extra}
    if items is not None:
        data["items"] = items if isinstance(items, str) else json.dumps(items)
    return {"data": data, "content_type": "multipart/form-data"}


def raw(text: str | bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"data": text, "content_type": content_type}


BAD_INGESTS = [
    ("bad JSON", raw('{"items": ['), 400, None),
    ("non-UTF-8 body", raw(b'{"items": [{"text": "caf\xe9"}]}'), 400, None),
    ("NaN in metadata", raw('{"items": [{"text": "a", "metadata": {"x": NaN}}]}'), 400, None),
    ("body not an object", raw("[]"), 400, None),
    ("items not an array", {"json": {"items": {"a": 1}}}, 400, None),
    ("no items", items_json(), 400, None),
    ("unknown top-level field", {"json": {"items": [ITEM], "replace": True}}, 400, None),
    ("item not an object", items_json("a.jpg"), 400, 0),
    ("unknown item field", items_json({"text": "a", "caption": "b"}), 400, 0),
    ("neither image nor text", items_json(ITEM, {"id": "b", "metadata": {"k": 1}}), 400, 1),
    ("blank text only", items_json({"text": "   "}), 400, 0),
    ("text not a string", items_json({"text": ["a"]}), 400, 0),
    ("text too long", items_json({"text": "x" * 51}), 400, 0),
    ("metadata not an object", items_json({"text": "a", "metadata": [1]}), 400, 0),
    ("empty id", items_json({"id": "", "text": "a"}), 400, 0),
    ("id too long", items_json({"id": "x" * 257, "text": "a"}), 400, 0),
    ("id not printable", items_json({"id": "a\nb", "text": "a"}), 400, 0),
    ("id not a string", items_json({"id": 7, "text": "a"}), 400, 0),
    ("duplicate ids", items_json(ITEM, {"id": "b", "text": "b"}, {"id": "a", "text": "c"}), 400, 2),
    ("too many items", items_json(*({"text": f"t{i}"} for i in range(6))), 413, None),
    ("body too large", items_json({"text": "a", "metadata": {"blob": "x" * 70_000}}), 413, None),
    ("bad base64", items_json({"image": {"base64": "not base64!"}}), 400, 0),
    ("image over max_image_bytes", items_json({"image": {"base64": b64(b"x" * 2049)}}), 413, 0),
    ("empty base64", items_json({"image": {"base64": ""}}), 400, 0),
    ("two image sources", items_json({"image": {"base64": b64(PNG), "url": "https://x.org/a.jpg"}}), 400, 0),
    ("image not an object", items_json({"image": "https://x.org/a.jpg"}), 400, 0),
    ("file:// URL", items_json({"image": {"url": "file:///etc/passwd"}}), 400, 0),
    ("URL without host", items_json({"image": {"url": "http:///a.jpg"}}), 400, 0),
    ("path without ingest root", items_json({"image": {"path": "a.jpg"}}), 400, 0),
    ("wrong content type", raw("items=1", "application/x-www-form-urlencoded"), 415, None),
    ("no content type", {"data": b'{"items": []}'}, 415, None),
    ("empty multipart", multipart(), 400, None),
    ("multipart items not JSON", multipart(1, "[{"), 400, None),
    ("multipart items not an array", multipart(1, {"id": "a"}), 400, None),
    ("multipart item with an image field", multipart(1, [{"image": {"url": "https://x.org/a"}}]), 400, 0),
    ("multipart extra item without text", multipart(1, [{"id": "a"}, {"id": "b"}]), 400, 1),
    ("multipart unknown part", multipart(1, caption="a cat"), 400, None),
    ("multipart too many images", multipart(6), 413, None),
    ("multipart image too large",
     {"data": {"image": (io.BytesIO(b"x" * 3000), "big.png")}, "content_type": "multipart/form-data"}, 413, 0),
]


@pytest.mark.parametrize("request_kw, status, index", [c[1:] for c in BAD_INGESTS],
                         ids=[c[0] for c in BAD_INGESTS])
def test_malformed_ingest_is_refused_whole(client, coll, redis_client, request_kw, status, index):
    code = {400: "invalid_request", 413: "payload_too_large", 415: "unsupported_media_type"}[status]
    error = assert_error(client.post("/v1/collections/photos/items", **request_kw), status, code)
    if index is not None:
        assert error["details"]["index"] == index and error["details"]["field"]
    assert redis_client.llen(queues.ENCODE) == 0
    assert not list(redis_client.scan_iter("mms:job:*")) and not list(redis_client.scan_iter("mms:stage:*"))


@pytest.fixture
def rooted(make_app, tmp_path, redis_client):
    """A client with an ingest root holding a.jpg, a symlink out of it, and a secret beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(PNG)
    (tmp_path / "secret.jpg").write_bytes(PNG)
    (root / "escape.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    client = make_app(ingest_root=root).test_client()
    assert client.post("/v1/collections", json={"name": "photos"}).status_code == 201
    return client, root


@pytest.mark.parametrize("path", ["../secret.jpg", "sub/../../secret.jpg", "/etc/passwd", "escape.jpg", "loop.jpg", ".", "a\x00b"])
def test_paths_outside_the_ingest_root_are_refused(rooted, redis_client, path):
    client, _ = rooted
    resp = client.post("/v1/collections/photos/items", json={"items": [{"image": {"path": path}}]})
    assert assert_error(resp, 400, "invalid_request")["details"] == {"index": 0, "field": "image.path"}
    assert redis_client.llen(queues.ENCODE) == 0


def test_paths_inside_the_ingest_root_are_resolved(rooted, redis_client):
    client, root = rooted
    resp = client.post("/v1/collections/photos/items", json={"items": [
        {"id": "a", "image": {"path": "sub/../sub/a.jpg"}}, {"id": "missing", "image": {"path": "nope.jpg"}}]})
    assert resp.status_code == 202, resp.json
    (message,) = queued(redis_client, queues.ENCODE)
    # A missing file is the item's failure, reported by the encode worker in the job's errors.
    assert [it["image"] for it in message["items"]] == [{"path": str(root.resolve() / "sub" / "a.jpg")},
                                                        {"path": str(root.resolve() / "nope.jpg")}]


def search_json(**body: Any) -> dict[str, Any]:
    return {"json": body}


def search_form(**fields: Any) -> dict[str, Any]:
    return {"data": fields, "content_type": "multipart/form-data"}


BAD_SEARCHES = [
    ("k=0", search_json(text="cat", k=0), 400, "k"),
    ("k=1001", search_json(text="cat", k=1001), 400, "k"),
    ("k=true", search_json(text="cat", k=True), 400, "k"),
    ("k='5'", search_json(text="cat", k="5"), 400, "k"),
    ("k=2.5", search_json(text="cat", k=2.5), 400, "k"),
    ("offset=-1", search_json(text="cat", offset=-1), 400, "offset"),
    ("offset + k > 1000", search_json(text="cat", k=10, offset=991), 400, "offset"),
    ("offset='5'", search_json(text="cat", offset="5"), 400, "offset"),
    ("NaN weight", raw('{"text": "cat", "weights": {"text": NaN}}'), 400, "body"),
    ("Infinity weight", raw('{"text": "cat", "weights": {"text": 1e400}}'), 400, "weights.text"),
    ("negative weight", search_json(text="cat", weights={"text": -1}), 400, "weights.text"),
    ("weight not a number", search_json(text="cat", weights={"text": "1"}), 400, "weights.text"),
    ("unknown weight", search_json(text="cat", weights={"audio": 1}), 400, "weights.audio"),
    ("weights of present blocks all 0", search_json(text="cat", weights={"text": 0, "image": 1}), 400, "weights"),
    ("weights not an object", search_json(text="cat", weights=[1, 1]), 400, "weights"),
    ("no text and no image", search_json(k=5), 400, "text"),
    ("blank text", search_json(text="  "), 400, "text"),
    ("text not a string", search_json(text=5), 400, "text"),
    ("unknown field", search_json(text="cat", limit=5), 400, "limit"),
    ("filter not an object", search_json(text="cat", filter="a=b"), 400, "filter"),
    ("unknown filter operator", search_json(text="cat", filter={"a": {"$regex": "x"}}), 400, "filter.a.$regex"),
    ("operator without $", search_json(text="cat", filter={"a": {"gte": 1}}), 400, "filter.a.gte"),
    ("empty filter condition", search_json(text="cat", filter={"a": {}}), 400, "filter.a"),
    ("filter value a list", search_json(text="cat", filter={"a": [1, 2]}), 400, "filter.a"),
    ("filter $in not a list", search_json(text="cat", filter={"a": {"$in": "x"}}), 400, "filter.a.$in"),
    ("filter $nin of objects", search_json(text="cat", filter={"a": {"$nin": [1, {"b": 2}]}}), 400,
     "filter.a.$nin[1]"),
    ("filter $in too long", search_json(text="cat", filter={"a": {"$in": list(range(1001))}}), 400, "filter.a.$in"),
    ("filter bound a string", search_json(text="cat", filter={"a": {"$gte": "2020"}}), 400, "filter.a.$gte"),
    ("filter bound a boolean", search_json(text="cat", filter={"a": {"$lt": True}}), 400, "filter.a.$lt"),
    ("filter bound too large", raw('{"text": "cat", "filter": {"a": {"$gt": 1e400}}}'), 400, "filter.a.$gt"),
    ("filter $exists not a boolean", search_json(text="cat", filter={"a": {"$exists": 1}}), 400, "filter.a.$exists"),
    ("filter $eq an object", search_json(text="cat", filter={"a": {"$eq": {"b": 1}}}), 400, "filter.a.$eq"),
    ("filter $or empty", search_json(text="cat", filter={"$or": []}), 400, "filter.$or"),
    ("filter $and of a value", search_json(text="cat", filter={"$and": [{"a": 1}, 3]}), 400, "filter.$and[1]"),
    ("filter unknown top-level operator", search_json(text="cat", filter={"$not": {"a": 1}}), 400, "filter.$not"),
    ("filter nested too deep", search_json(text="cat", filter={"$or": [{"$or": [{"$or": [{"$or": [{"$or": [
        {"a": 1}]}]}]}]}]}), 400, "filter.$or[0].$or[0].$or[0].$or[0].$or[0]"),
    ("bad base64 image", search_json(image={"base64": "@@@"}), 400, "image.base64"),
    ("ftp URL image", search_json(image={"url": "ftp://x.org/a.jpg"}), 400, "image.url"),
    ("non-UTF-8 body", raw(b'{"text": "\xff"}'), 400, "body"),
    ("multipart k not a number", search_form(text="cat", k="ten"), 400, "k"),
    ("multipart k=0", search_form(text="cat", k="0"), 400, "k"),
    ("multipart offset not a number", search_form(text="cat", offset="-3"), 400, "offset"),
    ("multipart offset + k > 1000", search_form(text="cat", k="500", offset="501"), 400, "offset"),
    ("multipart weights not JSON", search_form(text="cat", weights="{text: 1}"), 400, "weights"),
    ("multipart two images", search_form(image=[(io.BytesIO(PNG), "a.png"), (io.BytesIO(PNG), "b.png")]),
     400, "image"),
    ("multipart nothing", search_form(), 400, "text"),
]


@pytest.mark.parametrize("request_kw, status, field", [c[1:] for c in BAD_SEARCHES], ids=[c[0] for c in BAD_SEARCHES])
def test_malformed_search_is_refused(client, coll, redis_client, request_kw, status, field):
    error = assert_error(client.post("/v1/collections/photos/search", **request_kw), status, "invalid_request")
    assert error["details"]["field"] == field
    assert redis_client.llen(queues.QUERY) == 0 and redis_client.llen(keys.SEARCH_REQUESTS) == 0
    assert not list(redis_client.scan_iter("mms:job:*")) and not list(redis_client.scan_iter("mms:stage:*"))


def test_bad_async_flag_and_unknown_collection(client, coll, redis_client):
    assert_error(client.post("/v1/collections/photos/search?async=maybe", json={"text": "cat"}), 400, "invalid_request")
    assert_error(client.post("/v1/collections/nope/search", json={"text": "cat"}), 404, "not_found")
    assert_error(client.post("/v1/collections/nope/items", json={"items": [ITEM]}), 404, "not_found")
    assert redis_client.llen(queues.QUERY) == 0 and redis_client.llen(queues.ENCODE) == 0
    assert redis_client.llen(keys.SEARCH_REQUESTS) == 0


# Ingest ---------------------------------------------------------------------------------

def test_json_ingest_stages_and_enqueues_in_batches(client, coll, redis_client):
    resp = client.post("/v1/collections/photos/items", json={"items": [
        ITEM,
        {"image": {"url": "https://example.org/b.jpg"}, "metadata": {"src": "web"}},
        {"id": "c/d.jpg", "text": "text only"},
    ]})
    assert resp.status_code == 202, resp.json
    body = resp.json
    assert body["ids"][0] == "a" and re.fullmatch(r"[0-9a-f]{32}", body["ids"][1]) and body["ids"][2] == "c/d.jpg"
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    c = cid(redis_client)
    staged_key = keys.staged(c, body["job_id"], 0)
    assert redis_client.get(staged_key) == PNG
    messages = queued(redis_client, queues.ENCODE)
    assert len(messages) == 2  # encode_batch = 2
    assert {m["_task"] for m in messages} == {queues.ENCODE_ITEMS}
    items = [it for m in messages for it in m["items"]]
    assert all(m["job_id"] == body["job_id"] and m["cid"] == c and m["collection"] == "photos" for m in messages)
    assert [it["index"] for it in items] == [0, 1, 2] and [it["id"] for it in items] == body["ids"]
    assert items[0]["image"] == {"staged": staged_key} and items[0]["text"] == "a cat"
    assert items[1]["image"] == {"url": "https://example.org/b.jpg"} and items[1]["metadata"] == {"src": "web"}
    assert items[2]["image"] is None and items[2]["metadata"] == {}
    # The job keeps each item's message until it is counted, for the reaper to send it again.
    kept = redis_client.hgetall(keys.job_messages(body["job_id"]))
    assert {int(index): json.loads(raw) for index, raw in kept.items()} == {it["index"]: it for it in items}

    job = client.get(body["status_url"]).json
    assert (job["kind"], job["state"], job["total"], job["done"], job["failed"]) == ("ingest", "queued", 3, 0, 0)
    assert job["collection"] == "photos" and job["errors"] == [] and job["result"] is None


def test_multipart_ingest_aligns_items_with_images(client, coll, redis_client):
    meta = [{"id": "one", "text": "first"}, {"metadata": {"n": 2}}, {}, {"id": "four", "text": "text only"}]
    resp = client.post("/v1/collections/photos/items", content_type="multipart/form-data", data={
        "image": [(io.BytesIO(PNG + bytes([i])), f"{i}.png") for i in range(3)],
        "items": (io.BytesIO(json.dumps(meta).encode()), "items.json")})
    assert resp.status_code == 202, resp.json
    ids, job_id = resp.json["ids"], resp.json["job_id"]
    assert ids[:3] == ["one", "1.png", "2.png"] and ids[3] == "four"  # file names unless items name ids
    c = cid(redis_client)
    assert [redis_client.get(keys.staged(c, job_id, i)) for i in range(4)] == [PNG + b"\0", PNG + b"\1", PNG + b"\2", None]
    messages = queued(redis_client, queues.ENCODE)
    items = [it for m in messages for it in m["items"]]
    assert len(messages) == 2 and [it["id"] for it in items] == ids
    assert [it["image"] for it in items] == [{"staged": keys.staged(c, job_id, i)} for i in range(3)] + [None]
    assert items[1]["metadata"] == {"n": 2} and items[3]["text"] == "text only"


def test_multipart_ids_are_file_names_without_folders_unless_they_repeat(client, coll):
    resp = client.post("/v1/collections/photos/items", content_type="multipart/form-data", data={
        "image": [(io.BytesIO(PNG), name) for name in ("trip/cat.jpg", "a.png", "b/a.png", "", "dog.jpg")]})
    assert resp.status_code == 202, resp.json
    ids = resp.json["ids"]
    assert ids[0] == "cat.jpg" and ids[4] == "dog.jpg"
    assert all(len(i) == 32 and i not in ("a.png", "") for i in ids[1:4])  # a.png twice, one unnamed: generated


def test_jobs_unknown_and_cancel(client, coll, redis_client):
    assert_error(client.get("/v1/jobs/0123456789abcdef"), 404, "not_found")
    assert_error(client.delete("/v1/jobs/0123456789abcdef"), 404, "not_found")
    job_id = client.post("/v1/collections/photos/items", json={"items": [ITEM]}).json["job_id"]
    resp = client.delete(f"/v1/jobs/{job_id}")
    assert resp.status_code == 202 and resp.json["cancel_requested"] is True and resp.json["job_id"] == job_id
    assert client.get(f"/v1/jobs/{job_id}").json["cancel_requested"] is True


def test_delete_item_appends_to_its_shard_log(client, coll, redis_client):
    resp = client.delete("/v1/collections/photos/items/some/id.jpg")
    assert resp.status_code == 202
    job = client.get(resp.json["status_url"]).json
    assert job["kind"] == "delete" and job["total"] == 1 and job["done"] == 1
    entries = redis_client.xrange(keys.shard_log(cid(redis_client), shard_for("some/id.jpg", 3)))
    assert [(e[b"op"], e[b"id"]) for _, e in entries] == [(b"delete", b"some/id.jpg")]
    assert client.delete("/v1/collections/photos/items/never-ingested").status_code == 202
    assert_error(client.delete("/v1/collections/nope/items/a"), 404, "not_found")


# Look-ups and search without workers ------------------------------------------------------

def test_item_lookup_needs_a_live_shard_owner(client, coll, redis_client):
    assert_error(client.get("/v1/collections/nope/items/a"), 404, "not_found")
    slot = queues.slot_for_shard(shard_for("a", 3), APP_SETTINGS["shard_slots"])
    error = assert_error(client.get("/v1/collections/photos/items/a"), 503, "unavailable")
    assert error["details"]["slot"] == slot
    redis_client.set(keys.slot_owner(slot), "someone", ex=30)
    started = time.monotonic()
    assert_error(client.get("/v1/collections/photos/items/a/thumbnail"), 503, "unavailable")
    assert time.monotonic() - started >= APP_SETTINGS["shard_timeout_s"]
    (raw,) = redis_client.lrange(keys.slot_searches(slot), 0, -1)  # the request nobody served
    request = json.loads(raw)["request"]
    assert request["op"] == queues.SLOT_ITEM and request["item_id"] == "a" and request["thumbnail"] is True
    assert request["cid"] == cid(redis_client) and request["shard"] == shard_for("a", 3)


def serve_one_request(redis_client, slot: int, answer: dict[str, Any]) -> threading.Thread:
    """A stand-in for the slot's shard worker: takes one request from the slot's list and
    answers `answer` (with the request's id in place of "<id>")."""
    def serve() -> None:
        request = replies.take(redis_client, keys.slot_searches(slot), 5)
        body = json.loads(json.dumps(answer).replace("<id>", request.body["item_id"]))
        replies.answer(redis_client, request.reply_to, body)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_item_lookup_answers_what_the_slot_answered(client, coll, redis_client):
    item_id = "dir/a.jpg"
    slot = queues.slot_for_shard(shard_for(item_id, 3), APP_SETTINGS["shard_slots"])
    redis_client.set(keys.slot_owner(slot), "someone", ex=30)
    record = {"id": "<id>", "text": "a cat", "metadata": {"n": 1}, "has_image": True, "shard": shard_for(item_id, 3),
              "thumbnail_b64": b64(b"jpeg bytes")}
    serve_one_request(redis_client, slot, {"item": record})
    resp = client.get(f"/v1/collections/photos/items/{item_id}")
    assert resp.status_code == 200
    assert resp.json == {"id": item_id, "text": "a cat", "metadata": {"n": 1}, "has_image": True,
                         "shard": shard_for(item_id, 3)}
    serve_one_request(redis_client, slot, {"item": record})
    resp = client.get(f"/v1/collections/photos/items/{item_id}/thumbnail")
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg" and resp.data == b"jpeg bytes"
    serve_one_request(redis_client, slot, {"item": {**record, "thumbnail_b64": None}})
    assert_error(client.get(f"/v1/collections/photos/items/{item_id}/thumbnail"), 404, "not_found")
    serve_one_request(redis_client, slot, {"item": None})
    error = assert_error(client.get(f"/v1/collections/photos/items/{item_id}"), 404, "not_found")
    assert error["details"] == {"collection": "photos", "id": item_id}
    serve_one_request(redis_client, slot, {"error": "look-up failed"})
    assert_error(client.get(f"/v1/collections/photos/items/{item_id}"), 500, "internal")
    assert not redis_client.exists(keys.slot_searches(slot))


def test_sync_search_without_workers_times_out(client, coll, redis_client):
    started = time.monotonic()
    error = assert_error(client.post("/v1/collections/photos/search", json={"text": "cat", "k": 3}),
                         503, "unavailable")
    assert time.monotonic() - started >= APP_SETTINGS["search_timeout_s"]
    assert "timed out" in error["message"]
    assert redis_client.llen(queues.QUERY) == 0  # no Celery task: a request on the query workers' list
    (raw,) = redis_client.lrange(keys.SEARCH_REQUESTS, 0, -1)
    sent = json.loads(raw)
    message = sent["request"]
    assert message["text"] == "cat" and message["k"] == 3 and "offset" not in message
    assert message["job_id"] is None and message["cid"] == cid(redis_client)
    assert sent["reply_to"] == keys.search_answer(message["search_id"])
    assert sent["expires"] <= time.time() + 0.1  # nobody may take it once its asker gave up
    client.post("/v1/collections/photos/search", json={"text": "cat", "k": 10, "offset": 990})
    assert json.loads(redis_client.lrange(keys.SEARCH_REQUESTS, -1, -1)[0])["request"]["offset"] == 990


def test_a_sync_search_carries_its_uploaded_image_in_the_request_and_stages_nothing(client, coll, redis_client):
    assert_error(client.post("/v1/collections/photos/search", content_type="multipart/form-data",
                             data={"image": (io.BytesIO(PNG), "q.png"), "k": "4"}), 503, "unavailable")
    (raw,) = redis_client.lrange(keys.SEARCH_REQUESTS, 0, -1)
    message = json.loads(raw)["request"]
    assert message["image"] == {"inline": base64.b64encode(PNG).decode()} and message["k"] == 4
    assert not list(redis_client.scan_iter("mms:stage:*"))


def test_async_search_creates_a_job_and_stages_the_query_image(client, coll, redis_client):
    resp = client.post("/v1/collections/photos/search?async=1", content_type="multipart/form-data", data={
        "image": (io.BytesIO(PNG), "q.png"), "text": "cat", "k": "7", "weights": '{"image": 2}',
        "filter": '{"src": "web", "year": {"$gte": 2020, "$lt": 2024}, "$or": [{"tag": {"$in": ["a", 1, null]}}, '
                  '{"tag": {"$exists": false}}]}'})
    assert resp.status_code == 202, resp.json
    sid = resp.json["job_id"]
    assert resp.json["status_url"] == f"/v1/jobs/{sid}"
    job = client.get(f"/v1/jobs/{sid}").json
    assert (job["kind"], job["state"], job["total"]) == ("search", "queued", 1)
    (message,) = queued(redis_client, queues.QUERY)
    staged_key = keys.staged(cid(redis_client), sid, 0)
    assert message["_id"] == sid and message["job_id"] == sid and message["image"] == {"staged": staged_key}
    assert (message["k"], message["weights"]) == (7, {"image": 2.0})
    assert message["filter"] == {"src": "web", "year": {"$gte": 2020, "$lt": 2024},
                                 "$or": [{"tag": {"$in": ["a", 1, None]}}, {"tag": {"$exists": False}}]}
    assert redis_client.get(staged_key) == PNG


# Auth, errors, operations -----------------------------------------------------------------

def test_api_keys(make_app):
    client = make_app(api_keys=("k1", "k2")).test_client()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}, {"Authorization": "Basic k1"}):
        resp = client.get("/v1/collections", headers=headers)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/v1/collections", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    ops = client.get("/openapi.json").json["paths"]
    assert ops["/v1/collections"]["get"]["security"] == [{"bearerAuth": []}]


def test_http_errors_use_the_error_body(client):
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    resp = client.put("/v1/collections")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


def test_unexpected_errors_are_internal_without_details(client, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("secret internals")
    monkeypatch.setattr(catalog, "list_collections", boom)
    resp = client.get("/v1/collections")
    assert_error(resp, 500, "internal")
    assert "secret" not in resp.get_data(as_text=True)


def test_redis_down_is_unavailable(make_app):
    client = make_app(redis_url="redis://127.0.0.1:9/0").test_client()
    assert_error(client.get("/v1/collections"), 503, "unavailable")
    assert_error(client.get("/readyz"), 503, "unavailable")
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_wants_an_owner_that_has_loaded_every_shard_slot(client, redis_client):
    assert client.get("/readyz").status_code == 200  # no collections: nothing to own
    client.post("/v1/collections", json={"name": "photos", "shards": 3})
    error = assert_error(client.get("/readyz"), 503, "unavailable")
    assert error["details"]["missing_slots"] == [0, 1] and error["details"]["redis"] == "ok"
    redis_client.set(keys.slot_owner(0), "w0", ex=30)
    redis_client.set(keys.slot_replica(1, 0), "r1", ex=30)  # answers searches; writes would wait
    error = assert_error(client.get("/readyz"), 503, "unavailable")
    assert error["details"]["missing_slots"] == [1] and error["details"]["missing_shards"] == {"photos": [1]}
    assert "without a live owner: [1]" in error["message"]
    redis_client.set(keys.slot_owner(1), "w1", ex=30)
    redis_client.set(keys.slot_serving(0), "w0")
    redis_client.set(keys.slot_serving(1), "an-earlier-owner")  # w1 is still loading slot 1
    error = assert_error(client.get("/readyz"), 503, "unavailable")
    assert error["details"]["missing_slots"] == [] and error["details"]["loading_slots"] == [1]
    assert "still loading their shards: [1]" in error["message"]
    redis_client.set(keys.slot_serving(1), "w1")
    redis_client.rpush(queues.ENCODE, "m1", "m2")
    resp = client.get("/readyz")
    assert resp.status_code == 200 and resp.json["status"] == "ready"
    assert resp.json["queues"] == {queues.ENCODE: 2, queues.QUERY: 0}
    assert resp.json["roles"] == {"encode": "ready", "query": "ready"}


def test_until_the_workers_are_ready_readyz_search_and_ingest_say_why(client, redis_client, ready_workers):
    from shared.store.roles import READY

    client.post("/v1/collections", json={"name": "photos", "shards": 1})
    redis_client.set(keys.slot_owner(0), "w0", ex=30)
    encode, query = ready_workers
    encode.stage("compiling image model efficientnet_lite0 for batch 8")
    query.withdraw()  # no query worker at all
    error = assert_error(client.get("/readyz"), 503, "unavailable")
    assert error["details"]["roles"] == {
        "encode": "encode worker: compiling image model efficientnet_lite0 for batch 8, 0 s",
        "query": "query worker: none running"}
    assert "compiling image model" in error["message"] and "query worker: none running" in error["message"]
    error = assert_error(client.post("/v1/collections/photos/search", json={"text": "cat"}), 503, "unavailable")
    assert error["message"] == "search cannot be served yet: query worker: none running"
    error = assert_error(client.post("/v1/collections/photos/items", json={"items": [{"text": "a cat"}]}),
                         503, "unavailable")
    assert error["message"].startswith("ingest cannot be served yet: encode worker: compiling image model")
    assert redis_client.llen(queues.ENCODE) == 0 and not redis_client.keys(keys.job("*"))  # nothing enqueued
    # Bad input is still a 400 first.
    assert_error(client.post("/v1/collections/photos/search", json={"k": 3}), 400, "invalid_request")
    encode.stage(READY)
    assert client.post("/v1/collections/photos/items", json={"items": [{"text": "a cat"}]}).status_code == 202
    error = assert_error(client.get("/readyz"), 503, "unavailable")
    assert error["details"]["roles"] == {"encode": "ready", "query": "query worker: none running"}


def test_index_page(client):
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert b"<title>mmsearch</title>" in resp.data and b"/openapi.json" in resp.data


def test_docs_page_is_served_with_its_assets_under_the_pages_csp(make_app):
    client = make_app(api_keys=("k",)).test_client()  # the page and its document need no key
    page, index = client.get("/docs"), client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html" and b"/static/docs.js" in page.data
    assert page.headers["Content-Security-Policy"] == index.headers["Content-Security-Policy"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/static/docs.js", "/static/docs.css"):
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/openapi.json").status_code == 200


def test_the_api_loads_no_model(redis_server, redis_client, ready_workers):
    code = ("import sys; from api.wsgi import app; c = app.test_client(); "
            "assert c.post('/v1/collections', json={'name': 'p'}).status_code == 201; "
            "assert c.post('/v1/collections/p/items', json={'items': [{'text': 'a'}]}).status_code == 202; "
            "assert 'torch' not in sys.modules, 'the API imported torch'; "
            "from shared.encoding.text_encoder import create_text_model; "
            "assert create_text_model.cache_info().currsize == 0, 'the API loaded a text model'")
    env = {**os.environ, "REDIS_URL": redis_server, "MMSEARCH_API_KEYS": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120,
                   cwd=Path(__file__).resolve().parents[3])


# OpenAPI --------------------------------------------------------------------------------

def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_describes_exactly_the_routes(make_app):
    app = make_app()
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200
    spec = resp.json
    assert spec["openapi"].startswith("3.0.") and spec["info"]["title"] and spec["info"]["version"]
    assert set(spec["components"]) >= {"schemas", "responses", "parameters", "securitySchemes"}
    for ref in _refs(spec):  # every reference resolves inside the document
        node = spec
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]

    in_code: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        in_code.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    in_spec = {path: set(ops) for path, ops in spec["paths"].items()}
    assert in_spec == in_code

    params = spec["components"]["parameters"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (path, method)
            declared = {params[p["$ref"].rsplit("/", 1)[1]]["name"] for p in op.get("parameters", [])
                        if params[p["$ref"].rsplit("/", 1)[1]]["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status)
                if path.startswith("/v1") and status.startswith(("4", "5")):
                    assert response["$ref"].startswith("#/components/responses/")  # the shared Error body
                else:
                    assert response["description"] and response["content"]
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message", "details"]
    assert spec["components"]["schemas"]["ItemsRequest"]["properties"]["items"]["maxItems"] == 5


def test_a_long_poll_answers_when_the_job_ends_or_the_wait_is_over(client, coll, redis_client):
    from shared.store import jobs as job_store

    job_id = client.post("/v1/collections/photos/items", json={"items": [ITEM]}).json["job_id"]
    started = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}?wait=0.3").json["state"] == "queued"  # not final: after the wait
    assert time.monotonic() - started >= 0.3
    for bad in ("31", "-1", "nan", "soon"):
        assert_error(client.get(f"/v1/jobs/{job_id}?wait={bad}"), 400, "invalid_request")
    assert_error(client.get("/v1/jobs/0123456789abcdef?wait=5"), 404, "not_found")
    search_id = client.post("/v1/collections/photos/search?async=1", json={"text": "cat"}).json["job_id"]
    # What the query worker does when the search is done, 0.2 s from now.
    threading.Timer(0.2, job_store.set_search_result, args=(redis_client, search_id, {"hits": []}, None, 60)).start()
    resp = client.get(f"/v1/jobs/{search_id}?wait=30")
    assert resp.json["state"] == "succeeded" and time.monotonic() - started < 30


def test_existence_checks_refuse_bad_ids_and_name_dead_slots(client, coll, redis_client):
    url = "/v1/collections/photos/items/exists"
    for body in ({}, {"ids": []}, {"ids": "a"}, {"ids": [1]}, {"ids": ["x"] * 1001}, {"ids": [""]}):
        assert assert_error(client.post(url, json=body), 400, "invalid_request")["details"]["field"] == "ids"
    assert_error(client.post("/v1/collections/nope/items/exists", json={"ids": ["a"]}), 404, "not_found")
    error = assert_error(client.post(url, json={"ids": ["a", "b", "c", "d"]}), 503, "unavailable")
    assert error["details"]["slots"] and redis_client.llen(keys.slot_searches(0)) == 0  # nothing asked
