"""The API's side of listing a collection's items and of deleting many by id or by filter,
with stand-ins for the shard slots (no workers)."""
from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from shared.index.labels import shard_for
from shared.store import keys, queues, replies
from tests.unit.api.test_api import assert_error, cid

APP_SETTINGS = {"shard_timeout_s": 0.5, "shard_slots": 2, "api_keys": ()}
SHARDS = 3
URL = "/v1/collections/photos/items"


@pytest.fixture
def coll(client) -> None:
    assert client.post("/v1/collections", json={"name": "photos", "shards": SHARDS}).status_code == 201


class Slots:
    """Stand-ins for both shard slots: they answer `list` requests from `items` (id -> metadata)
    as the shard workers do (workers.shard.list_page, without filters), and record them."""

    def __init__(self, redis_client, items: dict[str, dict[str, Any]], unserved: tuple[int, ...] = ()) -> None:
        self.r, self.items, self.unserved = redis_client, items, unserved
        self.requests: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, args=(slot,), daemon=True)
                        for slot in range(APP_SETTINGS["shard_slots"])]
        for slot, thread in enumerate(self.threads):
            self.r.set(keys.slot_owner(slot), "stand-in", ex=30)
            thread.start()

    def close(self) -> None:
        """Stop serving, and wait until no thread of this stand-in can take another request (a
        later test's stand-ins would otherwise share the slot lists with it)."""
        self.stop.set()
        for thread in self.threads:
            thread.join(5)

    def _serve(self, slot: int) -> None:
        while not self.stop.is_set():
            request = replies.take(self.r, keys.slot_searches(slot), 0.05)
            if request is None:
                continue
            body = request.body
            self.requests.append(body)
            assert body["op"] == queues.SLOT_LIST
            mine = sorted(i for i in self.items if shard_for(i, SHARDS) in body["shards"]
                          and (body["after"] is None or i > body["after"]))[:body["limit"]]
            page = [{"id": i, "shard": shard_for(i, SHARDS), **({"metadata": self.items[i]} if "metadata" in
                                                                body["fields"] else {})} for i in mine]
            replies.answer(self.r, request.reply_to, {"page": {
                "items": page, "unserved": [s for s in body["shards"] if s in self.unserved]}})


@pytest.fixture
def slots(redis_client):
    made: list[Slots] = []

    def make(items, unserved=()) -> Slots:
        made.append(Slots(redis_client, items, unserved))
        return made[-1]
    yield make
    for stand_in in made:
        stand_in.close()


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("limit=1&limit=2", "limit"),
    ("cursor=" + "x" * 257, "cursor"), ("filter=[1]", "filter"), ("filter={bad", "filter"),
    ("filter=" + json.dumps({"year": {"$where": 1}}), "filter.year.$where"), ("fields=text,vectors", "fields"),
    ("offset=3", "offset"),
])
def test_a_bad_listing_query_is_400_naming_the_parameter(client, coll, query, field):
    assert assert_error(client.get(f"{URL}?{query}"), 400, "invalid_request")["details"]["field"] == field


def test_pages_merge_the_slots_in_id_order_until_no_cursor_is_left(client, coll, slots):
    items = {f"item-{n:02d}": {"n": n} for n in range(25)}
    stand_in = slots(items)
    listed, cursor, pages = [], None, 0
    while True:
        resp = client.get(URL, query_string={"limit": 10, "fields": "metadata", **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.json
        listed += resp.json["items"]
        cursor, pages = resp.json["next_cursor"], pages + 1
        if cursor is None:
            break
        assert cursor == listed[-1]["id"]
    assert pages == 3 and [i["id"] for i in listed] == sorted(items)
    assert listed[0] == {"id": "item-00", "shard": shard_for("item-00", SHARDS), "metadata": {"n": 0}}
    assert {r["limit"] for r in stand_in.requests} == {11}  # one more than the page: is there a next?
    resp = client.get(URL, query_string={"filter": '{"n": {"$gte": 3}}'})
    assert resp.status_code == 200 and stand_in.requests[-1]["filter"] == {"n": {"$gte": 3}}
    assert stand_in.requests[-1]["limit"] == 101 and stand_in.requests[-1]["fields"] == ["text", "metadata",
                                                                                        "has_image"]


def test_a_page_is_503_when_a_slot_is_dead_or_a_shard_is_not_served(client, coll, redis_client, slots):
    assert_error(client.get("/v1/collections/nope/items"), 404, "not_found")
    assert assert_error(client.get(URL), 503, "unavailable")["details"]["slots"] == [0, 1]
    slots({"a": {}}, unserved=(2,))
    assert assert_error(client.get(URL), 503, "unavailable")["details"]["shards"] == [2]


@pytest.mark.parametrize("body, field", [
    ({}, "filter"), ({"ids": ["a"], "filter": {"a": 1}}, "ids"), ({"ids": []}, "ids"), ({"ids": ["a"] * 1001}, "ids"),
    ({"ids": [""]}, "ids"), ({"filter": {}}, "filter"), ({"filter": {"a": [1]}}, "filter.a"), ({"id": "a"}, "id"),
])
def test_a_bad_delete_is_400_naming_the_field(client, coll, body, field):
    assert assert_error(client.post(f"{URL}/delete", json=body), 400, "invalid_request")["details"]["field"] == field


def test_a_delete_by_ids_logs_each_in_its_shard_under_one_job(client, coll, redis_client):
    ids = ["a", "b/c.jpg", "a", "never-ingested"]
    resp = client.post(f"{URL}/delete", json={"ids": ids})
    assert resp.status_code == 202 and resp.json["total"] == 3
    job = client.get(resp.json["status_url"]).json
    assert job["kind"] == "delete" and job["total"] == 3 and job["done"] == 3
    logged = {item_id: [(e[b"op"], e[b"id"].decode(), e[b"job"].decode())
                        for _, e in redis_client.xrange(keys.shard_log(cid(redis_client), shard_for(item_id, SHARDS)))]
              for item_id in ids}
    for item_id in ids:
        assert (b"delete", item_id, job["id"]) in logged[item_id]
    assert_error(client.post("/v1/collections/nope/items/delete", json={"ids": ["a"]}), 404, "not_found")


def test_a_delete_by_filter_deletes_what_a_scan_with_it_lists(client, coll, redis_client, slots):
    items = {f"i{n:04d}": {} for n in range(2500)}
    stand_in = slots(items)
    resp = client.post(f"{URL}/delete", json={"filter": {"year": {"$lt": 2000}}})
    assert resp.status_code == 202 and resp.json["total"] == 2500
    assert len(stand_in.requests) == 3 * 2  # pages of 1000, each asked of both slots
    assert all(r["filter"] == {"year": {"$lt": 2000}} and r["fields"] == [] for r in stand_in.requests)
    job = client.get(resp.json["status_url"]).json
    assert job["total"] == job["done"] == 2500
    logged = sum(redis_client.xlen(keys.shard_log(cid(redis_client), s)) for s in range(SHARDS))
    assert logged == 2500
