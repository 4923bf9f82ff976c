"""The shard's vector store, measured in one in-process `ShardIndex`:
`python -m bench.shard_store [--items N] [--queries Q] [--anchors photos|none] [--snapshot PATH]`.

Builds one shard of N items (default 100,000) as the owner applies them (batches of 1000):
`bench.bulk.synthetic_vectors` around real anchors (the photos bench.search mixes, encoded here
with the default models; `--anchors none`: random centres), 1280 + 50 dims as the default models
give. Queries are Q more items of the same generator (not stored), per kind: text only, image
only, fused 1:1 and the weighted mixes image 1 : text 0.25 and 0.25 : 1 (`build_query`'s weights).

Per kind, k = 10, one query at a time: recall@10 against exact float32 search and p50/p95 ms,
read three ways on the same graphs: through the float16 store (the default), through a float32
store, and through hnswlib's `get_items` (the read path before the store; its join here reads
every candidate's other block, where the old join read only those whose bound could still reach
the top k); `--ways` picks some. Then the cost of one stored vector read both ways, filtered searches (1%, 0.01%
and larger shares of the items; exact over the store vs hnswlib's filtered search, with the
look-up of the matching items in the shard's metadata index timed apart), and memory (`stats()`
and the process's resident growth over the build or load). `--snapshot PATH` loads the shard
from PATH when it is there (saved by an earlier run with the same arguments; loaded first, so
its resident growth is clean) and saves it there otherwise. The last line is JSON of all of it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.bulk import synthetic_vectors
from bench.service import latency_ms
from shared.encoding.fusion import build_query
from shared.index import shard_index
from shared.index.labels import label_for
from shared.index.shard_index import ItemRecord, ShardIndex
from shared.index.vector_store import VectorStore
from shared.runtime.allocator import release_free_memory

IMAGE_DIM, TEXT_DIM = 1280, 50   # efficientnet_lite0, glove-6b-50d
K = 10
BATCH = 1000                     # items per upsert, as the shard owner applies them
SEED = 20240611
KINDS = {"text": (0.0, 1.0), "image": (1.0, 0.0), "fused": (1.0, 1.0),
         "fused_1_0.25": (1.0, 0.25), "fused_0.25_1": (0.25, 1.0)}  # (image weight, text weight)
FILTERS = {"0.01%": 10_000, "1%": 100, "5%": 20, "20%": 5}       # share -> metadata modulus
FILTER_QUERIES = 40
WAYS = ("store_fp16", "store_fp32", "get_items")  # how the shard reads its vectors (fp16: as built)
FILTER_VALUE = 3                                                  # the metadata value a filter asks for


def anchors(which: str) -> np.ndarray | None:
    """Fused vectors of real photos to mix the synthetic centres from (as bench.search does)."""
    if which == "none":
        return None
    from bench.datasets import cifar_photos, opencv_photos, wallpapers
    from bench.search.queries import encode_photos
    from shared.encoding.encoders import collection_encoder
    from shared.runtime.config import Settings

    settings = Settings.from_env()
    encoder = collection_encoder(settings.image_model, settings.text_model, "fp32", settings.encoder_setting)
    return encode_photos(encoder, cifar_photos() + opencv_photos() + wallpapers())


def load(snapshot: Path) -> tuple[ShardIndex, float, int]:
    """The shard saved by an earlier run, its load seconds and the process's resident growth in
    bytes meanwhile (first thing in the process: nothing freed before it is reused)."""
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    index = ShardIndex.load(snapshot)[0]
    release_free_memory()  # what loading freed goes back: the growth is the shard's own
    return index, time.perf_counter() - t0, psutil.Process().memory_info().rss - rss


def build(vectors: np.ndarray, ids: list[str], snapshot: Path | None) -> tuple[ShardIndex, float, int]:
    """The shard (saved to `snapshot` if given), its build seconds and the process's resident
    growth in bytes meanwhile."""
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    index = ShardIndex(vectors.shape[1], image_dim=IMAGE_DIM)
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        index.upsert(batch, vectors[start:start + BATCH],
                     [ItemRecord(i, metadata={f"m{m}": j % m for m in FILTERS.values()})
                      for j, i in enumerate(batch, start)])
    seconds, grown = time.perf_counter() - t0, psutil.Process().memory_info().rss - rss
    if snapshot is not None:
        index.save(snapshot, "0-0", forked=False)
    return index, seconds, grown


def exact_top(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of each query's exact float32 top K (one row per query), among `rows` if given."""
    best_rows = np.empty((len(queries), 0), np.int64)
    best = np.empty((len(queries), 0), np.float32)
    rows = np.arange(len(vectors)) if rows is None else rows
    for s in range(0, len(rows), 50_000):
        chunk = rows[s:s + 50_000]
        scores = queries @ vectors[chunk].T
        cand_rows = np.concatenate([best_rows, np.broadcast_to(chunk, scores.shape)], axis=1)
        cand = np.concatenate([best, scores], axis=1)
        keep = np.argsort(-cand, axis=1, kind="stable")[:, :K]
        best_rows, best = np.take_along_axis(cand_rows, keep, 1), np.take_along_axis(cand, keep, 1)
    return best_rows


def search_all(index: ShardIndex, queries: np.ndarray, truth: np.ndarray, ids: list[str],
               filter: dict[str, Any] | None = None) -> dict[str, float]:
    """p50/p95 ms and recall@K of the queries, one at a time (after two unmeasured ones)."""
    for q in queries[:2]:
        index.search(q, K, filter=filter)
    seconds, found = [], 0
    for q, rows in zip(queries, truth):
        t = time.perf_counter()
        hits = index.search(q, K, filter=filter)
        seconds.append(time.perf_counter() - t)
        found += len({h.id for h in hits} & {ids[r] for r in rows})
    ms = latency_ms(seconds)
    return {"recall_at_10": round(found / truth.size, 4), "p50_ms": ms["p50_ms"], "p95_ms": ms["p95_ms"]}


class HnswReads:
    """The store's reads through hnswlib's `get_items`, as the shard read its vectors before."""

    def __init__(self, index: ShardIndex) -> None:
        self.graphs, self.blocks, self.dtype = index._graphs, index._blocks, "float32"

    def scores(self, block: int, labels: list[int], query: np.ndarray) -> np.ndarray:
        graph = self.graphs[block]
        return graph.index.get_items(labels) @ graph.part(query)

    def vectors(self, labels: list[int], dim: int) -> np.ndarray:
        out = np.zeros((len(labels), dim), np.float32)
        for graph in self.graphs:
            rows = [i for i, label in enumerate(labels) if self.blocks[label] & graph.bit]
            if rows:
                out[rows, graph.start:graph.stop] = graph.index.get_items([labels[i] for i in rows])
        return out

    def top(self, query: np.ndarray, labels: list[int], k: int) -> list[tuple[int, float]]:
        scores = np.zeros(len(labels), np.float32)
        for block, graph in enumerate(self.graphs):
            rows = [i for i, label in enumerate(labels) if self.blocks[label] & graph.bit]
            if rows and graph.part(query).any():
                scores[rows] += self.scores(block, [labels[i] for i in rows], query)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(labels[i], float(scores[i])) for i in top]


def read_costs(index: ShardIndex, labels: list[int]) -> dict[str, float]:
    """Microseconds per stored image block (1280-d) read through get_items and from the store."""
    graph, store = index._graphs[0], index._store
    t = time.perf_counter()
    for label in labels:
        graph.index.get_items([label])
    hnsw = (time.perf_counter() - t) / len(labels)
    t = time.perf_counter()
    for label in labels:
        store.scores(0, [label], np.ones(index.dim, np.float32))
    one = (time.perf_counter() - t) / len(labels)
    t = time.perf_counter()
    store.scores(0, labels, np.ones(index.dim, np.float32))
    batch = (time.perf_counter() - t) / len(labels)
    return {"get_items_us": round(hnsw * 1e6, 1), "store_one_us": round(one * 1e6, 1),
            "store_batch_us": round(batch * 1e6, 2)}


def filtered(index: ShardIndex, vectors: np.ndarray, ids: list[str], queries: dict[str, np.ndarray]) -> dict:
    """Per filter share: the ms of finding the matching items alone, and per way (exact over
    the store, hnswlib's filtered search) the image and fused queries' recall and ms."""
    out: dict[str, Any] = {}
    rows = np.arange(len(ids))
    limit = shard_index.EXACT_FILTER_MAX
    for share, modulus in FILTERS.items():
        key, matching = f"m{modulus}", rows[rows % modulus == FILTER_VALUE]
        t = time.perf_counter()
        for _ in range(5):
            index.search(queries["image"][0], K, filter={key: -1})  # matches nothing: the look-up alone
        out[share] = {"items": len(matching), "match_ms": round((time.perf_counter() - t) / 5 * 1000, 2)}
        truth = {kind: exact_top(vectors, queries[kind][:FILTER_QUERIES], matching) for kind in ("image", "fused")}
        for way, most in (("exact", len(ids)), ("hnswlib", 0)):
            shard_index.EXACT_FILTER_MAX = most
            for kind in ("image", "fused"):
                out[share][f"{way}_{kind}"] = search_all(index, queries[kind][:FILTER_QUERIES], truth[kind], ids,
                                                         {key: FILTER_VALUE})
    shard_index.EXACT_FILTER_MAX = limit
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shard_store", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--anchors", choices=("photos", "none"), default="photos")
    parser.add_argument("--snapshot", type=Path)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"the reads to measure, of {', '.join(WAYS)}")
    args = parser.parse_args(argv)
    n = args.items
    loaded = args.snapshot is not None and args.snapshot.exists()
    if loaded:
        index, build_s, rss = load(args.snapshot)
    mix = anchors(args.anchors)
    everything = synthetic_vectors(n + args.queries, IMAGE_DIM, TEXT_DIM, seed=SEED, anchors=mix)
    vectors, held = everything[:n], everything[n:]
    ids = [f"syn-{j}" for j in range(n)]
    if not loaded:
        index, build_s, rss = build(vectors, ids, args.snapshot)
    stats = index.stats()
    print(f"{'loaded' if loaded else 'built'} {n} items in {build_s:.0f} s; ef {stats['ef']}, far_ef {stats['far_ef']}",
          file=sys.stderr)
    queries = {kind: np.stack([build_query(h[:IMAGE_DIM] if wi else None, h[IMAGE_DIM:] if wt else None,
                                           IMAGE_DIM, TEXT_DIM, {"image": wi, "text": wt}).vector for h in held])
               for kind, (wi, wt) in KINDS.items()}
    truth = {kind: exact_top(vectors, qs) for kind, qs in queries.items()}
    fp16 = index._store
    fp32 = VectorStore.of(fp16.spans, [label_for(i) for i in ids],
                          [vectors[:, start:stop] for start, stop in fp16.spans], "float32")
    kinds: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    stores = {"store_fp16": fp16, "store_fp32": fp32, "get_items": HnswReads(index)}
    for way in args.ways.split(","):
        index._store = stores[way]
        for kind, qs in queries.items():
            kinds[kind][way] = search_all(index, qs, truth[kind], ids)
    index._store = fp16
    del fp32, stores
    result = {"items": n, "anchors": args.anchors, "queries": args.queries, "loaded": loaded,
              "build_s": round(build_s, 1),
              "ef": stats["ef"], "far_ef": stats["far_ef"], "kinds": kinds,
              "reads": read_costs(index, [label_for(i) for i in ids[::max(1, n // 500)]]),
              "filters": filtered(index, vectors, ids, queries),
              "memory": {key: stats[key] for key in ("vector_bytes", "graph_bytes", "store_bytes", "bytes")}}
    result["memory"]["ratio"] = round(stats["bytes"] / (stats["vector_bytes"] + stats["graph_bytes"]), 3)
    result["memory"]["rss_growth_bytes"] = rss
    result["memory"]["rss_ratio"] = round(rss / (stats["vector_bytes"] + stats["graph_bytes"]), 3)
    report(result)
    print(json.dumps(result, separators=(",", ":")))


def report(result: dict[str, Any]) -> None:
    print(f"\n== one ShardIndex of {result['items']} items ({result['anchors']} anchors), k={K}, "
          f"{result['queries']} queries per kind, one at a time; {'load' if result['loaded'] else 'build'} "
          f"{result['build_s']} s")
    print(f"{'kind':<14}" + "".join(f"{way + ' recall/p50/p95':>34}" for way in next(iter(result["kinds"].values()))))
    for kind, ways in result["kinds"].items():
        print(f"{kind:<14}" + "".join(f"{w['recall_at_10']:>16.4f}{w['p50_ms']:>9.2f}{w['p95_ms']:>9.2f}"
                                      for w in ways.values()))
    print(f"\none 1280-d block: {result['reads']}")
    print("\n== filtered (image | fused queries): recall, p50 ms; exact over the store vs hnswlib's filter")
    for share, row in result["filters"].items():
        cells = "  ".join(f"{way} {row[way]['recall_at_10']:.3f} {row[way]['p50_ms']:.1f}"
                          for way in ("exact_image", "exact_fused", "hnswlib_image", "hnswlib_fused"))
        print(f"{share:>6} ({row['items']} items, finding them {row['match_ms']} ms): {cells}")
    print(f"\nmemory: {result['memory']}")


if __name__ == "__main__":
    main()
