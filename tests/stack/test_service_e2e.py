"""End to end: the real stack (embedded Redis, gunicorn API, encode/shard/query Celery workers
as separate processes) ingesting real photos over HTTP and answering searches."""
from __future__ import annotations

import base64
import json
import signal
import time

import cv2
import numpy as np
import pytest
import requests

from bench.photos import all_photos
from shared.store import catalog

PHOTOS = all_photos()
BY_NAME = {p.name: p for p in PHOTOS}
CAT = "chelsea"
# Captions for some photos; the rest (the cat among them) are ingested without any text.
CAPTIONS = {"imagenet_04": "fresh strawberries", "imagenet_13": "an old cannon",
            "coffee": "a cup of espresso", "imagenet_10": "a drum"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def recompressed_crop(data: bytes) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    crop = img[int(h * 0.1):int(h * 0.85), int(w * 0.12):int(w * 0.9)]
    crop = cv2.resize(crop, (crop.shape[1] * 2 // 3, crop.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 45])
    assert ok
    return enc.tobytes()


@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack


@pytest.fixture(scope="module")
def api(stack):
    base = f"{stack.api_url}/v1"

    class Api:
        url = base

        def post(self, path, **kw):
            return requests.post(base + path, timeout=60, **kw)

        def get(self, path, **kw):
            return requests.get(base + path, timeout=60, **kw)

        def delete(self, path, **kw):
            return requests.delete(base + path, timeout=60, **kw)

        def wait_job(self, job_id, timeout_s=240):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                body = self.get(f"/jobs/{job_id}").json()
                if body["state"] in ("succeeded", "completed_with_errors", "failed", "cancelled"):
                    return body
                time.sleep(0.3)
            raise AssertionError(f"job {job_id} not final: {body}")

        def search(self, collection="photos", **body):
            resp = self.post(f"/collections/{collection}/search", json=body)
            assert resp.status_code == 200, resp.text
            return resp.json()

    return Api()


@pytest.fixture(scope="module")
def ingested(api):
    """Half the photos by JSON (with and without captions), the rest by multipart upload."""
    resp = api.post("/collections", json={"name": "photos"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["shards"] == 3
    half = len(PHOTOS) // 2
    items = []
    for p in PHOTOS[:half]:
        item = {"id": p.name, "image": {"base64": b64(p.read_bytes())}, "metadata": {"source": "json"}}
        if p.name in CAPTIONS:
            item["text"] = CAPTIONS[p.name]
        items.append(item)
    resp = api.post("/collections/photos/items", json={"items": items})
    assert resp.status_code == 202, resp.text
    assert resp.json()["ids"] == [p.name for p in PHOTOS[:half]]
    json_job = resp.json()["job_id"]

    rest = PHOTOS[half:]
    meta = [{"id": p.name, "metadata": {"source": "multipart"}, **({"text": CAPTIONS[p.name]} if p.name in CAPTIONS else {})}
            for p in rest]
    files = [("image", (p.path.name, p.read_bytes(), "application/octet-stream")) for p in rest]
    resp = api.post("/collections/photos/items", files=files, data={"items": json.dumps(meta)})
    assert resp.status_code == 202, resp.text
    multipart_job = resp.json()["job_id"]
    for job_id in (json_job, multipart_job):
        job = api.wait_job(job_id)
        assert job["state"] == "succeeded", job
        assert job["done"] == job["total"] and job["failed"] == 0
    return {p.name: p for p in PHOTOS}


def test_collection_counts_every_ingested_photo(api, ingested):
    body = api.get("/collections/photos").json()
    assert body["count"] == len(PHOTOS)
    assert body["dims"] == {"image": 1280, "text": 50}


def test_each_photo_is_found_by_a_recompressed_crop_of_itself(api, ingested):
    misses = []
    for name, photo in ingested.items():
        hits = api.search(image={"base64": b64(recompressed_crop(photo.read_bytes()))}, k=3)["hits"]
        if hits[0]["id"] != name:
            misses.append((name, [h["id"] for h in hits]))
    assert not misses


def test_text_query_finds_the_uncaptioned_cat(api, ingested):
    body = api.search(text="cat", k=5)
    assert body["hits"][0]["id"] == CAT
    assert body["hits"][0]["text"] is None  # found through its image semantics, not a caption
    assert body["shards"] == {"total": 3, "answered": 3}


def test_scores_follow_the_weights(api, ingested):
    query = {"image": {"base64": b64(recompressed_crop(ingested["coffee"].read_bytes()))}, "text": "espresso"}
    for weights in ({"image": 1, "text": 0}, {"image": 0, "text": 1}, {"image": 1, "text": 1}):
        hits = api.search(**query, weights=weights, k=5)["hits"]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert len({h["id"] for h in hits}) == len(hits)
        for h in hits:
            parts = h["scores"]
            expected = (weights["image"] * parts["image"] + weights["text"] * parts["text"]) / sum(weights.values())
            assert h["score"] == pytest.approx(expected, abs=1e-4)


def test_upsert_replaces_an_item(api, ingested):
    photo = ingested["imagenet_13"]
    resp = api.post("/collections/photos/items", json={"items": [
        {"id": photo.name, "image": {"base64": b64(photo.read_bytes())}, "text": "a bronze field gun",
         "metadata": {"source": "upsert"}}]})
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    item = api.get(f"/collections/photos/items/{photo.name}").json()
    assert item["text"] == "a bronze field gun" and item["metadata"] == {"source": "upsert"}
    assert item["has_image"] is True
    assert api.get("/collections/photos").json()["count"] == len(PHOTOS)
    thumb = api.get(f"/collections/photos/items/{photo.name}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR) is not None


def test_a_corrupt_image_fails_alone(api):
    assert api.post("/collections", json={"name": "corrupt", "shards": 2}).status_code == 201
    resp = api.post("/collections/corrupt/items", json={"items": [
        {"id": "corrupt", "image": {"base64": b64(b"\xff\xd8\xff\xe0 definitely not a jpeg")}},
        {"id": "good", "image": {"base64": b64(BY_NAME["imagenet_05"].read_bytes())}, "text": "thatched roof"},
    ]})
    job = api.wait_job(resp.json()["job_id"])
    assert job["state"] == "completed_with_errors"
    assert (job["done"], job["failed"], job["total"]) == (1, 1, 2)
    assert job["errors"][0]["id"] == "corrupt" and job["errors"][0]["index"] == 0
    assert api.get("/collections/corrupt/items/corrupt").status_code == 404
    assert api.get("/collections/corrupt/items/good").status_code == 200
    assert api.get("/collections/corrupt").json()["count"] == 1
    assert api.delete("/collections/corrupt").status_code in (202, 204)


def test_delete_removes_an_item_from_results(api):
    """A copy of a photo is found next to it; once deleted, it is in neither look-ups nor results."""
    assert api.post("/collections", json={"name": "deletes", "shards": 2}).status_code == 201
    roof = b64(BY_NAME["imagenet_05"].read_bytes())
    resp = api.post("/collections/deletes/items", json={"items": [
        {"id": "imagenet_05", "image": {"base64": roof}},
        {"id": "extra-copy", "image": {"base64": roof}, "text": "thatched roof"},
        {"id": "coffee", "image": {"base64": b64(BY_NAME["coffee"].read_bytes())}},
    ]})
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    hits = api.search("deletes", image={"base64": roof}, k=10)["hits"]
    assert {h["id"] for h in hits[:2]} == {"imagenet_05", "extra-copy"}
    resp = api.delete("/collections/deletes/items/extra-copy")
    assert resp.status_code == 202
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    assert api.get("/collections/deletes/items/extra-copy").status_code == 404
    hits = api.search("deletes", image={"base64": roof}, k=10)["hits"]
    assert "extra-copy" not in [h["id"] for h in hits]
    assert hits[0]["id"] == "imagenet_05"
    assert api.get("/collections/deletes").json()["count"] == 2
    assert api.delete("/collections/deletes").status_code in (202, 204)


def test_not_found_errors(api, ingested):
    for resp in (api.get("/collections/nope"), api.get("/jobs/0123456789abcdef"),
                 api.get("/collections/photos/items/nope"),
                 api.post("/collections/nope/search", json={"text": "cat"})):
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "not_found"


def test_async_search_job_holds_the_result(api, ingested):
    resp = api.post("/collections/photos/search?async=1", json={"text": "strawberries", "k": 3})
    assert resp.status_code == 202
    job = api.wait_job(resp.json()["job_id"], timeout_s=60)
    assert job["kind"] == "search" and job["state"] == "succeeded"
    assert job["result"]["hits"][0]["id"] == "imagenet_04"


def test_readyz_goes_503_while_a_shard_worker_is_down(stack, api, ingested):
    url = f"{stack.api_url}/readyz"
    assert requests.get(url, timeout=5).status_code == 200
    stack.signal("shard.2", signal.SIGTERM)
    stack.procs["shard.2"].wait(timeout=60)
    deadline = time.monotonic() + 30
    while requests.get(url, timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "readyz never went 503"
        time.sleep(0.3)
    body = api.search(text="cat", k=5)
    assert body["shards"]["answered"] < body["shards"]["total"]
    stack.start_process("shard.2")
    stack.wait_ready(timeout_s=120)
    assert api.search(text="cat", k=5)["shards"]["answered"] == 3


def test_deleting_a_collection_removes_its_items_logs_and_snapshots(stack, api, ingested):
    shards_dir = stack.settings.data_dir / "shards"
    assert api.post("/collections", json={"name": "scratch", "shards": 2}).status_code == 201
    photo = ingested["imagenet_08"]
    resp = api.post("/collections/scratch/items", json={"items": [
        {"id": "tent", "image": {"base64": b64(photo.read_bytes())}}]})
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    folder = shards_dir / catalog.get_collection(stack.redis, "scratch").cid  # its shards' folder
    assert folder.is_dir()
    assert api.delete("/collections/scratch").status_code == 202
    assert api.get("/collections/scratch").status_code == 404
    assert api.post("/collections/scratch/search", json={"text": "tent"}).status_code == 404
    deadline = time.monotonic() + 30
    while folder.exists():
        assert time.monotonic() < deadline, "the shard owners kept the deleted collection's snapshots"
        time.sleep(0.3)
    # A new collection of the same name starts empty.
    assert api.post("/collections", json={"name": "scratch"}).status_code == 201
    assert api.get("/collections/scratch").json()["count"] == 0
    assert api.get("/collections/scratch/items/tent").status_code == 404
