"""Nothing accepted is lost: the reaper sends a stalled API ingest's uncounted items again from
what its job kept (shared.store.encode_tasks), within the delivery limit, and fails only the
items whose bytes are gone; a duplicate delivery (a message that was only late) counts and logs
nothing twice. Real Redis, the real API and encode task; a fake model."""
from __future__ import annotations

import base64
import contextvars
import io
from typing import Any

import numpy as np
import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from PIL import Image

from shared.encoding.encoders import EncodedItem
from shared.runtime.celery_config import make_celery
from shared.runtime.config import Settings
from shared.store import catalog, jobs, keys, queues
from tests.support.workers import queued
from workers import reaper

APP_SETTINGS = {"encode_batch": 2, "shard_slots": 2}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


ITEMS = [{"id": "red", "image": {"base64": base64.b64encode(png()).decode()}, "text": "a red square"},
         {"id": "cat", "text": "a cat"}, {"id": "dog", "text": "a dog", "metadata": {"n": 3}}]


class FakeEncoder:
    """The collection encoder's two calls the encode task makes, without a model."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def prepare_image(self, rgb: np.ndarray) -> np.ndarray:
        return rgb

    def encode_items(self, images: list[Any], texts: list[str | None], timeout: float | None = None
                     ) -> list[EncodedItem]:
        vector = np.full(self.dim, 1 / np.sqrt(self.dim), dtype=np.float32)
        return [EncodedItem(vector, image is not None) for image in images]


class Ingest:
    """A collection on the test Redis, the API in front of it, and the encode task behind it."""

    def __init__(self, client, r, settings: Settings, monkeypatch) -> None:
        import shared.encoding.encoders
        import workers.encode as encode

        self.client, self.r, self.settings, self.encode = client, r, settings, encode
        resp = client.post("/v1/collections", json={"name": "photos", "shards": 2})
        assert resp.status_code == 201, resp.json
        self.coll = catalog.get_collection(r, "photos")
        dim = self.coll.dims["image"] + self.coll.dims["text"]
        monkeypatch.setattr(shared.encoding.encoders, "collection_encoder", lambda *models: FakeEncoder(dim))
        monkeypatch.setattr(encode, "redis_client", lambda: r)
        monkeypatch.setattr(encode, "settings", lambda: settings)

    def post(self, items: list[dict[str, Any]] = ITEMS) -> str:
        resp = self.client.post("/v1/collections/photos/items", json={"items": items})
        assert resp.status_code == 202, resp.json
        return resp.json["job_id"]

    def run(self, message: dict[str, Any], task_id: str) -> dict[str, int]:
        """The encode task run on a queued message's kwargs, as a worker would (in a copy of the
        context: the task binds its job id to the log context of its thread)."""
        kwargs = {k: v for k, v in message.items() if not k.startswith("_")}
        return contextvars.copy_context().run(
            lambda: self.encode.encode_items.apply(kwargs=kwargs, task_id=task_id).get())

    def run_queued(self) -> None:
        """Run every encode task waiting in the queue, and take them off it."""
        for message in queued(self.r, queues.ENCODE):
            self.run(message, message["_id"])
        self.r.delete(queues.ENCODE)

    def stall(self, job_id: str) -> None:
        """The job has not moved for far longer than job_stall_s."""
        self.r.hset(keys.job(job_id), mapping={"created_at": 1, "started_at": 1, "updated_at": 1})
        self.r.zadd(keys.ACTIVE_JOBS, {job_id: 1})

    def reap(self) -> dict[str, Any]:
        return reaper.reap_once(self.r, self.settings, celery=make_celery(self.settings))

    def view(self, job_id: str) -> dict[str, Any]:
        """The job's view once the shards (which no owner runs here) applied their whole logs."""
        for shard in range(self.coll.shards):
            last = self.r.xrevrange(keys.shard_log(self.coll.cid, shard), count=1)
            if last:
                self.r.hset(keys.shard_state(self.coll.cid, shard), "applied", last[0][0])
        return jobs.job_view(self.r, job_id, 60)

    def logged(self) -> int:
        return sum(self.r.xlen(keys.shard_log(self.coll.cid, s)) for s in range(self.coll.shards))


@pytest.fixture
def ingest(client, redis_client, redis_server, tmp_path, monkeypatch) -> Ingest:
    settings = Settings(redis_url=redis_server, data_dir=tmp_path, job_stall_s=30, task_max_deliveries=3,
                        **APP_SETTINGS)
    return Ingest(client, redis_client, settings, monkeypatch)


def test_a_job_whose_messages_were_lost_is_sent_again_and_succeeds(ingest):
    r = ingest.r
    job_id = ingest.post()
    sent = [m["items"] for m in queued(r, queues.ENCODE)]
    r.delete(queues.ENCODE)  # lost: in no queue and in no unacked set
    ingest.stall(job_id)
    outcome = ingest.reap()
    assert outcome["redriven"] == {job_id: 3} and outcome["reaped"] == {}
    assert [m["items"] for m in queued(r, queues.ENCODE)] == sent  # the same tasks the API sent
    assert jobs.job_view(r, job_id, 60)["failed"] == 0 and r.hget(keys.job(job_id), "redrives") == b"1"
    # Sent again, it is looked at only once it has been quiet for job_stall_s again.
    assert ingest.reap()["examined"] == 0

    ingest.run_queued()
    view = ingest.view(job_id)
    assert (view["state"], view["done"], view["failed"]) == ("succeeded", 3, 0)
    assert ingest.logged() == 3
    # Counted: the job kept nothing more, and the uploaded bytes left staging.
    assert not r.exists(keys.job_messages(job_id)) and not list(r.scan_iter("mms:stage:*"))


def test_a_request_cut_off_while_sending_has_its_unsent_items_sent_by_the_reaper(ingest, monkeypatch):
    r = ingest.r
    real_send, sends = Celery.send_task, []

    def send_then_fail(self, *args, **kwargs):
        sends.append(args)
        if len(sends) == 2:
            raise OperationalError("the broker went away")
        return real_send(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Celery, "send_task", send_then_fail)
        resp = ingest.client.post("/v1/collections/photos/items", json={"items": ITEMS})
    assert resp.status_code == 503 and resp.json["error"]["code"] == "unavailable"
    (job_id,) = [j.decode() for j in r.zrange(keys.ACTIVE_JOBS, 0, -1)]
    details = resp.json["error"]["details"]  # the client learns that its job exists
    assert details["job_id"] == job_id and details["status_url"] == f"/v1/jobs/{job_id}"
    assert [it["id"] for m in queued(r, queues.ENCODE) for it in m["items"]] == ["red", "cat"]
    ingest.run_queued()  # the batch that was sent
    ingest.stall(job_id)
    assert ingest.reap()["redriven"] == {job_id: 1}  # the one left unsent
    assert [it["id"] for m in queued(r, queues.ENCODE) for it in m["items"]] == ["dog"]
    ingest.run_queued()
    view = ingest.view(job_id)
    assert (view["state"], view["done"]) == ("succeeded", 3)


def test_items_whose_bytes_left_staging_fail_with_bytes_gone(ingest):
    r = ingest.r
    job_id = ingest.post()
    r.delete(queues.ENCODE)
    r.delete(keys.staged(ingest.coll.cid, job_id, 0))  # the upload expired
    ingest.stall(job_id)
    outcome = ingest.reap()
    assert outcome["redriven"] == {job_id: 2} and outcome["reaped"] == {job_id: 1}
    ingest.run_queued()
    view = ingest.view(job_id)
    assert (view["state"], view["done"], view["failed"]) == ("completed_with_errors", 2, 1)
    assert [(e["id"], e["code"]) for e in view["errors"]] == [("red", "bytes_gone")]


def test_once_the_deliveries_are_used_up_the_items_fail_as_stalled(ingest):
    r = ingest.r
    job_id = ingest.post()
    for _ in range(ingest.settings.task_max_deliveries - 1):  # the API's send, then the re-drives
        r.delete(queues.ENCODE)
        ingest.stall(job_id)
        assert ingest.reap()["redriven"] == {job_id: 3}
    r.delete(queues.ENCODE)
    ingest.stall(job_id)
    outcome = ingest.reap()
    assert outcome["redriven"] == {} and outcome["reaped"] == {job_id: 3} and r.llen(queues.ENCODE) == 0
    view = ingest.view(job_id)
    assert view["state"] == "failed" and {e["code"] for e in view["errors"]} == {"stalled"}
    assert "sent 3 times" in view["errors"][0]["message"] and "MMSEARCH_TASK_MAX_DELIVERIES" in view["errors"][0]["message"]


def test_a_stalled_ingest_that_kept_no_messages_fails_as_before(ingest):
    r = ingest.r
    bulk = jobs.create_job(r, "ingest", "photos", ingest.coll.cid, 2)  # a bulk insert that stopped
    ingest.stall(bulk)
    outcome = ingest.reap()
    assert outcome["reaped"] == {bulk: 2} and outcome["redriven"] == {}
    assert {e["code"] for e in ingest.view(bulk)["errors"]} == {"stalled"}


def test_a_duplicate_delivery_counts_and_logs_nothing_twice(ingest, monkeypatch):
    r = ingest.r
    job_id = ingest.post()
    messages = queued(r, queues.ENCODE)
    ingest.run_queued()
    assert ingest.logged() == 3
    # The same messages again (a late one and its re-drive): the task sees its items counted...
    for message in messages:
        outcome = ingest.run(message, task_id="again-" + message["_id"])
        assert outcome["skipped"] == len(message["items"]) and outcome["done"] == 0
    # ... or, racing the first delivery, read what was counted before it counted: the whole
    # batch runs again (the staged image already released: it fails as expired, uncounted).
    with monkeypatch.context() as m:
        m.setattr(jobs, "counted", lambda r, job_id: set())
        for message in messages:
            assert ingest.run(message, task_id="race-" + message["_id"])["done"] == 0
    view = ingest.view(job_id)
    assert (view["state"], view["done"], view["failed"], view["errors"]) == ("succeeded", 3, 0, [])
    assert ingest.logged() == 3
    assert r.hgetall(keys.job_items(job_id)) == {b"0": b"done", b"1": b"done", b"2": b"done"}
