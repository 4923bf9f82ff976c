"""Worker commands: `python -m workers encode|shard|query` (one role per process)."""
from __future__ import annotations

import os

# numpy's OpenBLAS runs a thread per core that spins while it waits for work: the encode and the
# query worker computing their text model's tables at the same start took 12 CPU-s each instead of
# 0.7 on 2 cores. Each process here parallelises by its own threads instead. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import logging
import threading
import time
import warnings

from shared.store import queues
from shared.store.roles import READY, RoleReporter
from shared.runtime.allocator import hand_back_large_blocks, keep_freed_memory
from shared.runtime.logs import quiet_task_lines, setup_logging
from shared.runtime.redis_conn import wait_for_redis
from shared.runtime.config import Settings
from workers.resources import settings


log = logging.getLogger(__name__)


def warm_up_default_models(reporter: RoleReporter) -> None:
    """Load (and compile) the models of new collections now, so that no first request pays for
    it; each step is logged and reported (shared.store.roles)."""
    from shared.encoding.encoders import collection_encoder
    from shared.encoding.precision import resolve_precision

    def progress(stage: str) -> None:
        log.info("%s: %s", reporter.role, stage)
        reporter.stage(stage)

    cfg = settings()
    started = time.monotonic()
    try:
        collection_encoder(cfg.image_model, cfg.text_model, resolve_precision(None, cfg.precision),
                           cfg.encoder_setting).warm_up(progress)
    except Exception:  # a model that cannot load fails its items later, with a clear reason
        log.exception("could not preload the default models")
    log.info("%s: models ready in %.1f s", reporter.role, time.monotonic() - started)
    reporter.stage("starting the Celery consumer")


def report_start_up(role: str) -> RoleReporter:
    """Report this process's start-up stages under `role`; ready once its Celery consumer runs,
    withdrawn when it shuts down."""
    from celery.signals import worker_ready, worker_shutdown

    from workers.resources import redis_client

    reporter = RoleReporter(redis_client(), role)
    reporter.start()

    def ready(**_: object) -> None:
        reporter.stage(READY)
        log.info("%s: ready", role)

    def shutdown(**_: object) -> None:
        try:
            reporter.withdraw()
        except Exception as exc:  # Redis away: the entry lapses on its own
            log.warning("%s: start-up report not withdrawn (%s)", role, exc)

    worker_ready.connect(ready, weak=False)
    worker_shutdown.connect(shutdown, weak=False)
    return reporter


def root_warning_in_one_line(role: str) -> None:
    """Celery warns in a block of text, on every worker start, that it runs as root: say it in one
    line instead (mmsearch needs no privileges; it accepts JSON only, never pickle)."""
    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)
    if os.geteuid() == 0:
        log.warning("%s: running as root; mmsearch needs no privileges, so run it as an ordinary user "
                    "where you can", role)


def encode_concurrency(cfg: Settings) -> int:
    """Tasks in flight: two model batches' worth of tasks, so one decodes while another's images
    are in the model (at least 4)."""
    from shared.errors import ModelUnavailableError
    from shared.encoding.image_models import CPU_MODEL_BATCH, default_batch, select_device

    try:
        model_batch = default_batch(select_device(cfg.device))
    except ModelUnavailableError:  # MMSEARCH_DEVICE=cuda without a GPU: items fail saying so
        model_batch = CPU_MODEL_BATCH
    return max(4, 2 * -(-model_batch // cfg.encode_batch))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    enc = sub.add_parser("encode", help="encode items (queue 'encode')")
    enc.add_argument("-c", "--concurrency", type=int, default=None,
                     help="encode tasks in flight (threads; default: enough to keep two model batches queued)")
    shard = sub.add_parser("shard", help="own shard slots (each slot's logs and request list mms:searches:<slot>)")
    shard.add_argument("--slot", type=int, default=None,
                       help="the one slot to own or replicate (default: every free slot up to "
                            "MMSEARCH_SHARD_MAX_SLOTS, and those whose owner dies later; for a replica, "
                            "the slot with the fewest replicas)")
    shard.add_argument("--replica", action="store_true",
                       help="a read replica: follow the slot's logs and answer its searches, never write")
    shard.add_argument("-c", "--concurrency", type=int, default=4, help="request threads per slot")
    query = sub.add_parser("query", help="encode and fan out searches (queue 'query')")
    query.add_argument("-c", "--concurrency", type=int, default=8,
                       help="threads for synchronous searches, and as many for Celery's tasks (async searches, exports)")
    args = parser.parse_args(argv)
    if args.role in ("encode", "query"):
        keep_freed_memory()  # before any thread allocates: every thread then shares the tuned heap
    else:
        hand_back_large_blocks()  # before the index's arrays are allocated

    cfg = settings()
    setup_logging(cfg.log_level)
    if not cfg.log_tasks:
        quiet_task_lines()
    wait_for_redis(cfg)
    # Torch's OpenMP threads must not spin against the decode threads (docs/operations.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from workers.celery_app import app

    common = ["--without-gossip", "--without-mingle", "-l", cfg.log_level]
    if args.role in ("encode", "query"):
        root_warning_in_one_line(args.role)
    if args.role == "encode":
        warm_up_default_models(report_start_up("encode"))  # the model and task threads live here
        app.worker_main(["worker", "-Q", queues.ENCODE, "-P", "threads",
                         "-c", str(args.concurrency or encode_concurrency(cfg)),
                         "-n", f"encode-{os.getpid()}@%h", *common])
    elif args.role == "query":
        from celery.signals import worker_shutting_down

        from workers.query import start_request_threads
        from workers.reaper import Reaper
        from workers.resources import redis_client

        warm_up_default_models(report_start_up("query"))  # the thread pool runs in this process
        Reaper(redis_client(), cfg, celery=app).start()  # stuck jobs re-driven or failed (one query worker acts)
        stop = threading.Event()  # no more synchronous searches taken once Celery starts its shutdown
        worker_shutting_down.connect(lambda **_: stop.set(), weak=False)
        start_request_threads(args.concurrency, stop)
        app.worker_main(["worker", "-Q", queues.QUERY, "-P", "threads", "-c", str(args.concurrency),
                         "-n", f"query-{os.getpid()}@%h", *common])
    else:
        from workers import shard as shard_worker

        shard_worker.run(args.slot, args.concurrency, replica=args.replica)


if __name__ == "__main__":
    main()
