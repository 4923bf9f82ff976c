"""How soon one small write is done, as a client sees it: `python -m bench.ingest_latency [--rounds N]`.

Starts the whole stack (`bench.service.running_stack`, 2 shard workers) and a 2-shard
collection, ingests one photo to warm it up, then per round (default 30), one after another:
- a 1-photo multipart ingest, its job polled every 10 ms until final (final means encoded,
  logged and applied by its shard: searchable);
- the same with one long-poll `GET /v1/jobs/{id}?wait=30` instead of polling;
- a delete of that item by id, polled every 10 ms;
- an ingest of bytes that are no image (the item fails), polled every 10 ms;
- `mmsearch ingest` of one photo file, the whole command's wall time (its Python start-up
  included), every 5th round.
Each figure is from sending the request until the client knows the job is final: p50/p95 ms
per kind. The last line of output is one JSON object of them.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from bench.service import FINAL_STATES, Service, Upload, latency_ms, real_photos, running_stack, table, write_results

POLL_S = 0.01
COLLECTION = "latency"


def until_final(svc: Service, job_id: str, started: float) -> float:
    """Seconds from `started` until a poll every POLL_S finds the job final."""
    while svc.job(job_id)["state"] not in FINAL_STATES:
        time.sleep(POLL_S)
    return time.perf_counter() - started


def ingest_one(svc: Service, item_id: str, data: bytes) -> tuple[str, float]:
    """A 1-item multipart ingest; the job id and when the request was sent."""
    started = time.perf_counter()
    return svc.post_items(COLLECTION, [Upload(item_id, data)]), started


def delete_one(svc: Service, item_id: str) -> tuple[str, float]:
    """A delete of one id; the job id and when the request was sent."""
    started = time.perf_counter()
    resp = svc.session.post(f"{svc.url}/collections/{COLLECTION}/items/delete", json={"ids": [item_id]}, timeout=60)
    if resp.status_code != 202:
        raise RuntimeError(f"delete: {resp.status_code} {resp.text[:300]}")
    return resp.json()["job_id"], started


def cli_ingest(svc: Service, photo: bytes, folder: Path, n: int) -> float:
    """Wall seconds of `mmsearch ingest` of one photo file into the collection."""
    path = folder / f"cli-{n}.jpg"
    path.write_bytes(photo)
    cli = Path(sys.executable).with_name("mmsearch")
    started = time.perf_counter()
    subprocess.run([str(cli), "--api", svc.stack.api_url, "ingest", str(path), "--collection", COLLECTION],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    photos = [p.read_bytes() for p in real_photos()]
    seconds: dict[str, list[float]] = {"ingest, polled": [], "ingest, long-poll": [], "delete, polled": [],
                                       "bad image, polled": [], "mmsearch ingest (CLI)": []}
    with running_stack() as svc, tempfile.TemporaryDirectory() as folder:
        svc.create_collection(COLLECTION, 2)
        job_id, started = ingest_one(svc, "warm-up", photos[0])
        until_final(svc, job_id, started)
        for n in range(args.rounds):
            photo = photos[n % len(photos)]
            job_id, started = ingest_one(svc, f"p{n}", photo)
            seconds["ingest, polled"].append(until_final(svc, job_id, started))
            job_id, started = ingest_one(svc, f"w{n}", photo)
            body = svc.session.get(f"{svc.url}/jobs/{job_id}", params={"wait": 30}, timeout=60).json()
            if body["state"] not in FINAL_STATES:
                raise RuntimeError(f"a 30 s long-poll answered {body['state']}")
            seconds["ingest, long-poll"].append(time.perf_counter() - started)
            job_id, started = delete_one(svc, f"p{n}")
            seconds["delete, polled"].append(until_final(svc, job_id, started))
            job_id, started = ingest_one(svc, f"bad{n}", b"this is no image" * 8)
            seconds["bad image, polled"].append(until_final(svc, job_id, started))
            if n % 5 == 0:
                seconds["mmsearch ingest (CLI)"].append(cli_ingest(svc, photo, Path(folder), n))
    figures = {kind: latency_ms(values) for kind, values in seconds.items()}
    print(table(["kind", "n", "p50 ms", "p95 ms"],
                [[kind, len(seconds[kind]), f["p50_ms"], f["p95_ms"]] for kind, f in figures.items()]))
    write_results({"rounds": args.rounds, "poll_s": POLL_S, "kinds": figures}, "ingest_latency")


if __name__ == "__main__":
    main()
