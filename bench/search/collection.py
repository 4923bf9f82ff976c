"""A collection of the search benchmark: filled through the service (bulk vectors and photos),
or found filled (or half filled) by an earlier run on the same `--data-dir`, waited on until its
shards have snapshotted, its shard workers' memory, and whether one fits."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from bench.bulk import bulk_insert
from bench.photos import Photo
from bench.search.timing import role_cpu_seconds
from bench.service import Service, Upload
from shared.store import keys
from shared.store.catalog import Collection, get_collection


PROGRESS_S = 60.0  # how often a fill prints how far it is
STALL_S = 600.0  # a fill whose count stands still this long has stopped
QUIET_S = 5.0  # shard workers count as quiet once they have used under QUIET_CPU a second this long
QUIET_CPU = 0.1  # CPU seconds a second (a tenth of a core; idle workers poll their logs and leases)


def fill(svc: Service, name: str, vectors: np.ndarray, ids: list[str], metadata: list[dict[str, Any]],
         photos: list[Photo], timeout_s: float, note: Callable[[str], None]) -> float:
    """Bulk-insert the synthetic items (with their metadata) into the (empty) collection, ingest
    the photos; seconds until both jobs were final (progress printed every PROGRESS_S)."""
    coll: Collection = get_collection(svc.redis, name)
    t0 = time.perf_counter()
    bulk_job = bulk_insert(svc.redis, coll, vectors, ids, metadata=metadata)
    photo_job = post_photos(svc, name, photos)
    total = len(ids) + len(photos)
    wait_searchable(svc, name, total, timeout_s - (time.perf_counter() - t0), note)
    timings = svc.wait_jobs([bulk_job, photo_job], timeout_s=max(60.0, timeout_s - (time.perf_counter() - t0)),
                            poll_s=0.5)
    seconds = max(t.final_s for t in timings.values()) - t0
    states = {t.body["state"] for t in timings.values()}
    count = svc.collection(name)["count"]
    if states != {"succeeded"} or count != total:
        raise RuntimeError(f"filling {name}: jobs {states}, {count} items searchable of {total}")
    return seconds


def post_photos(svc: Service, name: str, photos: list[Photo]) -> str:
    """Ingest the photos through the API in one request; the job id."""
    return svc.post_items(name, [Upload(p.name, p.read_bytes()) for p in photos])


def resume(svc: Service, name: str, vectors: np.ndarray, ids: list[str], metadata: list[dict[str, Any]],
           photos: list[Photo], timeout_s: float, note: Callable[[str], None]) -> None:
    """Finish the fill of a collection that an earlier run left (done, or stopped while logging
    or applying): the items its bulk job had not yet logged are logged under it (as bench.bulk
    resumes), the photos ingested when no job of theirs was accepted, and the collection waited
    on until it is whole. A bulk job with failed items (reaped as stalled, say) cannot be
    finished: RuntimeError."""
    jobs = svc.jobs_of(name, "ingest")
    bulk = next((job for job in jobs if job["total"] == len(ids)), None)
    if bulk is not None and bulk["failed"]:
        raise RuntimeError(f"{name}: the earlier run's bulk job failed {bulk['failed']:,} items, which a "
                           "resumed fill cannot log again; delete the --data-dir to fill afresh")
    if bulk is None or bulk["done"] < bulk["total"]:
        note(f"{name}: logging the items the bulk job had not ({bulk['done'] if bulk else 0:,} of {len(ids):,} logged)")
        bulk_insert(svc.redis, get_collection(svc.redis, name), vectors, ids, metadata=metadata,
                    job_id=bulk["id"] if bulk else None)
    if not any(job["total"] == len(photos) for job in jobs):
        post_photos(svc, name, photos)
    wait_searchable(svc, name, len(ids) + len(photos), timeout_s, note)


def wait_searchable(svc: Service, name: str, total: int, timeout_s: float, note: Callable[[str], None]) -> None:
    """Wait until the collection counts `total` items, printing its count and rate every
    PROGRESS_S; TimeoutError after `timeout_s`, or once the count stood still for STALL_S."""
    start = time.monotonic()
    mark_t = moved_t = start  # when the last progress line was printed / the count last moved
    mark = last = svc.collection(name)["count"]
    while (count := svc.collection(name)["count"]) < total:
        now = time.monotonic()
        if count != last:
            moved_t, last = now, count
        if now - start > timeout_s or now - moved_t > STALL_S:
            raise TimeoutError(f"{name}: {count:,} of {total:,} items searchable after {now - start:.0f} s")
        if now - mark_t >= PROGRESS_S:
            note(f"{name}: {count:,} of {total:,} items searchable "
                 f"({(count - mark) / (now - mark_t):.0f}/s over the last {now - mark_t:.0f} s)")
            mark_t, mark = now, count
        time.sleep(1.0)


def settle(svc: Service, name: str, timeout_s: float = 600) -> float:
    """Seconds until every shard of the collection has a snapshot of all it applied and the
    shard workers have gone quiet: once the writes stop, a shard snapshots, and one that grew
    since it last measured its search tuning measures it again and snapshots once more
    (`ShardIndex.settle`); searches meanwhile would share the disk and the cores with them."""
    coll: Collection = get_collection(svc.redis, name)
    t0 = time.perf_counter()
    while True:
        states = [svc.redis.hgetall(keys.shard_state(coll.cid, shard)) for shard in range(coll.shards)]
        if all(b"applied" in state and state.get(b"snapshot") == state[b"applied"] for state in states):
            break
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"{name}: the shards did not snapshot what they applied within {timeout_s:g} s")
        time.sleep(0.2)
    quiet_since, used = time.perf_counter(), role_cpu_seconds(svc)["shard"]
    while time.perf_counter() - quiet_since < QUIET_S:
        time.sleep(1.0)
        before, used = used, role_cpu_seconds(svc)["shard"]
        if used - before > QUIET_CPU:
            quiet_since = time.perf_counter()
        if time.perf_counter() - t0 > timeout_s:
            raise RuntimeError(f"{name}: the shard workers did not go quiet within {timeout_s:g} s")
    return time.perf_counter() - t0


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
