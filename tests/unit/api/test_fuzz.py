"""Property-based fuzzing of the request bodies (issue 5): never a 5xx.

Hypothesis generates JSON bodies for ingest, search and collection creation (well-formed,
ill-typed and in between: NaN and huge numbers, odd strings, nesting, unknown fields,
hostile image sources), raw byte bodies under random content types, and multipart forms,
and sends them to the Flask app (real Redis, no workers: searches go with `?async=1`, so
a valid one is a 202 and nothing waits). Every answer must be a 2xx or a 4xx with the API's
error body. Fixed seed (`derandomize=True`), bounded: 320 cases in all
(80 + 80 + 60 + 30 + 30 + 40).
"""
from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from api import create_app
from tests.support.workers import reporting_ready

# Hypothesis's caches go to the temp folder, not into the work tree.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "mmsearch-hypothesis"))
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)


@pytest.fixture(scope="module")
def client(redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-root")
    (root / "a.jpg").write_bytes(PNG)
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    (root / "out.jpg").symlink_to("/etc/hostname")
    r = redis.Redis.from_url(redis_server)
    r.flushdb()
    app = create_app({"redis_url": redis_server, "data_dir": tmp_path_factory.mktemp("fuzz-data"),
                      "ingest_root": root, "api_keys": (), "max_items_per_request": 20,
                      "max_image_bytes": 4096, "max_text_chars": 200, "max_request_bytes": 256 * 1024,
                      "search_timeout_s": 0.2, "shard_timeout_s": 0.2, "rate_limit": 0})
    app.testing = True
    c = app.test_client()
    assert c.post("/v1/collections", json={"name": "photos", "shards": 2}).status_code == 201
    with reporting_ready(r):  # the workers are up: searches reach the (absent) shards and time out
        yield c
    r.flushdb()


def check(resp) -> None:
    """A 2xx, or a 4xx with the API's error body; never a 5xx."""
    assert resp.status_code < 500, (resp.status_code, resp.get_data()[:300])
    assert resp.content_type == "application/json; charset=utf-8"
    body = resp.get_json()
    if resp.status_code >= 400:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
        assert "Traceback" not in resp.get_data(as_text=True)


# Strategies -------------------------------------------------------------------------------

text = st.text(max_size=30) | st.sampled_from(["", " ", "cat", "\u0000", "\u202e", "x" * 250])
edge_numbers = st.sampled_from([10**400, -10**400, -0.0, 0, 1, 1e308, 5e-324, 1e6, 1e6 + 1, 2**63,
                                float("nan"), float("inf"), float("-inf")])
numbers = st.integers(min_value=-10**20, max_value=10**20) | st.floats() | edge_numbers
leaf = st.none() | st.booleans() | numbers | text
json_value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=4)
                          | st.dictionaries(text, kids, max_size=4), max_leaves=12)
urls = st.sampled_from([
    "https://example.com/a.jpg", "http://10.0.0.1/", "http://169.254.169.254/latest/", "http://[::1]/",
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_x", "http://user@h/", "http://h:99999/", "http:///x",
    "http://example.com/a b", "javascript:alert(1)", "http://[::ffff:127.0.0.1]/", "http://2130706433/",
]) | text
paths = st.sampled_from(["a.jpg", "../a.jpg", "/etc/passwd", "fifo", "dir", ".", "out.jpg", "sub/../a.jpg",
                         "missing.jpg", "a\x00b", "x" * 5000]) | text
b64s = st.binary(max_size=64).map(lambda b: base64.b64encode(PNG + b).decode()) | text
image_source = (st.fixed_dictionaries({"base64": b64s}) | st.fixed_dictionaries({"url": urls})
                | st.fixed_dictionaries({"path": paths})
                | st.dictionaries(st.sampled_from(["base64", "url", "path", "file"]), json_value, max_size=3)
                | json_value)
item = st.fixed_dictionaries({}, optional={
    "id": text | json_value, "image": image_source, "text": text | json_value, "metadata": json_value,
    "caption": json_value,
})
ingest_body = st.fixed_dictionaries({"items": st.lists(item, max_size=5) | json_value},
                                    optional={"replace": json_value}) | json_value
weights = (st.dictionaries(st.sampled_from(["image", "text", "audio"]), edge_numbers | numbers | json_value,
                           max_size=3)
           | json_value)
search_body = st.fixed_dictionaries({}, optional={
    "text": text | json_value, "image": image_source, "k": st.integers(-5, 1500) | json_value,
    "weights": weights, "filter": json_value, "limit": json_value,
}) | json_value
# Bodies that are well-formed but for the numbers and the filter, so those checks are reached.
near_valid_search = st.fixed_dictionaries({"text": st.sampled_from(["cat", "a dog on the beach"])}, optional={
    "k": st.integers(-2, 1002) | edge_numbers | json_value,
    "weights": st.fixed_dictionaries({}, optional={"image": edge_numbers | numbers, "text": edge_numbers | numbers}),
    "filter": st.dictionaries(text, leaf | json_value, max_size=3),
})
collection_body = st.fixed_dictionaries({}, optional={
    "name": st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,70}\Z") | text | json_value,
    "shards": st.integers(-2, 70) | json_value, "store_thumbnails": json_value,
    "image_model": st.sampled_from(["efficientnet_lite0", "resnet50", "vgg"]) | json_value,
    "text_model": st.sampled_from(["glove-6b-50d", "/etc/passwd"]) | json_value,
}) | json_value
content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "application/vnd.api+json", "text/plain", "multipart/form-data", "multipart/form-data; boundary=b",
    "application/x-www-form-urlencoded", "image/png", "",
])
endpoints = st.sampled_from(["/v1/collections", "/v1/collections/photos/items",
                             "/v1/collections/photos/search?async=1"])


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity go out as the server must refuse them


# Properties -------------------------------------------------------------------------------

@settings(FUZZ, max_examples=80)
@given(body=ingest_body)
def test_fuzzed_ingest_bodies_never_5xx(client, body):
    check(client.post("/v1/collections/photos/items", data=dumps(body), content_type="application/json"))


@settings(FUZZ, max_examples=80)
@given(body=search_body, name=st.sampled_from(["photos"]) | text)
def test_fuzzed_search_bodies_never_5xx(client, body, name):
    path = f"/v1/collections/{quote(name, safe='') or 'photos'}/search?async=1"
    check(client.post(path, data=dumps(body), content_type="application/json"))


@settings(FUZZ, max_examples=60)
@given(body=near_valid_search)
def test_fuzzed_near_valid_searches_never_5xx(client, body):
    check(client.post("/v1/collections/photos/search?async=1", data=dumps(body), content_type="application/json"))


@settings(FUZZ, max_examples=30)
@given(body=collection_body)
def test_fuzzed_collection_bodies_never_5xx(client, body):
    check(client.post("/v1/collections", data=dumps(body), content_type="application/json"))


@settings(FUZZ, max_examples=30)
@given(endpoint=endpoints, content_type=content_types, data=st.binary(max_size=300)
       | st.sampled_from([b"[" * 5000, b'{"text": "\xff"}', b"--b\r\n\r\n--b--", b'{"items": [{"text": "\\ud800"}]}']))
def test_fuzzed_raw_bodies_never_5xx(client, endpoint, content_type, data):
    headers = {"Content-Type": content_type} if content_type else {}
    check(client.post(endpoint, data=data, headers=headers))


@settings(FUZZ, max_examples=40)
@given(endpoint=st.sampled_from(["/v1/collections/photos/items", "/v1/collections/photos/search?async=1"]),
       fields=st.dictionaries(st.sampled_from(["items", "text", "k", "weights", "filter", "caption"]),
                              st.text(max_size=40) | json_value.map(dumps), max_size=4),
       images=st.lists(st.binary(max_size=64), max_size=3))
def test_fuzzed_multipart_forms_never_5xx(client, endpoint, fields, images):
    data: dict[str, Any] = dict(fields)
    if images:
        data["image"] = [(io.BytesIO(b), f"{i}.png") for i, b in enumerate(images)]
    check(client.post(endpoint, data=data, content_type="multipart/form-data"))
