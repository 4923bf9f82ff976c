"""Search latency, throughput and recall of the real stack: `python -m bench.search [--quick]`.

Starts the whole stack (`bench.service.running_stack`, 2 shard workers by default) and, for each
size N and shard count, creates a collection holding N items: N - 26 synthetic fused vectors
(`bench.bulk.synthetic_vectors`, appended with `bench.bulk.bulk_insert`) plus the 26 photos of
foolbox and scikit-image ingested through the API without captions, so that image queries are
real: a recompressed crop of each photo should find the photo first ("top-1"). The synthetic
vectors are mixes of other real photos' vectors (foolbox's CIFAR samples, opencv-doc's photos and
the Plasma wallpapers, encoded here), so the 26 photos are not outliers among them.

Once filled, the bench waits until every shard has snapshotted all it applied (the shard workers
write those snapshots when the writes stop; "snapshots s" in the fill table, write_results), so the searches
measure the service at rest, not sharing the disk and cores with the snapshot writers.

Queries, k=10, through HTTP by 1, 8 (and 32 in the full run) client threads, each with its own
`requests.Session`: text only (16 phrases, JSON), image (a crop, multipart) and fused (the crop
and a word for what it shows, multipart). Each (kind, clients) run of a collection sends its own
variant of the queries (the phrases after another prefix, other crop boxes), so its first pass
is searched whatever ran before; each query is sent more than once: repeats are answered from
the query workers' result cache (`"cached": true`), so p50/p95/p99 are of the searches that
ran and the cache hits are counted apart with their p50. Per row also: queries/s, recall@10
against exact search over the same vectors (query vectors computed here with
`shared.encoding.encoders.collection_encoder` in the precision the service gives the collections, whose
models are deterministic), and the top-1 rate.

The floor: the same vectors in one in-process `ShardIndex` (the collection's image dim, so one
graph per block as the shard workers build them), searched with the same query vectors one at a
time (with its top-1 and exact search's); "x floor" is the service's p50 over that p50.

Memory: before each collection the shard workers are restarted (memory the previous, deleted
collection left with the allocator would otherwise be reused and hide growth), the empty
collection is created and searched once (code paths warm), and the resident memory (VmRSS) of
each shard worker is read; again once the collection was filled and searched. The growth summed
over the shard workers, over N, is the service's bytes per item. Next to it the index's own
estimate of vector + graph bytes per item (`ShardIndex.stats()` of the floor: float32 vectors,
level-0 links, labels, upper levels) and the ratio of the two (target: at most 1.5).

Where a 1-client query's time goes: the client's round trip, the API's `took_ms`, the Celery
runtime of the search task (from the query worker's log) and the mean index search of one shard
(from the shard workers' search histogram), next to the query encoding and the index search timed
here.

Defaults: --quick: N = 10k; 1 and 4 shards; 1 and 8 clients (a few minutes). Full: N = 10k,
100k and 1M; 1, 2 and 4 shards; 1, 8 and 32 clients. A size is skipped with a note when its
copies would not fit in memory, or when filling its collections and building its floor would
take longer than --max-minutes at the previous size's rates (a lower bound: graph inserts slow
down as the graph grows). The last line of output is one JSON object: the headline row (text
queries, 1 client, the largest size, 4 shards) with that collection's memory figures
(`bytes_per_item`, `index_bytes_per_item`, `memory_ratio`), and every row; the same object is
written to --json (default bench/results/search-<UTC time>.json), which `bench.report` plots.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests

from bench.bulk import bulk_insert, synthetic_vectors
from bench.datasets import cifar_photos, note, opencv_photos, tags_of, wallpapers
from bench.photos import Photo, foolbox_photos, skimage_photos
from bench.service import (Service, TaskEvent, TaskLog, Upload, latency_ms, running_stack,
                           runtimes, table, write_results)
from shared.store import keys, queues
from shared.runtime import metrics
from shared.store.catalog import Collection, get_collection
from shared.encoding.imagedecode import decode_image
from shared.index.shard_index import ItemRecord, ShardIndex

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the workers set it, before torch loads

K = 10
SEED = 20240611
TEXT_QUERIES = (
    "a dog on the beach", "a cat", "a cup of coffee", "fresh strawberries", "a red car",
    "birds on a wire", "an old cannon", "a snare drum", "a rocket launch", "an astronaut",
    "a motorcycle", "a thatched cottage", "geese on the grass", "a black leather shoe",
    "tents among pine trees", "a beetle on a leaf",
)
KINDS = ("text", "image", "fused")
# Query variants: each (kind, clients) run of a collection sends its own, so the first pass of
# every run is searched (repeats within a run come from the result cache, reported apart), and
# the warm-up sends the last. Text: the phrase after a prefix; images: another crop box.
TEXT_PREFIXES = ("", "a photo of ", "a picture of ", "an image of ")
CROP_BOXES = ((0.15, 0.9, 0.1, 0.85), (0.1, 0.85, 0.15, 0.9), (0.05, 0.8, 0.05, 0.8), (0.2, 0.95, 0.2, 0.95))
VARIANTS = len(TEXT_PREFIXES)
INDEX_BATCH = 1000  # rows per ShardIndex.upsert when building the floor


@dataclass(frozen=True)
class Query:
    kind: str
    text: str | None
    image: bytes | None
    vector: np.ndarray
    expect: str | None  # the photo a crop query should find first


@dataclass
class Cell:
    """The answers of one (collection, kind, clients) run."""

    latencies: list[float]
    answers: list[tuple[int, dict[str, Any]]]  # (query index, response body)
    wall_s: float


def query_crop(data: bytes, variant: int = 0) -> bytes:
    """A recompressed off-centre crop (75% of each side from CROP_BOXES[variant], 2/3 scale,
    JPEG quality 60)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    top, bottom, left, right = CROP_BOXES[variant]
    crop = bgr[int(h * top):int(h * bottom), int(w * left):int(w * right)]
    crop = cv2.resize(crop, (crop.shape[1] * 2 // 3, crop.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 60])
    if not ok:
        raise ValueError("OpenCV could not encode the crop")
    return buf.tobytes()


def build_queries(encoder: Any, photos: list[Photo]) -> tuple[dict[str, list[list[Query]]], dict[str, float]]:
    """The queries of each kind, VARIANTS lists of them, with their vectors; mean in-process
    encode ms per kind."""
    queries: dict[str, list[list[Query]]] = {kind: [[] for _ in range(VARIANTS)] for kind in KINDS}
    encode_s: dict[str, list[float]] = {kind: [] for kind in KINDS}
    encoder.query(decode_image(query_crop(photos[0].read_bytes())), "a cat", None)  # warm-up

    def add(kind: str, variant: int, text: str | None, image: bytes | None, expect: str | None) -> None:
        t0 = time.perf_counter()
        fused = encoder.query(decode_image(image) if image is not None else None, text, None)
        encode_s[kind].append(time.perf_counter() - t0)
        queries[kind][variant].append(Query(kind, text, image, fused.vector, expect))

    for variant, prefix in enumerate(TEXT_PREFIXES):
        for text in TEXT_QUERIES:
            add("text", variant, prefix + text, None, None)
    for photo in photos:
        data = photo.read_bytes()
        for variant in range(VARIANTS):
            crop = query_crop(data, variant)
            add("image", variant, None, crop, photo.name)
            add("fused", variant, (tags_of(photo) or ("photo",))[0], crop, photo.name)
    return queries, {kind: round(float(np.mean(s)) * 1000, 2) for kind, s in encode_s.items()}


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


def encode_photos(encoder: Any, photos: list[Photo]) -> np.ndarray:
    """Fused vectors of uncaptioned photos, as the encode workers make them."""
    return np.stack([e.vector for e in encoder.encode_items([decode_image(p.read_bytes()) for p in photos],
                                                            [None] * len(photos))])


def top1(queries: list[Query], firsts: list[str | None]) -> float | None:
    """Share of the queries with an expected photo whose first hit is that photo."""
    pairs = [(q.expect, first) for q, first in zip(queries, firsts) if q.expect]
    return round(sum(e == f for e, f in pairs) / len(pairs), 3) if pairs else None


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


def exact_top(vectors: np.ndarray, ids: list[str], queries: list[Query]) -> list[list[str]]:
    scores = np.stack([q.vector for q in queries]) @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return [[ids[j] for j in row] for row in top]


def recall(found: list[str], exact: list[str]) -> float:
    return len(set(found) & set(exact)) / len(exact)


def fill(svc: Service, name: str, vectors: np.ndarray, ids: list[str], photos: list[Photo]) -> float:
    """Bulk-insert the synthetic items into the (empty) collection, ingest the photos; seconds
    until both jobs were final."""
    coll: Collection = get_collection(svc.redis, name)
    t0 = time.perf_counter()
    bulk_job = bulk_insert(svc.redis, coll, vectors, ids)
    photo_job = svc.post_items(name, [Upload(p.name, p.read_bytes()) for p in photos])
    timings = svc.wait_jobs([bulk_job, photo_job], timeout_s=3600, poll_s=0.5)
    seconds = max(t.final_s for t in timings.values()) - t0
    states = {t.body["state"] for t in timings.values()}
    count = svc.collection(name)["count"]
    if states != {"succeeded"} or count != len(ids) + len(photos):
        raise RuntimeError(f"filling {name}: jobs {states}, {count} items searchable of {len(ids) + len(photos)}")
    return seconds


def settle(svc: Service, name: str, timeout_s: float = 600) -> float:
    """Seconds until every shard of the collection has a snapshot of all it applied (the shard
    workers write them once the writes stop; searches meanwhile share the disk and the cores
    with the snapshot writers)."""
    coll: Collection = get_collection(svc.redis, name)
    t0 = time.perf_counter()
    while True:
        states = [svc.redis.hgetall(keys.shard_state(coll.cid, shard)) for shard in range(coll.shards)]
        if all(b"applied" in state and state.get(b"snapshot") == state[b"applied"] for state in states):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"{name}: the shards did not snapshot what they applied within {timeout_s:g} s")
        time.sleep(0.2)


def floor(vectors: np.ndarray, ids: list[str], image_dim: int, queries: dict[str, list[Query]],
          exact: dict[str, list[list[str]]], repeats: int) -> dict[str, Any]:
    """One in-process ShardIndex of all vectors: build time and its vector and graph bytes
    (`stats()`); per query kind latency, recall@10 and top-1, and exact search's top-1."""
    index = ShardIndex(vectors.shape[1], image_dim=image_dim)
    t0 = time.perf_counter()
    for start in range(0, len(ids), INDEX_BATCH):
        batch = ids[start:start + INDEX_BATCH]
        index.upsert(batch, vectors[start:start + INDEX_BATCH], [ItemRecord(i) for i in batch])
    stats = index.stats()
    out: dict[str, Any] = {"build_s": round(time.perf_counter() - t0, 1), "vector_bytes": stats["vector_bytes"],
                           "graph_bytes": stats["graph_bytes"], "bytes": stats["bytes"]}
    for kind, qs in queries.items():
        seconds, recalls, firsts = [], [], []
        for _ in range(repeats):
            for q, truth in zip(qs, exact[kind]):
                t = time.perf_counter()
                hits = index.search(q.vector, K, return_vectors=True)
                seconds.append(time.perf_counter() - t)
                recalls.append(recall([h.id for h in hits], truth))
                firsts.append(hits[0].id)
        out[kind] = {**latency_ms(seconds), "recall_at_10": round(float(np.mean(recalls)), 4),
                     "top1": top1(qs * repeats, firsts), "exact_top1": top1(qs, [t[0] for t in exact[kind]])}
    return out


def memory_row(n: int, shards: int, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """The shard workers' resident memory before a collection of `n` items and once it was
    filled and searched; growth per item (the index estimate is added once the floor is built)."""
    return {"items": n, "shards": shards, "rss_before_mb": round(sum(before.values()) / 2**20, 1),
            "rss_after_mb": round(sum(after.values()) / 2**20, 1),
            "bytes_per_item": round((sum(after.values()) - sum(before.values())) / n, 1),
            "workers": {name: {"before": before[name], "after": after[name]} for name in sorted(after)}}


def fits_in_memory(n: int, dim: int) -> bool:
    """Whether one collection of N vectors fits: its shard indexes (the vectors, graph and
    allocator slack: 1.5 copies) and, at once, the calibrations' copies of shards' vectors and
    the not yet trimmed logs in Redis (half a copy). The collections of a size are filled one
    after the other, each deleted (and the shard workers restarted) before the next; the floor
    is built once they are gone. The vectors here are a memory-mapped file (page cache)."""
    with open("/proc/meminfo") as f:
        available_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    return n * dim * 4 * 2 < 0.8 * available_kb * 1024


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    sizes: list[int]
    shard_counts: list[int]
    client_counts: list[int]
    passes: int      # a run sends max(passes x the kind's queries, clients x per_client) queries
    per_client: int
    repeats: int     # passes over the queries when timing the floor
    max_minutes: float  # a size whose fills and floor would take longer at the previous rates is skipped


@dataclass
class Results:
    """Every figure of a run, as the JSON line reports them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    floors: dict[int, dict[str, Any]] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


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


def run(svc: Service, plan: Plan) -> Results:
    """Fill, query and delete each collection; the floor of each size."""
    from shared.store.catalog import check_models
    from shared.encoding.encoders import collection_encoder
    from shared.encoding.precision import resolve_precision

    settings = svc.stack.settings
    dims = check_models(settings, settings.image_model, settings.text_model)
    # As the API resolves it for a new collection; fp32 queries would not match bf16 items' scores.
    precision = resolve_precision(None, settings.precision)
    encoder = collection_encoder(settings.image_model, settings.text_model, precision)
    photos = foolbox_photos() + skimage_photos()
    queries, encode_ms = build_queries(encoder, photos)
    photo_vectors = encode_photos(encoder, photos)
    anchors = encode_photos(encoder, cifar_photos() + opencv_photos() + wallpapers())
    results = Results()
    for n in plan.sizes:
        if not fits_in_memory(n, dims["image"] + dims["text"]):
            note(f"N={n}: a collection of {n} vectors would not fit in memory; skipped")
            results.skipped.append({"items": n, "reason": "memory"})
            continue
        minutes = estimated_minutes(n, len(plan.shard_counts), results)
        if minutes is not None and minutes > plan.max_minutes:
            note(f"N={n}: filling {len(plan.shard_counts)} collections and building the floor would take at least "
                 f"{minutes:.0f} min at the rates measured at N={results.fills[-1]['items']} "
                 f"(limit --max-minutes {plan.max_minutes:g}); skipped")
            results.skipped.append({"items": n, "reason": "time", "estimated_min": round(minutes, 1)})
            continue
        vectors_file = svc.data_dir / f"vectors-{n}.npy"
        vectors = np.lib.format.open_memmap(vectors_file, mode="w+", dtype=np.float32,
                                            shape=(n, dims["image"] + dims["text"]))
        synthetic = synthetic_vectors(n - len(photos), dims["image"], dims["text"], seed=SEED, anchors=anchors,
                                      out=vectors[:n - len(photos)])
        vectors[n - len(photos):] = photo_vectors
        syn_ids = [f"syn-{i}" for i in range(len(synthetic))]
        ids = syn_ids + [p.name for p in photos]
        exact = {kind: [exact_top(vectors, ids, qs) for qs in variants] for kind, variants in queries.items()}
        for shards in plan.shard_counts:
            name = f"n{n}-s{shards}"
            svc.restart_shard_workers()
            created = svc.create_collection(name, shards)
            if created.get("precision") != precision:
                raise RuntimeError(f"{name} got precision {created.get('precision')}, the queries here use {precision}")
            svc.search(svc.session, name, text=TEXT_QUERIES[0], k=K)
            rss_before = svc.shard_rss()
            fill_s = fill(svc, name, synthetic, syn_ids, photos)
            settle_s = settle(svc, name)
            results.fills.append({"items": n, "shards": shards, "fill_s": round(fill_s, 1),
                                  "items_per_s": round(n / fill_s, 1), "snapshots_s": round(settle_s, 1)})
            measure_collection(svc, name, queries, exact, encode_ms, plan, {"items": n, "shards": shards}, results)
            results.memory.append(memory_row(n, shards, rss_before, svc.shard_rss()))
            svc.session.delete(f"{svc.url}/collections/{name}", timeout=60)
        svc.restart_shard_workers()  # the deleted collections' memory back before the floor's
        results.floors[n] = floor(vectors, ids, dims["image"], {kind: v[0] for kind, v in queries.items()},
                                  {kind: e[0] for kind, e in exact.items()}, plan.repeats)
        del synthetic, vectors
        vectors_file.unlink()
    return results


def estimated_minutes(n: int, collections: int, results: Results) -> float | None:
    """Minutes to fill `collections` collections of `n` items and build the floor at the slowest
    fill rate and the floor build rate of the largest size measured so far (None: nothing yet)."""
    if not results.floors:
        return None
    last = max(results.floors)
    fill_rate = min(f["items_per_s"] for f in results.fills if f["items"] == last)
    floor_rate = last / max(results.floors[last]["build_s"], 0.1)
    return (collections * n / fill_rate + n / floor_rate) / 60


def _minus(total: float | None, part: float | None) -> float | None:
    return None if total is None or part is None else round(total - part, 1)


def report(results: Results, slots: int, load: list[float]) -> None:
    """The tables (the JSON line is printed by main)."""
    floors = results.floors
    for row in results.rows:
        row["x_floor"] = None if row["p50_ms"] is None else round(row["p50_ms"] / floors[row["items"]][row["kind"]]["p50_ms"], 1)
    for b in results.breakdown:
        b["index_here_ms"] = floors[b["items"]][b["kind"]]["mean_ms"]
    for m in results.memory:
        f = floors[m["items"]]
        m["index_bytes_per_item"] = round((f["vector_bytes"] + f["graph_bytes"]) / m["items"], 1)
        m["ratio"] = round(m["bytes_per_item"] / m["index_bytes_per_item"], 2)
    print(f"\n== fill: bulk vectors + 26 photos through the API, until both jobs are final ({slots} shard workers)")
    print(table(["items", "shards", "seconds", "items/s", "snapshots s"],
                [[f["items"], f["shards"], f["fill_s"], f["items_per_s"], f["snapshots_s"]] for f in results.fills]))
    print(f"\n== searches through HTTP, k={K} (latency ms of the searches that ran; hits: answers from the "
          "result cache, with their p50; qps over all; x floor: p50 / in-process index p50)")
    print(table(["items", "shards", "kind", "clients", "queries", "p50", "p95", "p99", "hits", "hit p50", "qps",
                 "recall@10", "top-1", "x floor"],
                [[r["items"], r["shards"], r["kind"], r["clients"], r["queries"], r["p50_ms"], r["p95_ms"],
                  r["p99_ms"], r["cache_hits"], r["cached_p50_ms"], r["qps"], r["recall_at_10"], r["top1"],
                  r["x_floor"]] for r in results.rows]))
    print("\n== floor: one in-process ShardIndex of the same vectors, one query at a time (ms)")
    print(table(["items", "build s", "kind", "p50", "p95", "recall@10", "top-1", "exact top-1"],
                [[n, f["build_s"], kind, f[kind]["p50_ms"], f[kind]["p95_ms"], f[kind]["recall_at_10"],
                  f[kind]["top1"], f[kind]["exact_top1"]] for n, f in floors.items() for kind in KINDS]))
    print("\n== memory: shard workers' resident memory (VmRSS, all workers; restarted before each collection)\n"
          "   with the collection empty and once filled and searched; bytes/item = growth / items;\n"
          "   index = vector + graph bytes per item by ShardIndex.stats() of the floor;\n"
          "   ratio = bytes/item / index (target <= 1.5)")
    print(table(["items", "shards", "RSS before MB", "RSS after MB", "bytes/item", "index bytes/item", "ratio"],
                [[m["items"], m["shards"], m["rss_before_mb"], m["rss_after_mb"], m["bytes_per_item"],
                  m["index_bytes_per_item"], m["ratio"]] for m in results.memory]))
    print("   the floor index in this process: " + "; ".join(
        f"N={n}: vectors {f['vector_bytes'] / n:.0f} + graph {f['graph_bytes'] / n:.0f} B/item, "
        f"whole index by stats() {f['bytes'] / n:.0f} B/item"
        for n, f in floors.items()))
    for b in results.breakdown:
        b["api_hops_ms"] = _minus(b["api_took_ms"], b["search_task_ms"])
    print("\n== where a 1-client query's time goes (mean ms). client: HTTP round trip; API took: the API's\n"
          "   own wall time; search task: its Celery runtime from the query worker's log; shard search:\n"
          "   one shard's index search as the shard workers' histogram recorded it (the shards of a query\n"
          "   run in parallel); API hops = API took - search task (broker, reply list, API work);\n"
          "   encode / index here: the same query encoding and a search of one index of all items, in this\n"
          "   process (timed apart from the service runs, so under other load)")
    print(table(["items", "shards", "kind", "client", "API took", "API hops", "search task", "shard search",
                 "encode here", "index here"],
                [[b["items"], b["shards"], b["kind"], b["client_ms"], b["api_took_ms"], b["api_hops_ms"],
                  b["search_task_ms"], b["shard_search_ms"], b["encode_here_ms"], b["index_here_ms"]]
                 for b in results.breakdown]))
    print(f"\nload average at the end (other processes share these cores): {load}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k items, 1 and 4 shards, 1 and 8 clients")
    parser.add_argument("--sizes", type=parse_ints, help="collection sizes (default: 10000 quick; 10000,100000,1000000)")
    parser.add_argument("--shards", type=parse_ints, help="shard counts (default: 1,4 quick; 1,2,4)")
    parser.add_argument("--clients", type=parse_ints, help="concurrent clients (default: 1,8 quick; 1,8,32)")
    parser.add_argument("--slots", type=int, default=2, help="shard worker processes (MMSEARCH_SHARDS)")
    parser.add_argument("--max-minutes", type=float, default=20.0,
                        help="skip a size whose fills and floor would take longer (estimated from the previous size)")
    parser.add_argument("--json", type=Path, help="where to write the result JSON "
                        "(default: bench/results/search-<UTC time>.json)")
    args = parser.parse_args(argv)
    plan = Plan(sizes=args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000]),
                shard_counts=args.shards or ([1, 4] if args.quick else [1, 2, 4]),
                client_counts=args.clients or ([1, 8] if args.quick else [1, 8, 32]),
                passes=2 if args.quick else 4, per_client=8 if args.quick else 16, repeats=3 if args.quick else 5,
                max_minutes=args.max_minutes)
    with running_stack(slots=args.slots) as svc:
        results = run(svc, plan)
        load = [round(x, 2) for x in os.getloadavg()]
    report(results, args.slots, load)

    rows = results.rows
    if not rows:
        raise SystemExit("no size was measured")
    largest = max(r["items"] for r in rows)
    headline_shards = 4 if 4 in plan.shard_counts else max(plan.shard_counts)
    head = next(r for r in rows if (r["items"], r["shards"], r["kind"], r["clients"]) ==
                (largest, headline_shards, "text", 1))
    memory = next(m for m in results.memory if (m["items"], m["shards"]) == (largest, headline_shards))
    summary = {"p50_ms": head["p50_ms"], "p95_ms": head["p95_ms"], "qps": head["qps"],
               "recall_at_10": head["recall_at_10"], "items": largest, "shards": headline_shards,
               "bytes_per_item": memory["bytes_per_item"], "index_bytes_per_item": memory["index_bytes_per_item"],
               "memory_ratio": memory["ratio"],
               "quick": args.quick, "slots": args.slots, "cores": os.cpu_count(), "load_average": load,
               "rows": rows, "floor": results.floors, "fill": results.fills, "breakdown": results.breakdown,
               "memory": results.memory, "skipped": results.skipped}
    write_results(summary, "search", args.json)


if __name__ == "__main__":
    main()
