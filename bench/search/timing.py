"""Searches through HTTP: concurrent clients sending the queries of one (kind, clients) run,
each query once, and a row per run: latency without the query's own encoding (the client's
round trip less the `timings.encode_ms` the query worker reports) and with it, throughput,
recall, top-1, and the CPU milliseconds each role (api, query, shard, redis; bench: the
clients) spent per search; with where a 1-client query's time went."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from bench.search.plan import Plan, Results
from bench.search.queries import K, Query, recall, top1
from bench.service import Service, latency_ms
from shared.runtime import metrics
from shared.store.catalog import get_collection


@dataclass
class Cell:
    """The answers of one (collection, kind, clients) run."""

    latencies: list[float]
    answers: list[tuple[int, dict[str, Any]]]  # (query index, response body)
    wall_s: float


def run_clients(svc: Service, name: str, queries: list[Query], clients: int) -> Cell:
    """Each query once, spread over `clients` threads."""
    lock = threading.Lock()
    cell = Cell([], [], 0.0)

    def client(first: int) -> None:
        with requests.Session() as session:
            for i in range(first, len(queries), clients):
                q = queries[i]
                seconds, body = svc.search(session, name, text=q.text, image=q.image, k=K, weights=q.weights,
                                           filter=q.filter)
                with lock:
                    cell.latencies.append(seconds)
                    cell.answers.append((i, body))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    cell.wall_s = time.perf_counter() - t0
    return cell


def teach(svc: Service, name: str, queries: dict[str, list[Query]], plan: Plan) -> None:
    """Send each unfiltered kind's taught queries (`Plan.taught_slice`), one of each kind in
    turn, as a mixed load would come: the shards sample them and measure their lists on them
    (`shared.index.query_sample`) before any run is timed."""
    pools = [pool[plan.taught_slice()] for pool in queries.values() if pool and pool[0].filter is None]
    mixed = [query for turn in zip(*pools) for query in turn]
    with requests.Session() as session:
        for q in mixed:
            svc.search(session, name, text=q.text, image=q.image, k=K, weights=q.weights)


def query_worker_ms(bodies: list[dict[str, Any]]) -> float | None:
    """Mean time (ms) the query worker spent on a run's searches from the decoding of the query
    on, as their answers' `timings` say: decode and encode the query, send the slot requests,
    gather their answers, merge."""
    times = [b["timings"]["encode_ms"] + b["timings"]["search_ms"] for b in bodies if "timings" in b]
    return round(float(np.mean(times)), 1) if times else None


def shard_searches(r: Any, cid: str) -> tuple[float, float]:
    """(count, seconds) of every index search the shard workers recorded for a collection so far
    (their `mmsearch_shard_search_duration_seconds` histogram)."""
    values = [v for labels, v in metrics.SHARD_SEARCH_HISTOGRAM.read(r).items() if labels[0] == cid]
    return sum(v.count for v in values), sum(v.sum for v in values)


def role_cpu_seconds(svc: Service) -> dict[str, float]:
    """CPU seconds used so far per role (`shard.1` and `shard.2` add up to `shard`; `bench` is
    this process, the clients)."""
    out: dict[str, float] = {}
    for name, seconds in svc.cpu_seconds().items():
        role = name.split(".")[0]
        out[role] = out.get(role, 0.0) + seconds
    return out


def cpu_ms_per_search(before: dict[str, float], after: dict[str, float], searches: int) -> dict[str, float]:
    return {role: round((after[role] - before.get(role, 0.0)) * 1000 / searches, 2) for role in sorted(after)}


def without_encoding(seconds: float, body: dict[str, Any]) -> float:
    """A search's client latency less the query worker's own encoding of the query."""
    return seconds - body["timings"]["encode_ms"] / 1000


def measure_collection(svc: Service, name: str, queries: dict[str, list[Query]],
                       exact: dict[str, list[list[str]]], encode_ms: dict[str, float], plan: Plan,
                       labels: dict[str, int], results: Results) -> None:
    """Every (kind, clients) run against one filled collection, each with queries of its own."""
    cid = get_collection(svc.redis, name).cid
    for kind, pool in queries.items():
        slices = plan.slices()
        warm = next(slices)
        run_clients(svc, name, pool[warm], 1)  # warm-up (models, connections)
        for clients in plan.client_counts:
            part = next(slices)
            qs, truths = pool[part], exact[kind][part]
            searched_before, cpu_before = shard_searches(svc.redis, cid), role_cpu_seconds(svc)
            cell = run_clients(svc, name, qs, clients)
            cpu = cpu_ms_per_search(cpu_before, role_cpu_seconds(svc), len(cell.latencies))
            count, seconds = np.subtract(shard_searches(svc.redis, cid), searched_before)
            recalls = [recall([h["id"] for h in body["hits"]], truths[i]) for i, body in cell.answers]
            # Every query of a run is distinct; a cache hit would be reported apart.
            ran = [(s, body) for s, (_, body) in zip(cell.latencies, cell.answers) if not body.get("cached")]
            hits = [s for s, (_, body) in zip(cell.latencies, cell.answers) if body.get("cached")]
            none = dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "mean_ms"))
            searched = latency_ms([without_encoding(s, body) for s, body in ran]) if ran else none
            client = latency_ms([s for s, _ in ran]) if ran else none
            row = {**labels, "kind": kind, "clients": clients, "queries": len(cell.latencies), **searched,
                   "client_p50_ms": client["p50_ms"], "client_p95_ms": client["p95_ms"],
                   "encode_p50_ms": round(float(np.median([b["timings"]["encode_ms"] for _, b in ran])), 2)
                   if ran else None,
                   "qps": round(len(cell.latencies) / cell.wall_s, 1),
                   "cache_hits": len(hits), "cached_p50_ms": latency_ms(hits)["p50_ms"] if hits else None,
                   "recall_at_10": round(float(np.mean(recalls)), 4),
                   "top1": top1([qs[i] for i, _ in cell.answers],
                                [body["hits"][0]["id"] if body["hits"] else None for _, body in cell.answers]),
                   "cpu_ms": cpu}
            results.rows.append(row)
            if clients == 1:
                results.breakdown.append({
                    **labels, "kind": kind, "client_ms": client["mean_ms"],
                    "api_took_ms": round(float(np.mean([b["took_ms"] for _, b in cell.answers])), 1),
                    "encode_ms": round(float(np.mean([b["timings"]["encode_ms"] for _, b in cell.answers])), 2),
                    "encode_here_ms": encode_ms["text" if qs[0].image is None else "image"],
                    "query_worker_ms": query_worker_ms([b for _, b in cell.answers]),
                    "shard_search_ms": round(float(seconds / count) * 1000, 2) if count else None})
