"""Search stalls while a shard snapshot is written: `python -m bench.snapshot [--quick]`.

A shard worker writes a snapshot while its search threads answer queries. hnswlib's
`save_index` holds the GIL for its whole run, so written in the worker's own process it stops
every search thread; `ShardIndex.save` writes it from a forked child instead (`shared.runtime.forked`).
For each size N this fills one in-process `ShardIndex` with N synthetic fused vectors
(`bench.bulk.synthetic_vectors`, the image and text dims of the default models, no thumbnails),
runs one search thread (a random query, k=10, one after the other) and, while it runs, writes
the snapshot both ways with `ShardIndex.save`: in this process (`forked=False`, the same
writing code) and from a forked child (the default). Per way: the write's wall time, the
searches done during it, the longest gap between two searches ending (the stall a query waits
out) and the p99 of the searches' latency during the write. The last line of output is one JSON object with every
figure, also written to --json (default bench/results/snapshot-<UTC time>.json).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.bulk import synthetic_vectors
from bench.service import result_path, table
from shared.store.catalog import check_models
from shared.runtime.config import Settings
from shared.index.shard_index import ItemRecord, ShardIndex

K = 10
SEED = 7
FILL_BATCH = 5000


class Searcher:
    """One thread searching `index` back to back, keeping when each search ended and took."""

    def __init__(self, index: ShardIndex, queries: np.ndarray) -> None:
        self.index, self.queries = index, queries
        self.ends: list[float] = []
        self.took: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            self.index.search(self.queries[n % len(self.queries)], K)
            end = time.perf_counter()
            self.ends.append(end)
            self.took.append(end - start)
            n += 1

    def __enter__(self) -> "Searcher":
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> dict[str, Any]:
        """Searches that ended in [start, end + the next one]: count, longest gap, p99 latency."""
        times = [(e, t) for e, t in zip(self.ends, self.took) if start <= e]
        inside = [(e, t) for e, t in times if e <= end]
        following = times[len(inside):len(inside) + 1]  # the one that waited out the end
        span = [start] + [e for e, _ in inside + following]
        gaps = np.diff(span) * 1000
        took = np.array([t for _, t in inside + following]) * 1000
        return {"searches": len(inside), "max_gap_ms": round(float(gaps.max()), 1),
                "p99_ms": round(float(np.percentile(took, 99)), 2)}


def timed_write(searcher: Searcher, write: Callable[[], None]) -> dict[str, Any]:
    time.sleep(0.2)
    start = time.perf_counter()
    write()
    end = time.perf_counter()
    time.sleep(0.2)
    return {"write_s": round(end - start, 3), **searcher.during(start, end)}


def measure(n: int, image_dim: int, text_dim: int, directory: Path) -> list[dict[str, Any]]:
    index = ShardIndex(image_dim + text_dim, image_dim=image_dim, initial_capacity=n)
    vectors = synthetic_vectors(n, image_dim, text_dim, seed=SEED)
    for start in range(0, n, FILL_BATCH):
        ids = [f"v{j}" for j in range(start, min(start + FILL_BATCH, n))]
        index.upsert(ids, vectors[start:start + FILL_BATCH], [ItemRecord(i, has_image=True) for i in ids])
    queries = vectors[np.random.default_rng(SEED).choice(n, 64, replace=False)]
    rows = []
    with Searcher(index, queries) as searcher:
        for way, write in (("in process", lambda: index.save(directory / "inproc.bin", "0-0", forked=False)),
                           ("forked child", lambda: index.save(directory / "forked.bin", "0-0"))):
            rows.append({"items": n, "way": way, **timed_write(searcher, write)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 25k only (a shard of 100k items over 4)")
    parser.add_argument("--sizes", default="25000,100000", help="items per shard, comma-separated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [25_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    settings = Settings.from_env()
    dims = check_models(settings, settings.image_model, settings.text_model)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as directory:
        for n in sizes:
            rows += measure(n, dims["image"], dims["text"], Path(directory))
    print(table(["items", "written", "write s", "searches meanwhile", "longest stall ms", "p99 ms"],
                [[r["items"], r["way"], r["write_s"], r["searches"], r["max_gap_ms"], r["p99_ms"]] for r in rows]))
    ratios = {}
    for n in sizes:
        stall = {r["way"]: r["max_gap_ms"] for r in rows if r["items"] == n}
        ratios[n] = round(stall["in process"] / stall["forked child"], 1)
        print(f"N={n}: longest search stall in process / forked: {ratios[n]}x")
    result = {"rows": rows, "stall_ratio": ratios}
    path = args.json or result_path("snapshot")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
