"""/metrics, request ids and structured logs, with the Flask test client against a real Redis
(no worker processes: what workers record is written by the same functions they record with)."""
from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.store import catalog, jobs, keys
from shared.runtime import logs, metrics

APP_SETTINGS = {"shard_slots": 2, "api_keys": (), "ingest_root": None, "encode_batch": 2}


def scrape(client, **kw) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items -> value} of every sample on /metrics."""
    resp = client.get("/metrics", **kw)
    assert resp.status_code == 200, resp.data[:300]
    assert resp.content_type.startswith("text/plain")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_metrics_parse_and_the_request_counter_moves(client):
    before = scrape(client)
    assert value(before, "mmsearch_redis_up") == 1
    labels = {"method": "GET", "endpoint": "/v1/collections", "status": "200"}
    assert client.get("/v1/collections").status_code == 200
    assert client.get("/v1/collections").status_code == 200
    assert client.get("/v1/collections/nope").status_code == 404
    after = scrape(client)
    assert value(after, "mmsearch_http_requests_total", **labels) == value(before, "mmsearch_http_requests_total", **labels) + 2
    assert value(after, "mmsearch_http_request_duration_seconds_count", **labels) == 2
    assert value(after, "mmsearch_http_request_duration_seconds_bucket", le="+Inf", **labels) == 2
    assert value(after, "mmsearch_http_request_duration_seconds_sum", **labels) > 0
    # the endpoint label is the URL rule, not the raw path
    assert value(after, "mmsearch_http_requests_total", method="GET", endpoint="/v1/collections/<name>",
                 status="404") == 1
    assert value(after, "mmsearch_http_requests_total", method="GET", endpoint="/metrics", status="200") >= 1


def test_request_metrics_add_up_over_api_processes(make_app):
    """Two apps (two gunicorn workers, say) count into the same figures."""
    a, b = make_app().test_client(), make_app().test_client()
    a.get("/healthz")
    b.get("/healthz")
    for client in (a, b):
        assert value(scrape(client), "mmsearch_http_requests_total", method="GET", endpoint="/healthz",
                     status="200") == 2


def test_items_per_shard_queues_jobs_and_slots(client, redis_client):
    assert client.post("/v1/collections", json={"name": "photos", "shards": 3}).status_code == 201
    cid = catalog.get_collection(redis_client, "photos").cid
    redis_client.hset(keys.shard_state(cid, 1), mapping={"applied": "1-0", "count": 7})
    redis_client.set(keys.slot_owner(0), "w0", ex=30)
    resp = client.post("/v1/collections/photos/items", json={"items": [{"text": t} for t in "abc"]})
    assert resp.status_code == 202
    job_id = resp.json["job_id"]

    s = scrape(client)
    assert value(s, "mmsearch_collections") == 1
    assert value(s, "mmsearch_shard_items", collection="photos", shard="1") == 7
    assert value(s, "mmsearch_shard_items", collection="photos", shard="0") == 0
    assert value(s, "mmsearch_queue_length", queue="encode") == 2  # 3 items, batches of 2
    assert value(s, "mmsearch_queue_length", queue="query") == 0
    assert set(s["mmsearch_queue_length"]) == {(("queue", "encode"),), (("queue", "query"),)}  # the Celery queues
    assert value(s, "mmsearch_jobs", kind="ingest", state="queued") == 1
    assert value(s, "mmsearch_jobs_scan_complete") == 1
    assert value(s, "mmsearch_shard_slot_up", slot="0") == 1
    assert value(s, "mmsearch_shard_slot_up", slot="1") == 0

    jobs.mark_started(redis_client, job_id)
    assert value(scrape(client), "mmsearch_jobs", kind="ingest", state="running") == 1
    redis_client.hset(keys.job(job_id), "state", "succeeded")
    s = scrape(client)
    assert value(s, "mmsearch_jobs", kind="ingest", state="succeeded") == 1
    assert value(s, "mmsearch_jobs", kind="ingest", state="running") == 0


def test_worker_counters_and_shard_search_histogram(client, redis_client, monkeypatch):
    from workers import shard as shard_worker

    client.post("/v1/collections", json={"name": "photos", "shards": 2})
    cid = catalog.get_collection(redis_client, "photos").cid
    metrics.record_encoded(redis_client, images=3, items=4)
    metrics.record_encoded(redis_client, images=2, items=2)
    # What a shard worker records with the answer of a slot search: each shard's search time.
    monkeypatch.setattr(shard_worker, "redis_client", lambda: redis_client)
    shard_worker._reply(None, {"answers": []}, cid, "owner", [(1, 0.0003), (1, 0.004)])
    shard_worker._reply(None, {"answers": []}, cid, "owner", [(1, 0.004), (1, 7.0)])
    shard_worker._reply(None, {"answers": []}, cid, "replica", [(1, 0.002)])
    shard_worker._reply(None, {"answers": []}, "gone-cid", "owner", [(0, 0.1)])  # a deleted collection: not reported

    s = scrape(client)
    assert value(s, "mmsearch_encoded_images_total") == 5
    assert value(s, "mmsearch_encoded_items_total") == 6
    name = "mmsearch_shard_search_duration_seconds"
    assert value(s, f"{name}_count", collection="photos", shard="1", role="owner") == 4
    assert value(s, f"{name}_sum", collection="photos", shard="1", role="owner") == pytest.approx(7.0083)
    assert value(s, f"{name}_bucket", collection="photos", shard="1", role="owner", le="0.0005") == 1
    assert value(s, f"{name}_bucket", collection="photos", shard="1", role="owner", le="0.005") == 3
    assert value(s, f"{name}_bucket", collection="photos", shard="1", role="owner", le="5.0") == 3
    assert value(s, f"{name}_bucket", collection="photos", shard="1", role="owner", le="+Inf") == 4
    assert value(s, f"{name}_count", collection="photos", shard="1", role="replica") == 1
    assert not [labels for labels in s[f"{name}_count"] if ("shard", "0") in labels]


def test_metrics_need_a_key_when_keys_are_configured(make_app):
    client = make_app(api_keys=("k1",)).test_client()
    resp = client.get("/metrics")
    assert resp.status_code == 401 and resp.json["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert value(scrape(client, headers={"Authorization": "Bearer k1"}), "mmsearch_redis_up") == 1
    spec = client.get("/openapi.json").json
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}]


def test_metrics_without_redis_say_so(make_app):
    client = make_app(redis_url="redis://127.0.0.1:9/0").test_client()
    assert client.get("/healthz").status_code == 200  # recording a request never fails it
    s = scrape(client)
    assert value(s, "mmsearch_redis_up") == 0


def test_request_id_is_echoed_or_generated(client):
    resp = client.get("/healthz", headers={"X-Request-ID": "abc-123.x"})
    assert resp.headers["X-Request-ID"] == "abc-123.x"
    generated = client.get("/v1/collections").headers["X-Request-ID"]
    assert len(generated) == 32 and generated != client.get("/healthz").headers["X-Request-ID"]
    # a header that could forge log lines or other headers is replaced
    resp = client.get("/healthz", headers={"X-Request-ID": "x" * 200})
    assert resp.headers["X-Request-ID"] != "x" * 200
    resp = client.get("/v1/nothing", headers={"X-Request-ID": "bad id\twith tab"})
    assert resp.status_code == 404 and " " not in resp.headers["X-Request-ID"]


@pytest.fixture
def json_log():
    """Captures the access log as JSON lines, through the same handler setup_logging installs."""
    stream = io.StringIO()
    handler = logs.make_handler("json")
    handler.setStream(stream)
    logger = logging.getLogger("mmsearch.access")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_access_log_is_json_with_request_id_and_job_id(client, json_log):
    client.post("/v1/collections", json={"name": "photos"})
    resp = client.post("/v1/collections/photos/items", json={"items": [{"text": "a cat"}]},
                       headers={"X-Request-ID": "req-42"})
    job_id = resp.json["job_id"]
    client.get(f"/v1/jobs/{job_id}")
    lines = json_log()
    ingest = next(line for line in lines if line["path"] == "/v1/collections/photos/items")
    assert ingest["request_id"] == "req-42" and ingest["job_id"] == job_id
    assert ingest["status"] == 202 and ingest["method"] == "POST" and ingest["duration_ms"] >= 0
    assert ingest["level"] == "INFO" and ingest["logger"] == "mmsearch.access" and ingest["ts"]
    poll = next(line for line in lines if line["path"] == f"/v1/jobs/{job_id}")
    assert poll["job_id"] == job_id and poll["request_id"] not in ("req-42", None)
    assert logs.current_context() == {}  # nothing stays bound after the request


def test_log_context_text_and_json_formats():
    record_args = ("w", logging.INFO, __file__, 1, "encoded %d items", (3,), None)
    with logs.log_context(job_id="j1"):
        record = logging.LogRecord(*record_args)
        text_handler, json_handler = logs.make_handler("text"), logs.make_handler("json")
        assert text_handler.filter(record)
        assert text_handler.format(record).endswith("w: [job_id=j1] encoded 3 items")
        body = json.loads(json_handler.format(record))
        assert body["job_id"] == "j1" and body["message"] == "encoded 3 items" and "request_id" not in body
    record = logging.LogRecord(*record_args)
    logs.make_handler("text").filter(record)
    assert record.job_id is None and record.ctx == ""
    with pytest.raises(ValueError):
        logs.make_handler("xml")
    with pytest.raises(ValueError):
        logs.bind(user="x")


def test_setup_logging_reads_the_format_from_the_environment(monkeypatch):
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        monkeypatch.setenv("MMSEARCH_LOG_FORMAT", "json")
        logs.setup_logging("DEBUG")
        logs.setup_logging("INFO")  # again: replaces its own handler, adds no second one
        ours = [h for h in root.handlers if getattr(h, "_mmsearch", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.JsonFormatter)
        assert root.level == logging.INFO
    finally:
        for h in [h for h in root.handlers if getattr(h, "_mmsearch", False)]:
            root.removeHandler(h)
        root.setLevel(before[1])
