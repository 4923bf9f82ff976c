"""Searches through HTTP: concurrent clients sending the queries of one (kind, clients) run,
and a row of latency, throughput, recall and top-1 per run, with where a 1-client query's time
went."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from bench.search.plan import Plan, Results
from bench.search.queries import K, VARIANTS, Query, recall, top1
from bench.service import Service, TaskEvent, TaskLog, latency_ms, runtimes
from shared.runtime import metrics
from shared.store import queues
from shared.store.catalog import get_collection


@dataclass
class Cell:
    """The answers of one (collection, kind, clients) run."""

    latencies: list[float]
    answers: list[tuple[int, dict[str, Any]]]  # (query index, response body)
    wall_s: float


def run_clients(svc: Service, name: str, queries: list[Query], clients: int, total: int) -> Cell:
    """`total` queries (cycling through `queries`) spread over `clients` threads."""
    lock = threading.Lock()
    cell = Cell([], [], 0.0)

    def client(first: int) -> None:
        with requests.Session() as session:
            for i in range(first, total, clients):
                q = queries[i % len(queries)]
                seconds, body = svc.search(session, name, text=q.text, image=q.image, k=K)
                with lock:
                    cell.latencies.append(seconds)
                    cell.answers.append((i % len(queries), body))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    cell.wall_s = time.perf_counter() - t0
    return cell


def search_task_ms(events: list[TaskEvent]) -> float | None:
    """Mean Celery runtime (ms) of the search task during a run, from the query worker's log:
    decode and encode the query, send the slot requests, gather their answers, merge."""
    times = runtimes(events).get(queues.SEARCH)
    return round(float(np.mean(times)) * 1000, 1) if times else None


def shard_searches(r: Any, cid: str) -> tuple[float, float]:
    """(count, seconds) of every index search the shard workers recorded for a collection so far
    (their `mmsearch_shard_search_duration_seconds` histogram)."""
    values = [v for labels, v in metrics.SHARD_SEARCH_HISTOGRAM.read(r).items() if labels[0] == cid]
    return sum(v.count for v in values), sum(v.sum for v in values)


def measure_collection(svc: Service, name: str, queries: dict[str, list[list[Query]]],
                       exact: dict[str, list[list[list[str]]]], encode_ms: dict[str, float], plan: Plan,
                       labels: dict[str, int], results: Results) -> None:
    """Every (kind, clients) run against one filled collection, each with its own query variant."""
    tasks = TaskLog(svc.log_dir)
    cid = get_collection(svc.redis, name).cid
    for kind, variants in queries.items():
        run_clients(svc, name, variants[-1], 1, 2)  # warm-up (models, connections)
        for run, clients in enumerate(plan.client_counts):
            qs, truths = variants[run % (VARIANTS - 1)], exact[kind][run % (VARIANTS - 1)]
            tasks.mark()
            searched_before = shard_searches(svc.redis, cid)
            cell = run_clients(svc, name, qs, clients, max(plan.passes * len(qs), clients * plan.per_client))
            events = tasks.since_mark()
            count, seconds = np.subtract(shard_searches(svc.redis, cid), searched_before)
            recalls = [recall([h["id"] for h in body["hits"]], truths[i]) for i, body in cell.answers]
            # Repeated queries are answered from the query workers' result cache (`cached`):
            # latency percentiles are of the searches that ran, the cached ones reported apart.
            ran = [s for s, (_, body) in zip(cell.latencies, cell.answers) if not body.get("cached")]
            hits = [s for s, (_, body) in zip(cell.latencies, cell.answers) if body.get("cached")]
            row = {**labels, "kind": kind, "clients": clients, "queries": len(cell.latencies),
                   **(latency_ms(ran) if ran else dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "mean_ms"))), "qps": round(len(cell.latencies) / cell.wall_s, 1),
                   "cache_hits": len(hits), "cached_p50_ms": latency_ms(hits)["p50_ms"] if hits else None,
                   "recall_at_10": round(float(np.mean(recalls)), 4),
                   "top1": top1([qs[i] for i, _ in cell.answers],
                                [body["hits"][0]["id"] if body["hits"] else None for _, body in cell.answers])}
            results.rows.append(row)
            if clients == 1:
                results.breakdown.append({
                    **labels, "kind": kind, "client_ms": row["mean_ms"],
                    "api_took_ms": round(float(np.mean([b["took_ms"] for _, b in cell.answers])), 1),
                    "encode_here_ms": encode_ms[kind], "search_task_ms": search_task_ms(events),
                    "shard_search_ms": round(float(seconds / count) * 1000, 2) if count else None})
