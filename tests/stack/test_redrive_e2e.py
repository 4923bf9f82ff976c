"""An accepted ingest whose encode message was dropped (in no queue, unacknowledged nowhere,
as kombu's Redis transport loses one: celery/celery#7950) is sent again by the reaper of the
real query worker, and the real encode worker encodes it: the job succeeds."""
from __future__ import annotations

import base64
import signal
import time

import pytest
import requests

from bench.photos import all_photos
from shared.runtime.stack import Stack
from shared.store import keys, queues
from tests.support.stack import running_stack
from tests.support.workers import reporting_ready

FINAL = ("succeeded", "completed_with_errors", "failed", "cancelled")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    # A job is stalled after 2 s without progress; the reaper looks every 5 s.
    with running_stack(tmp_path_factory.mktemp("mmsearch-redrive"), MMSEARCH_SHARDS="1",
                       MMSEARCH_JOB_STALL_S="2") as stack:
        yield stack


@pytest.mark.timeout(420)
def test_a_dropped_encode_message_is_sent_again_and_its_items_succeed(stack):
    api, r = f"{stack.api_url}/v1", stack.redis
    assert requests.post(f"{api}/collections", json={"name": "redrive", "shards": 1}, timeout=30).status_code == 201
    photos = all_photos()[:3]
    items = [{"id": p.name, "image": {"base64": base64.b64encode(p.read_bytes()).decode()}} for p in photos]
    items.append({"id": "caption-only", "text": "a dog on the beach"})

    stack.signal("encode", signal.SIGKILL)  # no consumer: the message stays in the queue
    with reporting_ready(r, ("encode",)):  # the API takes ingests while the worker is away
        resp = requests.post(f"{api}/collections/redrive/items", json={"items": items}, timeout=60)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert r.delete(queues.ENCODE) == 1  # dropped: in no queue, in no unacked set
    stack.start_process("encode")

    deadline = time.monotonic() + 300
    while (view := requests.get(f"{api}/jobs/{job_id}", timeout=30).json())["state"] not in FINAL:
        assert time.monotonic() < deadline, view
        time.sleep(0.5)
    assert (view["state"], view["done"], view["failed"]) == ("succeeded", len(items), 0), view
    assert int(r.hget(keys.job(job_id), "redrives")) >= 1
    for item in items:
        assert requests.get(f"{api}/collections/redrive/items/{item['id']}", timeout=30).status_code == 200
    assert not r.exists(keys.job_messages(job_id))  # counted: nothing kept any more
