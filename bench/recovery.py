"""Recovery and read scale-out figures.

1. Time to recover a shard of `--vectors` (100,000) vectors from its snapshot plus the log
   after it: a snapshot covering all but the last `--log-entries` items (by default
   `snapshot_interval` of the shard at MMSEARCH_SNAPSHOT_EVERY's default: what a log holds past
   the newest snapshot just before the next one, 10000 at 100k vectors), and those items as
   entries in the shard's log in a real redis-server (AOF on). Measured twice: in process (`ShardOwner.refresh` loading the snapshot, then
   `step` until the log is drained), and as a real `python -m workers shard` process, from its
   start to its "caught up with the logs" line (imports, Redis, lease, load, replay).
   Each recovered index is checked: every item there, 200 random items found by their vectors.
2. Search throughput through HTTP with 1 and 2 copies of each shard: the whole stack with two
   shard slots, a two-shard collection of `--items` bulk vectors, `--clients` concurrent
   clients sending text searches; owners only, then with a read replica per slot
   (`python -m workers shard --replica --slot N`), then owners only again (this machine's
   speed drifts; the two owner-only runs bracket the replica run). The share of the shard
   searches that the replicas answered is read from the shard search histogram's `role` label.

    .venv/bin/python -m bench.recovery                  # both parts
    .venv/bin/python -m bench.recovery --skip-throughput --vectors 100000

Prints a table per part and, last, one JSON line with every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
import requests

from bench.bulk import bulk_insert, synthetic_vectors
from bench.service import free_port, latency_ms, running_stack, table
from shared.store import catalog
from shared.runtime import embedded_redis, metrics
from shared.runtime.config import Settings
from shared.index.shard_index import ShardIndex
from workers.shard_owner import SNAPSHOT, ShardOwner, snapshot_interval

ROOT = Path(__file__).resolve().parent.parent
IMAGE_DIM, TEXT_DIM = 1280, 50
BUILD_CHUNK = 10_000
WORDS = ("cat dog beach sunset mountain car bicycle flower tree river city night snow forest bird "
         "boat coffee cup table chair book guitar piano street market bridge castle horse cow "
         "sheep field road train plane sky cloud rain lake ocean wave rock sand desert garden "
         "kitchen bread fruit apple orange lemon").split()
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


# -- part 1: recovering a shard ------------------------------------------------------------------

def _build_snapshot(path: Path, vectors: np.ndarray, ids: list[str]) -> float:
    """Index the items the way an owner would, save the snapshot; seconds it took."""
    from shared.index.shard_index import ItemRecord

    t0 = time.perf_counter()
    index = ShardIndex(vectors.shape[1], image_dim=IMAGE_DIM, initial_capacity=len(ids))
    for start in range(0, len(ids), BUILD_CHUNK):
        part = ids[start:start + BUILD_CHUNK]
        index.upsert(part, vectors[start:start + len(part)], [ItemRecord(i) for i in part])
    index.save(path, "1-0")  # covers nothing of the log: every entry logged below is after it
    return time.perf_counter() - t0


def _check(index: ShardIndex, vectors: np.ndarray, ids: list[str], samples: int = 200) -> dict[str, Any]:
    picks = np.random.default_rng(5).choice(len(ids), size=min(samples, len(ids)), replace=False)
    found = sum(index.search(vectors[i], 1)[0].id == ids[i] for i in picks)
    return {"items": len(index), "self_top1": f"{found}/{len(picks)}"}


def _log_stamp(line: str) -> float:
    return datetime.strptime(_LOG_TIME.match(line)[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _process_recovery(env: dict[str, str], log_path: Path, timeout_s: float = 900) -> dict[str, float]:
    """Start `python -m workers shard --slot 0`; seconds from its start to its load and catch-up
    lines. Stopped with SIGTERM once it serves (it then snapshots what it replayed)."""
    started = time.time()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workers", "shard", "--slot", "0", "-c", "1"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            caught = [line for line in text.splitlines() if "caught up with the logs" in line]
            if caught:
                loaded = [line for line in text.splitlines() if "loaded snapshot" in line]
                owning = [line for line in text.splitlines() if "owning shard slot" in line]
                return {"process_to_lease_s": round(_log_stamp(owning[0]) - started, 2),
                        "process_to_loaded_s": round(_log_stamp(loaded[0]) - started, 2) if loaded else None,
                        "process_to_caught_up_s": round(_log_stamp(caught[0]) - started, 2)}
            if proc.poll() is not None:
                raise RuntimeError(f"the shard worker exited ({proc.returncode}); see {log_path}")
            time.sleep(0.1)
        raise TimeoutError(f"the shard worker did not catch up within {timeout_s}s; see {log_path}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def recovery(n: int, log_entries: int, work: Path) -> dict[str, Any]:
    port = free_port()
    server = subprocess.Popen(embedded_redis.server_command(work, port), stdout=subprocess.DEVNULL)
    try:
        embedded_redis.wait_until_up(port, proc=server)
        url = f"redis://127.0.0.1:{port}/0"
        r = redis.Redis.from_url(url)
        settings = Settings(redis_url=url, data_dir=work, shard_slots=1)
        coll = catalog.create_collection(r, settings, "recovery", shards=1)
        print(f"recovery: generating {n} vectors...", file=sys.stderr, flush=True)
        vectors = synthetic_vectors(n, IMAGE_DIM, TEXT_DIM, seed=1)
        ids = [f"item-{i}" for i in range(n)]
        covered = n - log_entries
        directory = settings.data_dir / "shards" / coll.cid / "0"
        directory.mkdir(parents=True)
        print(f"recovery: indexing {covered} items for the snapshot...", file=sys.stderr, flush=True)
        build_s = _build_snapshot(directory / SNAPSHOT, vectors[:covered], ids[:covered])
        t0 = time.perf_counter()
        if log_entries:
            bulk_insert(r, coll, vectors[covered:], ids[covered:])
        log_s = time.perf_counter() - t0

        print("recovery: recovering in process...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        owner = ShardOwner(0, settings, r)
        owner.refresh()  # loads the snapshot
        t1 = time.perf_counter()
        while owner.step(block_ms=None):
            pass
        t2 = time.perf_counter()
        check = _check(owner.get(coll.cid, 0).index, vectors, ids)
        if check["items"] != n:
            raise RuntimeError(f"recovered {check['items']} items of {n}")
        del owner

        snapshot_mb = round((directory / SNAPSHOT).stat().st_size / 2**20, 1)
        print("recovery: recovering as a shard worker process...", file=sys.stderr, flush=True)
        env = dict(os.environ)
        env.pop("REDIS_URL", None)
        env.update({"MMSEARCH_DATA_DIR": str(work), "MMSEARCH_REDIS_PORT": str(port), "MMSEARCH_SHARDS": "1",
                    "MMSEARCH_LOG_LEVEL": "INFO"})
        process = _process_recovery(env, work / "shard.log")
        return {"vectors": n, "snapshot_items": covered, "log_entries": log_entries,
                "snapshot_mb": snapshot_mb,
                "build_snapshot_s": round(build_s, 1), "write_log_s": round(log_s, 1),
                "load_snapshot_s": round(t1 - t0, 2), "replay_log_s": round(t2 - t1, 2),
                "recover_s": round(t2 - t0, 2),
                "replay_entries_per_s": round(log_entries / (t2 - t1)) if log_entries else None,
                **process, "check": check}
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- part 2: search throughput with replicas -----------------------------------------------------

def _measure(url: str, clients: int, total: int) -> dict[str, Any]:
    latencies: list[float] = []
    partial = 0
    lock = threading.Lock()

    def client(first: int) -> None:
        nonlocal partial
        with requests.Session() as session:
            for i in range(first, total, clients):
                t0 = time.perf_counter()
                resp = session.post(url, json={"text": WORDS[i % len(WORDS)], "k": 10}, timeout=60)
                elapsed = time.perf_counter() - t0
                resp.raise_for_status()
                shards = resp.json()["shards"]
                with lock:
                    latencies.append(elapsed)
                    partial += shards["answered"] < shards["total"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {"queries": total, "qps": round(total / wall, 1), **latency_ms(latencies), "partial": partial}


def _wait_log(path: Path, pattern: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and re.search(pattern, path.read_text(errors="replace"))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name}: no {pattern!r} within {timeout_s}s")
        time.sleep(0.2)


def _searches_by_role(r: Any, cid: str) -> Counter[str]:
    """How many shard searches of a collection the owners and the replicas have answered so far
    (the `role` label of the shard search histogram)."""
    counts: Counter[str] = Counter()
    for (label_cid, _shard, role), value in metrics.SHARD_SEARCH_HISTOGRAM.read(r).items():
        if label_cid == cid:
            counts[role] += int(value.count)
    return counts


def _replica_share(before: Counter[str], after: Counter[str]) -> float | None:
    """The share of the shard searches between two counts that a replica answered."""
    done = after - before
    total = sum(done.values())
    return round(done["replica"] / total, 3) if total else None


def throughput(items: int, clients: int, queries: int) -> dict[str, Any]:
    with running_stack(slots=2, env={"MMSEARCH_SEARCH_TIMEOUT_S": "60"}) as svc:
        svc.create_collection("scale", shards=2)
        coll = catalog.get_collection(svc.redis, "scale")
        print(f"throughput: inserting {items} vectors...", file=sys.stderr, flush=True)
        vectors = synthetic_vectors(items, IMAGE_DIM, TEXT_DIM, seed=2)
        job = bulk_insert(svc.redis, coll, vectors, [f"v{i}" for i in range(items)])
        svc.wait_jobs([job], timeout_s=3600, poll_s=0.5)
        time.sleep(3)  # the owners snapshot when idle: the replicas start from those snapshots
        url = f"{svc.url}/collections/scale/search"
        _measure(url, clients, max(clients * 5, 20))  # warm-up
        runs: dict[str, Any] = {}

        def run(name: str) -> None:
            print(f"throughput: {name}...", file=sys.stderr, flush=True)
            before = _searches_by_role(svc.redis, coll.cid)
            runs[name] = _measure(url, clients, queries)
            runs[name]["replica_share"] = _replica_share(before, _searches_by_role(svc.redis, coll.cid))

        run("1 copy (owners)")
        for n in (1, 2):
            svc.stack.start_process(f"replica.{n}")
        for n in (1, 2):
            _wait_log(svc.log_dir / f"replica.{n}.log", r"caught up with the logs", 600)
        _measure(url, clients, max(clients * 5, 20))  # warm-up of the replicas
        run("2 copies (owner + replica)")
        for n in (1, 2):
            svc.stack.signal(f"replica.{n}", signal.SIGTERM, group=False)
        for n in (1, 2):
            svc.stack.procs[f"replica.{n}"].wait(timeout=60)
        time.sleep(6)  # their leases lapse, nobody waits on them
        run("1 copy again (owners)")
        return {"items": items, "shards": 2, "clients": clients, "cpus": os.cpu_count(), "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in the recovered shard")
    parser.add_argument("--log-entries", type=int, default=None,
                        help="of them, entries in the log after the snapshot (default: the snapshot interval)")
    parser.add_argument("--items", type=int, default=20_000, help="vectors in the throughput collection")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--queries", type=int, default=400, help="searches per throughput run")
    parser.add_argument("--skip-recovery", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    if args.log_entries is None:
        args.log_entries = snapshot_interval(args.vectors, Settings().snapshot_every)
    out: dict[str, Any] = {"cpus": os.cpu_count()}
    if not args.skip_recovery:
        with tempfile.TemporaryDirectory(prefix="mmsearch-recovery-") as work:
            rec = recovery(args.vectors, args.log_entries, Path(work))
        out["recovery"] = rec
        print(f"\nRecovering one shard of {rec['vectors']} vectors ({IMAGE_DIM}+{TEXT_DIM} d): "
              f"snapshot of {rec['snapshot_items']} items ({rec['snapshot_mb']} MB) + {rec['log_entries']} log entries")
        print(table(["step", "seconds"], [
            ["load + verify snapshot (in process)", rec["load_snapshot_s"]],
            ["replay log (in process)", rec["replay_log_s"]],
            ["recover, in process", rec["recover_s"]],
            ["worker process: start -> lease", rec["process_to_lease_s"]],
            ["worker process: start -> snapshot loaded", rec["process_to_loaded_s"]],
            ["worker process: start -> caught up, serving", rec["process_to_caught_up_s"]],
        ]))
        print(f"replay: {rec['replay_entries_per_s']} entries/s; check: {rec['check']}")
    if not args.skip_throughput:
        thr = throughput(args.items, args.clients, args.queries)
        out["throughput"] = thr
        print(f"\nSearch throughput over HTTP: {thr['items']} vectors in 2 shards (one per slot), "
              f"{thr['clients']} clients, text queries, k=10, {thr['cpus']} CPUs")
        print(table(["copies per shard", "qps", "p50 ms", "p95 ms", "partial", "replica share"], [
            [name, r["qps"], r["p50_ms"], r["p95_ms"], r["partial"], r["replica_share"]]
            for name, r in thr["runs"].items()]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
