"""End-to-end ingest throughput of the real stack: `python -m bench.ingest [--quick]`.

Starts the whole stack (`bench.service.running_stack`: embedded Redis, gunicorn API, encode,
query and 2 shard workers, temporary data dir, free ports), then for each photo set creates a
2-shard collection and measures items/s from the first POST to the moment every job is final
(each item encoded, logged and applied by its shard, i.e. searchable). Items go in multipart
requests of up to 64 images (and at most 32 MB), sent one after another as fast as the API
takes them, then the jobs are polled.

Sets, all held in memory:
- photos500: foolbox's, scikit-image's and opencv-doc's photos scaled to 500 px on the long
  side and re-encoded as JPEG quality 90, repeated under distinct ids to 520 items;
- wallpapers: the Plasma wallpapers' JPEGs (2560x1600 to 5120x2880; `make bench-data`), 18
  items (54 in the full run, each file three times under distinct ids).

Ceilings, measured in this process while the stack is idle (after a warm-up ingest, before the
end-to-end runs): decode only (`decode_image` + `resize_for_model` over the same bytes in a
2-thread pool, both cores) and model only (`efficientnet_lite0` `encode` on pre-decoded 224x224
images, batches of 8, in the precision and compile mode the service uses), the faster of two
layouts: as the workers run it (one single-threaded call per core at once) and one call at a
time on every core. "serial" is 1 / (1/decode + 1/model), what an encode worker that decodes a
batch and then encodes it can reach. Where the time went comes from the encode worker's log
(Celery's per-task runtimes): the task-seconds summed and the mean number of tasks in flight
(task-seconds / wall time; the worker runs several tasks at once and batches their images).
Where the CPU went: the cores each stack process used on average during the end-to-end run
(with its children: gunicorn's workers, redis-server and its AOF rewrites, snapshot writers),
this bench process's (the client) and the machine's idle cores.

The figures vary with the machine's load (compare ratios of one run only). The last line of
output is one JSON object: `e2e_items_per_s`, `ceiling_items_per_s` (the smaller ceiling) and
`ratio` for photos500, and every set's details; the same object is written to --json (default
bench/results/ingest-<UTC time>.json), which `bench.report` plots.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.datasets import note, wallpapers
from bench.modelrun import encode_all, layouts, torch_threads
from bench.service import (Service, TaskLog, Upload, jpeg_with_long_side, machine_idle_seconds, real_photos,
                           running_stack, runtimes, table, write_results)
from shared.encoding.imagedecode import decode_image, resize_for_model

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the workers set it, before torch loads
# The stack's workers (temporary data dir) and this process share one compile cache across runs.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.abspath("bench/data/torch-compile-cache"))

IMAGE_MODEL = "efficientnet_lite0"
MODEL_BATCH = 8
REQUEST_ITEMS = 64
REQUEST_BYTES = 32 * 2**20
SHARDS = 2
ENCODE_TASK = "mmsearch.encode_items"


def photos500(count: int) -> list[Upload]:
    """The real photos at 500 px (JPEG q90), repeated under distinct ids to `count` items."""
    distinct = [(p.name, jpeg_with_long_side(p.read_bytes(), 500)) for p in real_photos()]
    return [Upload(f"{distinct[i % len(distinct)][0]}-{i}", distinct[i % len(distinct)][1]) for i in range(count)]


def wallpaper_set(copies: int) -> list[Upload]:
    """Each Plasma wallpaper JPEG `copies` times under distinct ids (empty without bench data)."""
    files = [(p.name, p.read_bytes()) for p in wallpapers("largest")]
    return [Upload(f"{name}-{c}", data) for c in range(copies) for name, data in files]


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


def best_rate(run: Callable[[], None], items: int, rounds: int) -> float:
    """Items/s of the fastest of `rounds` runs (the least disturbed by other processes)."""
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - t0))
    return max(rates)


def decode_ceiling(items: list[Upload], size: int, rounds: int) -> float:
    """Decode + model resize over the items' bytes in a 2-thread pool; items/s."""
    def run() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda item: resize_for_model(decode_image(item.image), size), items))
    return best_rate(run, len(items), rounds)


def model_ceilings(model: Any, images: list[np.ndarray], count: int, rounds: int) -> dict[str, float]:
    """`model.encode` over `count` pre-decoded images in batches of MODEL_BATCH, in each layout
    of `bench.modelrun.layouts` (the service's, and one call on every core); items/s."""
    batches = [[images[(start + j) % len(images)] for j in range(MODEL_BATCH)]
               for start in range(0, count, MODEL_BATCH)]
    rates = {}
    for name, (streams, threads) in layouts(model).items():
        with torch_threads(threads):
            encode_all(model, batches[:streams], streams)  # warm-up
            rates[name] = round(best_rate(lambda: encode_all(model, batches, streams),
                                          len(batches) * MODEL_BATCH, rounds), 1)
    return rates


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer wallpapers and rounds (about 3 minutes)")
    parser.add_argument("--json", type=Path, help="where to write the result JSON "
                        "(default: bench/results/ingest-<UTC time>.json)")
    args = parser.parse_args(argv)

    sets = {"photos500": photos500(520), "wallpapers": wallpaper_set(1 if args.quick else 3)}
    for name in [n for n, items in sets.items() if not items]:
        note(f"photo set {name} is empty; skipped")
        del sets[name]
    rounds = 2 if args.quick else 3
    results: dict[str, dict[str, Any]] = {}
    with running_stack(slots=SHARDS) as svc:
        # Warm-up: the encode worker loads its models on its first task.
        svc.create_collection("warmup", SHARDS)
        svc.ingest("warmup", sets["photos500"][:MODEL_BATCH])

        from shared.runtime.config import get_settings
        from shared.encoding.image_models import create_image_model
        from shared.encoding.precision import resolve_precision

        # The model as the encode worker runs it: the collection's precision, compiled or not alike.
        model = create_image_model(IMAGE_MODEL, resolve_precision(None, get_settings().precision))
        model.warm_up()
        size = model.input_size
        decoded = [resize_for_model(decode_image(item.image), size) for item in sets["photos500"][:64]]
        model_rates = model_ceilings(model, decoded, 160 if args.quick else 520, rounds)
        model_rate = max(model_rates.values())  # the machine's ceiling: the faster layout
        for name, items in sets.items():
            decode_rate = decode_ceiling(items, size, rounds + 1)
            results[name] = {"decode_items_per_s": round(decode_rate, 1), "model_items_per_s": round(model_rate, 1),
                             "model_layouts_items_per_s": model_rates,
                             "ceiling_items_per_s": round(min(decode_rate, model_rate), 1),
                             "serial_ceiling_items_per_s": round(1 / (1 / decode_rate + 1 / model_rate), 1)}
        for name, items in sets.items():
            results[name].update(end_to_end(svc, f"bench-{name}", items))
            results[name]["ratio"] = round(results[name]["e2e_items_per_s"] / results[name]["ceiling_items_per_s"], 3)
            results[name]["ratio_to_serial"] = round(
                results[name]["e2e_items_per_s"] / results[name]["serial_ceiling_items_per_s"], 3)

    load = [round(x, 2) for x in os.getloadavg()]
    print(f"\n== ingest through the HTTP API ({SHARDS} shard workers, {IMAGE_MODEL} {model.precision}{' compiled' if model.compiled else ''} on "
          f"{model.device}, {os.cpu_count()} cores; model/s: the faster of "
          + ", ".join(f"{name} calls {rate}/s" for name, rate in model_rates.items()) + ")")
    print(table(["set", "items", "MB", "e2e/s", "decode/s", "model/s", "min ceil/s", "serial/s",
                 "e2e/min", "e2e/serial"],
                [[n, r["items"], r["mb"], r["e2e_items_per_s"], r["decode_items_per_s"], r["model_items_per_s"],
                  r["ceiling_items_per_s"], r["serial_ceiling_items_per_s"], r["ratio"], r["ratio_to_serial"]]
                 for n, r in results.items()]))
    print("\n== where the time went (seconds from the first POST; encode: Celery task runtimes)")
    print(table(["set", "requests", "all posted", "all counted", "all final", "encode tasks", "task-s",
                 "in flight"],
                [[n, r["requests"], r["posted_s"], r["counted_s"], r["final_s"], r["encode_tasks"],
                  r["encode_task_s"], r["encode_tasks_in_flight"]]
                 for n, r in results.items()]))
    print("\n== CPU during the end-to-end runs (cores busy on average: each stack process with its children,"
          " this bench process, and the machine's idle)")
    procs = sorted({proc for r in results.values() for proc in r["cores_used"]})
    print(table(["set", *procs, "idle"],
                [[n, *(r["cores_used"].get(proc) for proc in procs), r["cores_idle"]] for n, r in results.items()]))
    print(f"\nload average at the end (other processes share these cores): {load}")
    headline = results["photos500"]
    summary = {"e2e_items_per_s": headline["e2e_items_per_s"], "ceiling_items_per_s": headline["ceiling_items_per_s"],
               "ratio": headline["ratio"], "quick": args.quick, "cores": os.cpu_count(), "shards": SHARDS,
               "model": IMAGE_MODEL, "load_average": load, "sets": results}
    write_results(summary, "ingest", args.json)


if __name__ == "__main__":
    main()
