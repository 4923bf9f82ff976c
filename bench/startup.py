"""Start-up benchmark: `python -m bench.startup [--starts N] [--data-dir DIR]`.

Starts the stack as `make up` does (the Procfile's processes at the default settings, models
compiled) on one data dir, N times (default 2), stopping it in between. The first start on a
new data dir compiles the image model; later ones find what it left there (the compile cache,
the collections, the shards' snapshots). For each start it gives the seconds from starting the
processes until:

- `/readyz` answers 200 (the stack's own readiness: what `mmsearch up` waits for);
- a text search and then an image search (a foolbox photo) have answered; a search that fails
  once `/readyz` said 200 is counted as a readiness lie and stops the run.

The first start creates a collection and ingests one photo, so that the later searches read a
shard; each role's start-up stages come from its log. The last line of output is one JSON object
with every figure.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.photos import foolbox_photos
from bench.service import Service, Upload, table, write_results
from shared.runtime.stack import Stack
from tests.support.stack import stack_env

COLLECTION = "startup"


def one_start(data_dir: Path, env: dict[str, str], first: bool) -> dict[str, Any]:
    """Start the stack, time readiness and the first searches, stop it; the figures."""
    stack = Stack(env, log_dir=data_dir / "logs")
    started = time.monotonic()
    try:
        stack.start()
        stack.wait_ready(timeout_s=900, progress=lambda line: print(f"  {line}", flush=True))
        ready_s = time.monotonic() - started
        service = Service(stack, data_dir)
        photo = foolbox_photos()[0].read_bytes()
        if first:
            service.create_collection(COLLECTION, shards=stack.settings.shard_slots)
            service.ingest(COLLECTION, [Upload("photo", photo, "a photo")])
        session = requests.Session()
        text_ms, _ = service.search(session, COLLECTION, text="a photo")
        text_s = time.monotonic() - started
        image_ms, _ = service.search(session, COLLECTION, image=photo)
        image_s = time.monotonic() - started
    finally:
        stack.stop()
    return {"ready_s": round(ready_s, 1), "text_search_s": round(text_s, 1),
            "image_search_s": round(image_s, 1), "first_text_ms": round(text_ms * 1000, 1),
            "first_image_ms": round(image_ms * 1000, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=2, help="starts on the same data dir (default 2)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the data dir, kept afterwards (default: a new temporary one, deleted)")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="mmsearch-startup-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = (data_dir / "torch-compile-cache").exists()
    # `make up`'s settings: the default shard slots and compiled models; private ports.
    env = stack_env(data_dir, MMSEARCH_COMPILE="true", MMSEARCH_SHARDS=str(Stack({}).settings.shard_slots),
                    MMSEARCH_LOG_LEVEL="INFO")
    try:
        starts = []
        for n in range(args.starts):
            print(f"start {n + 1}", flush=True)
            starts.append(one_start(data_dir, env, first=n == 0))
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(table(["start", "ready s", "text search answered s", "image search answered s",
                 "first text ms", "first image ms"],
                [[n + 1, s["ready_s"], s["text_search_s"], s["image_search_s"], s["first_text_ms"],
                  s["first_image_ms"]] for n, s in enumerate(starts)]))
    write_results({"starts": starts, "compile_cache_existed": existing}, "startup")


if __name__ == "__main__":
    main()
