"""End to end on the real stack (embedded Redis, gunicorn API, encode, query and two shard
workers as processes): a search of a 4-shard collection is answered by one message per shard
slot and says where the query worker spent its time, a repeated search comes from the query
worker's result cache, and an ingest or a delete on the collection is seen by the next
identical search."""
from __future__ import annotations

import time
from typing import Any

import pytest
import requests


CAPTIONS = ["a red sports car on a race track", "a cup of coffee on a table", "a cat asleep on a sofa",
            "fresh strawberries in a bowl", "an old cannon in a castle", "a snare drum on a stage",
            "geese walking on the grass", "a black leather shoe", "tents among pine trees",
            "a beetle on a green leaf", "a rocket launch at night", "a motorcycle on a country road"]
QUERY = {"text": "a fast red car", "k": 5}


@pytest.fixture(scope="module")
def api(shared_stack):
    base = f"{shared_stack.api_url}/v1"
    session = requests.Session()

    class Api:
        def post(self, path: str, **kw: Any) -> requests.Response:
            return session.post(base + path, timeout=60, **kw)

        def get(self, path: str) -> requests.Response:
            return session.get(base + path, timeout=60)

        def delete(self, path: str) -> requests.Response:
            return session.delete(base + path, timeout=60)

        def wait_job(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
            deadline = time.monotonic() + timeout_s
            while True:
                body = self.get(f"/jobs/{job_id}").json()
                if body["state"] in ("succeeded", "completed_with_errors", "failed", "cancelled"):
                    return body
                assert time.monotonic() < deadline, body
                time.sleep(0.2)

        def search(self, query: dict[str, Any] = QUERY, params: str = "") -> dict[str, Any]:
            resp = self.post(f"/collections/docs/search{params}", json=query)
            assert resp.status_code == 200, resp.text
            return resp.json()

    api = Api()
    assert api.post("/collections", json={"name": "docs", "shards": 4}).status_code == 201
    resp = api.post("/collections/docs/items",
                    json={"items": [{"id": f"doc-{i}", "text": t} for i, t in enumerate(CAPTIONS)]})
    assert resp.status_code == 202, resp.text
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    return api


def ids(body: dict[str, Any]) -> list[str]:
    return [h["id"] for h in body["hits"]]


def test_a_repeated_search_is_served_from_the_cache_and_writes_are_seen(api):
    first = api.search()
    assert first["shards"] == {"total": 4, "answered": 4} and first["cached"] is False
    assert ids(first)[0] == "doc-0"
    again = api.search()
    assert again["cached"] is True and again["hits"] == first["hits"] and again["shards"] == first["shards"]
    for body in (first, again):  # the query worker's own times lie within the API's
        assert set(body["timings"]) == {"encode_ms", "search_ms"}
        assert 0 < sum(body["timings"].values()) <= body["took_ms"]

    resp = api.post("/collections/docs/items", json={"items": [{"id": "new-car", "text": "a fast red car"}]})
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    after_ingest = api.search()
    assert after_ingest["cached"] is False and ids(after_ingest)[0] == "new-car"
    assert api.search()["cached"] is True

    resp = api.delete("/collections/docs/items/new-car")
    assert resp.status_code == 202
    assert api.wait_job(resp.json()["job_id"])["state"] == "succeeded"
    after_delete = api.search()
    assert after_delete["cached"] is False and "new-car" not in ids(after_delete)
    assert after_delete["hits"] == first["hits"]


def test_read_your_writes_and_async_searches_through_the_stack(api):
    resp = api.post("/collections/docs/items", json={"items": [{"id": "zebra", "text": "a zebra crossing"}]})
    job_id = resp.json()["job_id"]
    deadline = time.monotonic() + 60
    while (view := api.get(f"/jobs/{job_id}").json())["done"] < view["total"]:  # encoded and logged
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    query = {"text": "a zebra crossing", "k": 3}
    for _ in range(2):
        body = api.search(query, params=f"?after_job={job_id}")
        assert body["cached"] is False and ids(body)[0] == "zebra"
        assert body["consistency"] == {"after_job": job_id, "counted": True, "applied": True, "met": True}
    resp = api.post("/collections/docs/search?async=1", json=query)
    assert resp.status_code == 202
    job = api.wait_job(resp.json()["job_id"])
    assert job["state"] == "succeeded" and ids(job["result"])[0] == "zebra"
    assert api.post("/collections/nope/search", json=query).status_code == 404
    assert api.post("/collections/docs/search?after_job=0123456789abcdef", json=query).status_code == 404
