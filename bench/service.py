"""Shared helpers of the service benchmarks (`bench.ingest`, `bench.search`).

- `running_stack`: the real stack (`shared.runtime.stack.Stack`, i.e. the Procfile's processes) on a
  temporary data dir and free ports, stopped again however the benchmark ends (SIGTERM included);
- `Service`: a small HTTP client of that stack (collections, multipart ingest, job polling,
  searches) plus its Redis client and log folder;
- `TaskLog`: Celery's "Task <name>[<id>] received / ignored / succeeded in <s>s" lines in the
  stack's logs, read between two marks, to see where the time of a phase went;
- `rss_bytes`: a process's resident memory (the shard workers' through `Service.shard_rss`);
- the benchmark photos as in-memory JPEGs, latency percentiles, plain-text tables and
  `result_path`, where a run writes its JSON by default (read by `bench.report`), and
  `write_results`, which writes it there and prints it as the run's last line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import redis
import requests

from bench.datasets import opencv_photos
from bench.photos import Photo, foolbox_photos, skimage_photos
from shared.runtime.stack import Stack
from tests.support.stack import running_stack as support_stack

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FINAL_STATES = ("succeeded", "completed_with_errors", "failed", "cancelled")


# -- the stack ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    """One item of a multipart ingest request."""

    id: str
    image: bytes
    text: str | None = None


@dataclass(frozen=True)
class JobTiming:
    """When a polled job had every item counted (encoded and logged) and when it went final."""

    counted_s: float
    final_s: float
    body: dict[str, Any]


class Service:
    """HTTP client of a running stack (one `requests.Session` for the calls made here)."""

    def __init__(self, stack: Stack, data_dir: Path) -> None:
        from shared.runtime.redis_conn import redis_url

        self.stack = stack
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.url = f"{stack.api_url}/v1"
        self.session = requests.Session()
        self.redis = redis.Redis.from_url(redis_url(stack.settings, stack.env))

    def _check(self, resp: requests.Response, status: int) -> dict[str, Any]:
        if resp.status_code != status:
            raise RuntimeError(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:500]}")
        return resp.json()

    def create_collection(self, name: str, shards: int) -> dict[str, Any]:
        resp = self.session.post(f"{self.url}/collections", json={"name": name, "shards": shards}, timeout=60)
        return self._check(resp, 201)

    def collection(self, name: str) -> dict[str, Any]:
        return self._check(self.session.get(f"{self.url}/collections/{name}", timeout=60), 200)

    def find_collection(self, name: str) -> dict[str, Any] | None:
        """The collection, or None when there is none of that name."""
        resp = self.session.get(f"{self.url}/collections/{name}", timeout=60)
        return None if resp.status_code == 404 else self._check(resp, 200)

    def jobs_of(self, name: str, kind: str) -> list[dict[str, Any]]:
        """The listed jobs of kind `kind` on collection `name`, newest first (one page of 100)."""
        resp = self.session.get(f"{self.url}/jobs", params={"collection": name, "kind": kind, "limit": 100}, timeout=60)
        return self._check(resp, 200)["jobs"]

    def post_items(self, name: str, items: Sequence[Upload]) -> str:
        """One multipart ingest request; the job id."""
        files = [("image", (f"{i}.jpg", item.image, "application/octet-stream")) for i, item in enumerate(items)]
        meta = [{"id": item.id, **({"text": item.text} if item.text else {})} for item in items]
        resp = self.session.post(f"{self.url}/collections/{name}/items", files=files,
                                 data={"items": json.dumps(meta)}, timeout=300)
        return self._check(resp, 202)["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.session.get(f"{self.url}/jobs/{job_id}", timeout=60), 200)

    def wait_jobs(self, job_ids: Sequence[str], timeout_s: float, poll_s: float = 0.05) -> dict[str, JobTiming]:
        """Poll the jobs until every one is final; perf_counter times of 'all counted' and 'final'.
        One job is polled at a time, in the order given (the order they finish in, roughly), and
        the next one at once when it is final: one request per poll, not one per job, so that the
        polling takes little from the service it measures."""
        counted: dict[str, float] = {}
        done: dict[str, JobTiming] = {}
        pending = list(job_ids)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} job(s) not final within {timeout_s}s")
            job_id = pending[0]
            body = self.job(job_id)
            now = time.perf_counter()
            if body["done"] + body["failed"] >= body["total"]:
                counted.setdefault(job_id, now)
            if body["state"] in FINAL_STATES:
                done[job_id] = JobTiming(counted.get(job_id, now), now, body)
                pending.pop(0)
                continue
            time.sleep(poll_s)
        return done

    def ingest(self, name: str, items: Sequence[Upload], timeout_s: float = 600) -> None:
        """Ingest and wait; raises unless every item succeeded."""
        for timing in self.wait_jobs([self.post_items(name, items)], timeout_s).values():
            if timing.body["state"] != "succeeded":
                raise RuntimeError(f"ingest into {name} ended {timing.body['state']}: {timing.body['errors'][:3]}")

    def search(self, session: requests.Session, name: str, *, text: str | None = None,
               image: bytes | None = None, k: int = 10, weights: dict[str, float] | None = None,
               filter: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
        """One synchronous search (multipart when it has an image); (seconds, response body)."""
        url = f"{self.url}/collections/{name}/search"
        options = {name: value for name, value in (("weights", weights), ("filter", filter)) if value}
        t0 = time.perf_counter()
        if image is None:
            resp = session.post(url, json={"text": text, "k": k, **options}, timeout=60)
        else:
            form = {"k": str(k), **({"text": text} if text else {}),
                    **{name: json.dumps(value) for name, value in options.items()}}
            resp = session.post(url, files=[("image", ("query.jpg", image, "application/octet-stream"))],
                                data=form, timeout=60)
        elapsed = time.perf_counter() - t0
        return elapsed, self._check(resp, 200)

    def restart_shard_workers(self, timeout_s: float = 180) -> None:
        """Stop every shard worker (SIGTERM: warm shutdown, snapshot, lease released; SIGKILL after
        60 s) and start it again; returns once the stack is ready."""
        names = [name for name in self.stack.procs if name.startswith("shard.")]
        for name in names:
            self.stack.signal(name, signal.SIGTERM, group=False)
        for name in names:
            try:
                self.stack.procs[name].wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.stack.signal(name, signal.SIGKILL)
            self.stack.start_process(name)
        self.stack.wait_ready(timeout_s)

    def shard_rss(self) -> dict[str, int]:
        """Resident bytes of each shard worker process (`shard.<n>`; read replicas not included)."""
        return {name: rss_bytes(proc.pid) for name, proc in self.stack.procs.items() if name.startswith("shard.")}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each stack process has used so far, with its descendants (gunicorn's
        workers, redis-server, snapshot children), and this process's as `bench`."""
        children: dict[int, list[int]] = {}
        own: dict[int, float] = {}
        for pid, parent, seconds in _process_stats():
            children.setdefault(parent, []).append(pid)
            own[pid] = seconds
        used = {"bench": _own_cpu_seconds()}
        for name, proc in self.stack.procs.items():
            tree, total = [proc.pid], 0.0
            while tree:
                pid = tree.pop()
                total += own.get(pid, 0.0)
                tree += children.get(pid, [])
            used[name] = total
        return used


def machine_idle_seconds() -> float:
    """Idle (and I/O wait) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[3] + fields[4]) / os.sysconf("SC_CLK_TCK")


def _process_stats() -> list[tuple[int, int, float]]:
    """(pid, parent pid, CPU seconds incl. its reaped children) of every process."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats.append((int(entry), int(fields[1]), sum(int(x) for x in fields[11:15]) / ticks))
    return stats


def _own_cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@contextmanager
def running_stack(slots: int = 2, env: Mapping[str, str] | None = None, ready_timeout_s: float = 240,
                  data_dir: Path | None = None) -> Iterator[Service]:
    """The whole stack (tests.support.stack) with `slots` shard workers on `data_dir`, kept, or
    on a temporary data dir, deleted on the way out."""
    kept = data_dir is not None
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # The benchmarks read task runtimes from Celery's "succeeded in" lines (TaskLog).
        with support_stack(data_dir, ready_timeout_s, MMSEARCH_SHARDS=str(slots), MMSEARCH_LOG_TASKS="true",
                           MMSEARCH_SEARCH_TIMEOUT_S="60", **(env or {})) as stack:
            yield Service(stack, data_dir)
    finally:
        if not kept:
            shutil.rmtree(data_dir, ignore_errors=True)


# -- task timings from the workers' logs --------------------------------------------------------

_TASK_LINE = re.compile(
    rb"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \[\d+\] \S+: [^\n]*?Task (\S+)\[([^\]]+)\] "
    rb"(received|ignored|succeeded in ([0-9.eE+-]+)s)", re.MULTILINE)


@dataclass(frozen=True)
class TaskEvent:
    """One Celery log line about a task: `event` is received, ignored or succeeded."""

    at: float                 # the line's timestamp, seconds since the epoch (ms resolution)
    process: str              # the stack's process that logged it (its log file's stem: "shard.1")
    task: str
    task_id: str
    event: str
    runtime_s: float | None   # Celery's own runtime, on "succeeded" lines


class TaskLog:
    """Celery's task lines (received / ignored / "succeeded in <s>s") that the stack's workers
    logged between `mark()` and `since_mark()`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.offsets: dict[Path, int] = {}

    def mark(self) -> None:
        self.offsets = {p: p.stat().st_size for p in self.log_dir.glob("*.log")}

    def since_mark(self) -> list[TaskEvent]:
        events = []
        for path in sorted(self.log_dir.glob("*.log")):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                for m in _TASK_LINE.finditer(f.read()):
                    stamp = datetime.strptime(m[1].decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    events.append(TaskEvent(stamp, path.stem, m[2].decode(), m[3].decode(),
                                            m[4].decode().split()[0], float(m[5]) if m[5] else None))
        return sorted(events, key=lambda e: e.at)


def runtimes(events: Sequence[TaskEvent]) -> dict[str, list[float]]:
    """task name -> Celery's runtimes (seconds) of its successful runs."""
    out: dict[str, list[float]] = {}
    for e in events:
        if e.runtime_s is not None:
            out.setdefault(e.task, []).append(e.runtime_s)
    return out


# -- photos ------------------------------------------------------------------------------------

def real_photos() -> list[Photo]:
    """foolbox's ImageNet photos, scikit-image's photos and opencv-doc's natural photos
    (the last only after `make bench-data`)."""
    return foolbox_photos() + skimage_photos() + opencv_photos()


def jpeg_with_long_side(data: bytes, long_side: int, quality: int = 90) -> bytes:
    """The image scaled so its longer side is `long_side` px, re-encoded as JPEG."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    scale = long_side / max(bgr.shape[:2])
    size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
    bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the JPEG")
    return buf.tobytes()


# -- figures -----------------------------------------------------------------------------------

def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2),
            "p99_ms": round(float(p99), 2), "mean_ms": round(float(ms.mean()), 2)}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns right-aligned except the first; None shows as "-"."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def result_path(bench: str) -> Path:
    """bench/results/<bench>-<UTC time>.json: where a run writes its JSON unless told otherwise."""
    return RESULTS_DIR / f"{bench}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"


def write_results(summary: dict[str, Any], bench: str, path: Path | None = None) -> None:
    """Write a run's figures as indented JSON to `path` (default: `result_path(bench)`), say
    where, and print them as one JSON line, the last line of the run's output."""
    path = path or result_path(bench)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, sort_keys=True, indent=1) + "\n")
    print(f"\nresults written to {path}")
    sys.stdout.flush()
    print(json.dumps(summary, sort_keys=True))
