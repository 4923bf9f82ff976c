"""Counters and histograms that many processes add to, kept in Redis; the API's /metrics reads them.

Every API process (gunicorn runs several), encode worker and shard worker records into a few
Redis hashes, so `/metrics` on any API process reports the whole deployment, not the one
process that happened to answer the scrape. Recording costs one pipelined round trip and never
raises: a metric lost while Redis is away must not fail a request or a task.

Keys (hashes):
- `mms:metrics:counters`: `encoded_images`, `encoded_items` (encode workers).
- `mms:metrics:http`: request histogram, labels (method, endpoint, status) (the API).
- `mms:metrics:shard_search`: per-shard search histogram, labels (cid, shard, role) (shard workers).

A histogram stores, per label set, `count`, `sum` and one non-cumulative count per bucket
(`b<i>`, the first bucket whose bound is >= the value; `b<len>` is +Inf); the reader turns
them into Prometheus' cumulative buckets.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field

import redis

from shared.store.keys import PREFIX

log = logging.getLogger(__name__)

COUNTERS = f"{PREFIX}:metrics:counters"
HTTP = f"{PREFIX}:metrics:http"
SHARD_SEARCH = f"{PREFIX}:metrics:shard_search"

ENCODED_IMAGES = "encoded_images"
ENCODED_ITEMS = "encoded_items"

SEP = "\x1f"  # between labels in a field name (never in a URL rule, method, status, cid or shard)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SHARD_SEARCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class HistogramValue:
    buckets: list[float]   # cumulative counts, one per bound, then +Inf
    sum: float = 0.0
    count: float = 0.0


@dataclass(frozen=True)
class RedisHistogram:
    key: str
    buckets: tuple[float, ...]
    label_names: tuple[str, ...] = field(default=())

    def observe(self, pipe: redis.client.Pipeline, labels: tuple[str, ...], value: float) -> None:
        """Queue the commands that record one observation on `pipe`."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.key}: expected labels {self.label_names}, got {labels}")
        base = SEP.join(labels)
        pipe.hincrby(self.key, f"{base}{SEP}b{bisect.bisect_left(self.buckets, value)}", 1)
        pipe.hincrby(self.key, f"{base}{SEP}count", 1)
        pipe.hincrbyfloat(self.key, f"{base}{SEP}sum", value)

    def read(self, r: redis.Redis) -> dict[tuple[str, ...], HistogramValue]:
        values: dict[tuple[str, ...], HistogramValue] = {}
        raw_buckets: dict[tuple[str, ...], list[float]] = {}
        for raw_field, raw_value in r.hgetall(self.key).items():
            parts = raw_field.decode("utf-8", "replace").split(SEP)
            labels, part = tuple(parts[:-1]), parts[-1]
            if len(labels) != len(self.label_names):
                continue
            value = values.setdefault(labels, HistogramValue([]))
            number = float(raw_value)
            if part == "count":
                value.count = number
            elif part == "sum":
                value.sum = number
            elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) <= len(self.buckets):
                raw_buckets.setdefault(labels, [0.0] * (len(self.buckets) + 1))[int(part[1:])] += number
        for labels, value in values.items():
            running, cumulative = 0.0, []
            for n in raw_buckets.get(labels, [0.0] * (len(self.buckets) + 1)):
                running += n
                cumulative.append(running)
            value.buckets = cumulative
        return values


HTTP_HISTOGRAM = RedisHistogram(HTTP, HTTP_BUCKETS, ("method", "endpoint", "status"))
SHARD_SEARCH_HISTOGRAM = RedisHistogram(SHARD_SEARCH, SHARD_SEARCH_BUCKETS, ("cid", "shard", "role"))


def _execute(pipe: redis.client.Pipeline, what: str) -> None:
    try:
        pipe.execute()
    except redis.exceptions.RedisError as exc:
        log.debug("metric %s not recorded: %s", what, exc)


def record_encoded(r: redis.Redis, images: int, items: int) -> None:
    """An encode batch turned `items` items into vectors, `images` of them with an image."""
    pipe = r.pipeline(transaction=False)
    pipe.hincrby(COUNTERS, ENCODED_IMAGES, int(images))
    pipe.hincrby(COUNTERS, ENCODED_ITEMS, int(items))
    _execute(pipe, "encoded")


def read_counters(r: redis.Redis) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in r.hgetall(COUNTERS).items()}
