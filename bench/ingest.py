"""End-to-end ingest throughput of the real stack against the in-process pipeline:
`python -m bench.ingest [--quick]`.

Starts the whole stack (`bench.service.running_stack`: embedded Redis, gunicorn API, encode,
query and 2 shard workers, temporary data dir, free ports), then for each photo set
(`bench.ingest_sets`: photos500, mixed 1024-px JPEGs and captioned PNG cut-outs, wallpapers)
alternates, `rounds` times, the ceiling and the end-to-end run on the same items, so that the
machine's drift falls on both alike:
- ceiling: `bench.pipeline` in this process while the stack is idle (decode threads running
  ahead of the model, the image model as the encode worker runs it, text model, fuse, upsert into
  real ShardIndexes), on the same cores;
- end to end: a new 2-shard collection, items in multipart requests of up to 64 images (and at
  most 32 MB) sent one after another as fast as the API takes them, items/s from the first POST
  until every job is final (each item encoded, logged and applied by its shard: searchable).
A set's figures are the means over its rounds, and ratio = e2e / ceiling.

Where the time went comes from the encode worker's log (Celery's per-task runtimes): the
task-seconds summed and the mean number of tasks in flight. Where the CPU went: the cores each
stack process used on average during the end-to-end runs (with its children: gunicorn's
workers, redis-server and its AOF rewrites, snapshot writers), this bench process's (the
client) and the machine's idle cores.

The last line of output is one JSON object: `e2e_items_per_s`, `ceiling_items_per_s` and
`ratio` for photos500, and every set's details (per round too); the same object is written to
--json (default bench/results/ingest-<UTC time>.json), which `bench.report` plots.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from bench.datasets import note
from bench.ingest_sets import mixed_set, photos500, wallpaper_set
from bench.pipeline import pipeline_rate
from bench.service import Service, TaskLog, Upload, machine_idle_seconds, running_stack, runtimes, table, write_results

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the workers set it, before torch loads
# The stack's workers (temporary data dir) and this process share one compile cache across runs.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath("bench/data/torch-compile-cache"))

IMAGE_MODEL = "efficientnet_lite0"
REQUEST_ITEMS = 64
REQUEST_BYTES = 32 * 2**20
SHARDS = 2
ENCODE_TASK = "mmsearch.encode_items"


def request_batches(items: list[Upload]) -> list[list[Upload]]:
    """Consecutive requests of at most REQUEST_ITEMS items and REQUEST_BYTES image bytes."""
    batches: list[list[Upload]] = [[]]
    size = 0
    for item in items:
        if batches[-1] and (len(batches[-1]) == REQUEST_ITEMS or size + len(item.image) > REQUEST_BYTES):
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += len(item.image)
    return batches


def end_to_end(svc: Service, name: str, items: list[Upload]) -> dict[str, Any]:
    """POST every batch, poll the jobs until final; throughput and the time line."""
    svc.create_collection(name, SHARDS)
    tasks = TaskLog(svc.log_dir)
    tasks.mark()
    cpu_before, idle_before = svc.cpu_seconds(), machine_idle_seconds()
    t0 = time.perf_counter()
    job_ids = [svc.post_items(name, batch) for batch in request_batches(items)]
    posted = time.perf_counter() - t0
    timings = svc.wait_jobs(job_ids, timeout_s=900)
    wall = time.perf_counter() - t0
    cpu_after, idle_after = svc.cpu_seconds(), machine_idle_seconds()
    counted = max(t.counted_s for t in timings.values()) - t0
    final = max(t.final_s for t in timings.values()) - t0
    failed = sum(t.body["failed"] for t in timings.values())
    if failed:
        note(f"{name}: {failed} item(s) failed: {next(t.body['errors'] for t in timings.values() if t.body['errors'])[:2]}")
    encode_runs = runtimes(tasks.since_mark()).get(ENCODE_TASK, [])
    task_s = sum(encode_runs)
    count = svc.collection(name)["count"]
    if count != len(items) - failed:
        note(f"{name}: the collection counts {count} items after {len(items) - failed} succeeded")
    return {"items": len(items), "requests": len(job_ids), "mb": round(sum(len(i.image) for i in items) / 1e6, 1),
            "failed": failed, "e2e_items_per_s": round(len(items) / final, 2),
            "posted_s": round(posted, 2), "counted_s": round(counted, 2), "final_s": round(final, 2),
            "encode_tasks": len(encode_runs), "encode_task_s": round(task_s, 2),
            "encode_tasks_in_flight": round(task_s / final, 2),
            "cores_used": {proc: round((cpu_after[proc] - cpu_before[proc]) / wall, 2) for proc in sorted(cpu_after)},
            "cores_idle": round((idle_after - idle_before) / wall, 2)}


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2)


def interleaved(svc: Service, encoder: Any, name: str, items: list[Upload], rounds: int) -> dict[str, Any]:
    """Ceiling, end to end, ceiling, end to end ... on the same items; the means, their ratio, and
    the last end-to-end run's details (time line, CPU)."""
    ceilings, e2e_runs = [], []
    for r in range(rounds):
        ceilings.append(round(pipeline_rate(encoder, items, SHARDS), 2))
        e2e_runs.append(end_to_end(svc, f"bench-{name}-{r}", items))
    result = e2e_runs[-1]
    result.update({"e2e_rounds_items_per_s": [run["e2e_items_per_s"] for run in e2e_runs],
                   "ceiling_rounds_items_per_s": ceilings,
                   "e2e_items_per_s": mean([run["e2e_items_per_s"] for run in e2e_runs]),
                   "ceiling_items_per_s": mean(ceilings)})
    result["ratio"] = round(result["e2e_items_per_s"] / result["ceiling_items_per_s"], 3)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds (a few minutes)")
    parser.add_argument("--json", type=Path, help="where to write the result JSON "
                        "(default: bench/results/ingest-<UTC time>.json)")
    args = parser.parse_args(argv)

    sets = {"photos500": photos500(520), "mixed": mixed_set(64 if args.quick else 256),
            "wallpapers": wallpaper_set(1 if args.quick else 3)}
    for name in [n for n, items in sets.items() if not items]:
        note(f"photo set {name} is empty; skipped")
        del sets[name]
    rounds = 2 if args.quick else 3
    results: dict[str, dict[str, Any]] = {}
    with running_stack(slots=SHARDS) as svc:
        # Warm-up: the encode worker loads its models on its first task.
        svc.create_collection("warmup", SHARDS)
        svc.ingest("warmup", sets["photos500"][:16])

        from shared.encoding.encoders import collection_encoder
        from shared.encoding.precision import resolve_precision
        from shared.runtime.config import get_settings

        # The collection's encoder as the encode worker runs it: same precision, compiled or not alike.
        settings = get_settings()
        encoder = collection_encoder(IMAGE_MODEL, settings.text_model, resolve_precision(None, settings.precision))
        encoder.image_model.warm_up()
        pipeline_rate(encoder, sets["photos500"][:32], SHARDS)  # warm-up: threads, text model, allocator
        for name, items in sets.items():
            results[name] = interleaved(svc, encoder, name, items, rounds)

    model = encoder.image_model.model
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"\n== ingest through the HTTP API vs the in-process pipeline ({SHARDS} shards, {IMAGE_MODEL} "
          f"{model.precision}{' compiled' if model.compiled else ''} on {model.device}, {os.cpu_count()} cores, "
          f"{rounds} interleaved rounds, means)")
    print(table(["set", "items", "MB", "e2e/s", "ceiling/s", "e2e/ceiling", "e2e rounds", "ceiling rounds"],
                [[n, r["items"], r["mb"], r["e2e_items_per_s"], r["ceiling_items_per_s"], r["ratio"],
                  " ".join(map(str, r["e2e_rounds_items_per_s"])), " ".join(map(str, r["ceiling_rounds_items_per_s"]))]
                 for n, r in results.items()]))
    print("\n== where the time went in the last end-to-end round (seconds from the first POST; encode: Celery"
          " task runtimes)")
    print(table(["set", "requests", "all posted", "all counted", "all final", "encode tasks", "task-s",
                 "in flight"],
                [[n, r["requests"], r["posted_s"], r["counted_s"], r["final_s"], r["encode_tasks"],
                  r["encode_task_s"], r["encode_tasks_in_flight"]]
                 for n, r in results.items()]))
    print("\n== CPU during the last end-to-end round (cores busy on average: each stack process with its children,"
          " this bench process, and the machine's idle)")
    procs = sorted({proc for r in results.values() for proc in r["cores_used"]})
    print(table(["set", *procs, "idle"],
                [[n, *(r["cores_used"].get(proc) for proc in procs), r["cores_idle"]] for n, r in results.items()]))
    print(f"\nload average at the end (other processes share these cores): {load}")
    headline = results["photos500"]
    summary = {"e2e_items_per_s": headline["e2e_items_per_s"], "ceiling_items_per_s": headline["ceiling_items_per_s"],
               "ratio": headline["ratio"], "ratios": {n: r["ratio"] for n, r in results.items()}, "quick": args.quick, "cores": os.cpu_count(), "shards": SHARDS,
               "model": IMAGE_MODEL, "load_average": load, "sets": results}
    write_results(summary, "ingest", args.json)


if __name__ == "__main__":
    main()
