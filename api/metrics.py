"""Observability of the API: request ids, access logs, request metrics and GET /metrics.

`init_app(app)` registers
- request hooks: each request gets an id (a sane `X-Request-ID` header, else a new uuid4 hex),
  bound to the log context (shared.runtime.logs) while it runs and echoed in the `X-Request-ID`
  response header; each answer is timed, logged as one access line (`mmsearch.access`, with
  method, path, status, duration_ms and the job id when the request names or creates one) and
  counted in Redis (shared.runtime.metrics), so the figures add up over every API process; the line and
  the count are written once the server has sent the answer (its WSGI close), not before;
- `GET /metrics`: Prometheus text from a `CollectorRegistry` of this app alone (no global
  state), whose one collector reads Redis at scrape time.

Metrics (docs/operations.md, "Metrics"):
- `mmsearch_http_requests_total{method,endpoint,status}` and
  `mmsearch_http_request_duration_seconds{method,endpoint,status}` (histogram); `endpoint` is
  the URL rule (`/v1/collections/<name>/search`), never the raw path.
- `mmsearch_queue_length{queue}`: messages waiting in the Celery queues `encode` and `query`.
- `mmsearch_jobs{kind,state}`: job records still in Redis by state (a bounded SCAN of
  `mms:job:*`; finished jobs expire after MMSEARCH_JOB_TTL_S); `mmsearch_jobs_scan_complete`
  is 0 when the bound cut the scan short.
- `mmsearch_collections`, `mmsearch_shard_items{collection,shard}` (live items as the shard
  owner last published them), `mmsearch_shard_slot_up{slot}` (a live owner holds the lease).
- `mmsearch_encoded_images_total`, `mmsearch_encoded_items_total` (encode workers;
  `rate()` of the first is encode images/s).
- `mmsearch_shard_search_duration_seconds{collection,shard}` (histogram, shard workers).
- `mmsearch_redis_up`: 0 when Redis did not answer the scrape (then nothing else is reported).

With API keys configured, /metrics needs the same `Authorization: Bearer <key>` as /v1.
"""
from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from typing import Any, Iterator

import redis
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)

from api.context import services
from api.errors import ApiError
from shared.store import catalog, keys, queues
from shared.runtime import logs
from shared.runtime import metrics as shared_metrics
from shared.runtime.config import Settings

EXTENSION = "mmsearch.metrics"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUIET_ENDPOINTS = ("/healthz", "/readyz", "/metrics", "/static/<path:filename>")
UNMATCHED = "<unmatched>"
# kombu's Redis transport keeps a queue's messages of priority p > 0 in `<queue>\x06\x16<p>`.
KOMBU_PRIORITY_SEP, KOMBU_PRIORITIES = "\x06\x16", (0, 3, 6, 9)
JOB_SCAN_LIMIT = 100_000      # keys examined per scrape at most
JOB_SCAN_BATCH = 1000
REDIS_RETRY_AFTER_S = 5.0     # after a failed recording, stop trying for this long

bp = Blueprint("metrics", __name__)
access_log = logging.getLogger("mmsearch.access")


class RedisCollector:
    """Reads the deployment's figures from Redis at each scrape."""

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mmsearch_redis_up", "1 when Redis answered this scrape.")
        try:
            families = list(self._families())
        except redis.exceptions.RedisError as exc:
            logging.getLogger(__name__).warning("metrics: Redis did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        r = self.r
        yield from _histogram_families(
            shared_metrics.HTTP_HISTOGRAM.read(r), shared_metrics.HTTP_BUCKETS,
            "mmsearch_http_request", "HTTP requests answered by the API", ["method", "endpoint", "status"])
        yield self._queues()
        yield from self._jobs()
        collections = catalog.list_collections(r)
        yield from self._shards(collections)
        counters = shared_metrics.read_counters(r)
        for name, doc in ((shared_metrics.ENCODED_IMAGES, "Images encoded by the encode workers."),
                          (shared_metrics.ENCODED_ITEMS, "Items (with an image, a text or both) encoded.")):
            family = CounterMetricFamily(f"mmsearch_{name}", doc)
            family.add_metric([], counters.get(name, 0.0))
            yield family
        names = {c.cid: c.name for c in collections}
        searches = {(names[cid], shard, role): value
                    for (cid, shard, role), value in shared_metrics.SHARD_SEARCH_HISTOGRAM.read(r).items()
                    if cid in names}
        yield from _histogram_families(
            searches, shared_metrics.SHARD_SEARCH_BUCKETS, "mmsearch_shard_search",
            "Searches of one shard, timed in the shard worker (owner or replica) that answered",
            ["collection", "shard", "role"], counter=False)

    def _queues(self) -> Metric:
        names = [queues.ENCODE, queues.QUERY]
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            for priority in KOMBU_PRIORITIES:
                pipe.llen(f"{name}{KOMBU_PRIORITY_SEP}{priority}" if priority else name)
        lengths = pipe.execute()
        family = GaugeMetricFamily("mmsearch_queue_length", "Task messages waiting in a Celery queue.",
                                   labels=["queue"])
        step = len(KOMBU_PRIORITIES)
        for i, name in enumerate(names):
            family.add_metric([name], sum(lengths[i * step:(i + 1) * step]))
        return family

    def _jobs(self) -> Iterator[Metric]:
        prefix = keys.job("")
        job_keys, examined, complete, cursor = [], 0, False, 0
        while examined < JOB_SCAN_LIMIT:
            cursor, batch = self.r.scan(cursor, match=f"{prefix}*", count=JOB_SCAN_BATCH)
            examined += JOB_SCAN_BATCH
            # mms:job:<id> only, not mms:job:<id>:items / :errors / :marks
            job_keys += [k for k in batch if b":" not in k[len(prefix):]]
            if cursor == 0:
                complete = True
                break
        counts: dict[tuple[str, str], int] = {}
        pipe = self.r.pipeline(transaction=False)
        for key in job_keys:
            pipe.hmget(key, "kind", "state", "started_at", "total", "done", "failed")
        for kind, state, started, total, done, failed in pipe.execute() if job_keys else []:
            if kind is None:
                continue  # expired between SCAN and HMGET
            if state is None:  # not final yet (jobs.job_view settles the state on read)
                state = b"running" if started or int(done or 0) + int(failed or 0) > 0 else b"queued"
            label = (kind.decode(), state.decode())
            counts[label] = counts.get(label, 0) + 1
        family = GaugeMetricFamily("mmsearch_jobs", "Job records in Redis by kind and state.",
                                   labels=["kind", "state"])
        for (kind, state), n in sorted(counts.items()):
            family.add_metric([kind, state], n)
        yield family
        scanned = GaugeMetricFamily("mmsearch_jobs_scan_complete",
                                    "1 when mmsearch_jobs counted every job (the scan is bounded).")
        scanned.add_metric([], 1 if complete else 0)
        yield scanned

    def _shards(self, collections: list[catalog.Collection]) -> Iterator[Metric]:
        slots = list(range(self.settings.shard_slots))
        pipe = self.r.pipeline(transaction=False)
        for c in collections:
            for s in range(c.shards):
                pipe.hget(keys.shard_state(c.cid, s), "count")
        for slot in slots:
            pipe.exists(keys.slot_owner(slot))
        replies = pipe.execute()
        n_shards = sum(c.shards for c in collections)
        counts, owners = replies[:n_shards], replies[n_shards:]

        family = GaugeMetricFamily("mmsearch_collections", "Collections.")
        family.add_metric([], len(collections))
        yield family
        items = GaugeMetricFamily("mmsearch_shard_items", "Live items of a shard, as its owner last published.",
                                  labels=["collection", "shard"])
        i = 0
        for c in collections:
            for s in range(c.shards):
                items.add_metric([c.name, str(s)], float(counts[i] or 0))
                i += 1
        yield items
        up = GaugeMetricFamily("mmsearch_shard_slot_up", "1 while a shard worker holds the slot's lease.",
                               labels=["slot"])
        for slot, alive in zip(slots, owners):
            up.add_metric([str(slot)], 1 if alive else 0)
        yield up


def _histogram_families(values: dict[tuple[str, ...], shared_metrics.HistogramValue], bounds: tuple[float, ...],
                        name: str, doc: str, labels: list[str], counter: bool = True) -> Iterator[Metric]:
    histogram = HistogramMetricFamily(f"{name}_duration_seconds", f"{doc}: duration in seconds.", labels=labels)
    total = CounterMetricFamily(f"{name}s_total", f"{doc}.", labels=labels)
    les = [repr(float(b)) for b in bounds] + ["+Inf"]
    for label_values, value in sorted(values.items()):
        histogram.add_metric(list(label_values), list(zip(les, value.buckets)), value.sum)
        total.add_metric(list(label_values), value.count)
    yield histogram
    if counter:
        yield total


class Observability:
    """Per-app state: the registry and when recording into Redis may be tried again."""

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RedisCollector(r, settings))
        self.retry_at = 0.0


def _observability() -> Observability:
    from flask import current_app

    return current_app.extensions[EXTENSION]


def _begin() -> None:
    g.mms_started = time.perf_counter()
    presented = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = presented if REQUEST_ID_RE.fullmatch(presented) else uuid.uuid4().hex
    g.mms_log_tokens = logs.bind(request_id=g.request_id)


def _job_id(response: Response) -> str | None:
    job_id = (request.view_args or {}).get("job_id")
    if job_id is None and response.status_code == 202 and response.is_json:
        body = response.get_json(silent=True)
        job_id = body.get("job_id") if isinstance(body, dict) else None
    return job_id if isinstance(job_id, str) else None


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    started = g.get("mms_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    labels = (request.method, endpoint, str(response.status_code))
    obs, r = _observability(), services().redis
    level = logging.DEBUG if endpoint in QUIET_ENDPOINTS else logging.INFO
    access = None
    if access_log.isEnabledFor(level):
        access = ("%s %s %d %.1fms", request.method, request.path, response.status_code, seconds * 1000), {
            "method": request.method, "path": request.path, "endpoint": endpoint,
            "status": response.status_code, "duration_ms": round(seconds * 1000, 2),
            "job_id": _job_id(response), **logs.current_context()}

    def record() -> None:
        """Once the server has sent the answer (WSGI close): the request's metrics and access
        line, so that neither a Redis write nor a log line delays the client."""
        if time.monotonic() >= obs.retry_at:
            try:
                pipe = r.pipeline(transaction=False)
                shared_metrics.HTTP_HISTOGRAM.observe(pipe, labels, seconds)
                pipe.execute()
            except redis.exceptions.RedisError as exc:
                obs.retry_at = time.monotonic() + REDIS_RETRY_AFTER_S
                logging.getLogger(__name__).debug("request metrics not recorded: %s", exc)
        if access is not None:
            access_log.log(level, *access[0], extra=access[1])

    response.call_on_close(record)
    return response


def _teardown(_exc: BaseException | None) -> None:
    tokens = g.pop("mms_log_tokens", None)
    if tokens:
        try:
            logs.unbind(tokens)
        except ValueError:  # bound in another context (a server that switches contexts): drop it
            logs.bind(request_id=None)


def _require_key() -> None:
    """With API keys configured, any configured key may scrape (compared in constant time)."""
    configured = services().settings.api_keys
    if not configured:
        return
    header = request.headers.get("Authorization", "")
    presented = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
    matched = False
    for key in configured:
        matched |= hmac.compare_digest(presented, key.encode())
    if not matched:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <key>' (an API key) to read /metrics")


@bp.get("/metrics")
def metrics() -> Response:
    _require_key()
    return Response(generate_latest(_observability().registry), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    svc: Any = app.extensions["mmsearch"]
    app.extensions[EXTENSION] = Observability(svc.redis, svc.settings)
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_teardown)
    app.register_blueprint(bp)
