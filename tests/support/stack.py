"""The real stack (embedded Redis, API, encode, query and shard workers: the Procfile's processes)
on a private data dir and free loopback ports, for the stack tests and the service benchmarks."""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from shared.runtime.stack import Stack, free_port


def stack_env(data_dir: Path, **env: str) -> dict[str, str]:
    """This process's environment for a private stack on `data_dir`, with `env` overriding it:
    2 shard slots, free ports, no outside Redis."""
    full_env = dict(os.environ)
    full_env.pop("REDIS_URL", None)
    full_env.update({"MMSEARCH_DATA_DIR": str(data_dir), "MMSEARCH_PORT": str(free_port()),
                     "MMSEARCH_REDIS_PORT": str(free_port()), "MMSEARCH_SHARDS": "2",
                     "MMSEARCH_SEARCH_TIMEOUT_S": "30", "MMSEARCH_LOG_LEVEL": "INFO", **env})
    return full_env


@contextmanager
def running_stack(data_dir: Path, ready_timeout_s: float = 180, **env: str) -> Iterator[Stack]:
    """The whole stack on `data_dir` (its logs in `data_dir/logs`), ready to serve; stopped on the
    way out, also when this process gets SIGTERM."""
    stack = Stack(stack_env(data_dir, **env), log_dir=data_dir / "logs")
    # SIGTERM unwinds like Ctrl-C, so the finally below stops the stack's process groups.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        stack.start()
        stack.wait_ready(timeout_s=ready_timeout_s)
        yield stack
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
