"""GET /v1/jobs: newest first, by collection, state and kind, a page at a time; bad queries 400."""
import pytest

from tests.unit.api import test_api
from tests.unit.api.test_api import ITEM, assert_error

APP_SETTINGS = test_api.APP_SETTINGS
URL = "/v1/jobs"


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("state=done", "state"), ("kind=backup", "kind"),
    ("collection=Bad Name", "collection"), ("cursor=yesterday", "cursor"), ("state=queued&state=running", "state"),
    ("offset=1", "offset"),
])
def test_a_bad_job_listing_query_is_400_naming_the_parameter(client, query, field):
    assert assert_error(client.get(f"{URL}?{query}"), 400, "invalid_request")["details"]["field"] == field


def test_jobs_are_listed_newest_first_by_collection_and_kind(client):
    for name in ("photos", "art"):
        assert client.post("/v1/collections", json={"name": name}).status_code == 201
    made = [client.post("/v1/collections/photos/items", json={"items": [ITEM]}).json["job_id"],
            client.post("/v1/collections/art/items", json={"items": [ITEM]}).json["job_id"],
            client.delete("/v1/collections/photos/items/a").json["job_id"],
            client.post("/v1/collections/photos/search?async=1", json={"text": "cat"}).json["job_id"]]
    body = client.get(URL).json
    assert [j["id"] for j in body["jobs"]] == made[::-1] and body["next_cursor"] is None
    assert [j["kind"] for j in body["jobs"]] == ["search", "delete", "ingest", "ingest"]
    first = client.get(URL, query_string={"limit": 2}).json
    rest = client.get(URL, query_string={"limit": 2, "cursor": first["next_cursor"]}).json
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == made[::-1] and rest["next_cursor"] is None
    photos = client.get(URL, query_string={"collection": "photos", "kind": "ingest", "state": "queued"}).json
    assert [j["id"] for j in photos["jobs"]] == [made[0]]
    assert client.get(URL, query_string={"collection": "nope"}).json == {"jobs": [], "next_cursor": None}
