"""Runs the whole stack on one machine from the Procfile (what `make up` starts).

Each Procfile role runs as its own process group (shard workers `MMSEARCH_SHARDS` times, each
owning one slot, and `MMSEARCH_SHARD_REPLICAS` read replicas per slot); the embedded Redis is
started first and waited for when no `REDIS_URL` is set. Ctrl-C (or SIGTERM) stops the workers gracefully (SIGTERM
to each process: an encode or query worker's Celery warm shutdown finishes the task in hand, a
shard owner stops serving its slot's requests and snapshots), then Redis, so the next start loads what this one had. The end-to-end tests drive the same class
to start, kill and restart single processes.
"""
from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import requests

from shared.runtime.config import Settings
from shared.runtime.logs import setup_logging

if TYPE_CHECKING:
    from redis import Redis

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "Procfile"
WORKER_ROLES = ("api", "encode", "shard", "query")
_ELAPSED = re.compile(r", \d+ s\b")  # how long a role has been at its stage, in /readyz's reasons
PROGRESS_EVERY_S = 15.0  # `mmsearch up` repeats what it waits for this often, changed or not
START_RESTARTS = 5  # processes that may exit (and be restarted) during start-up before giving up
# Roles the Procfile does not list (honcho would start one of each by default).
EXTRA_ROLES = {"replica": "python -m workers shard --replica"}


def free_port() -> int:
    """A TCP port that nothing on loopback listens on right now (for private stacks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    roles = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            roles[name.strip()] = command.strip()
    return roles


class Stack:
    """The processes of one deployment, each a (name -> Popen) entry like `shard.2`."""

    def __init__(self, env: Mapping[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        # The Procfile's `python`/`gunicorn` are this interpreter's.
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.settings = Settings.from_env(self.env)
        self.roles = {**EXTRA_ROLES, **read_procfile()}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def command(self, name: str) -> str:
        """The command of process `name`: its role's. `shard.<n>` owns and `replica.<n>` follows
        slot (n - 1) mod MMSEARCH_SHARDS alone, restarted or not (one process per slot); a bare
        `shard` takes every free slot, as under honcho (workers.slot_keeper)."""
        role, _, n = name.partition(".")
        command = self.roles[role]
        if role in ("shard", "replica") and n:
            command += f" --slot {(int(n) - 1) % self.settings.shard_slots}"
        return command

    def start_process(self, name: str) -> subprocess.Popen:
        """Start (or restart) the process `name` = `<role>` or `<role>.<n>`."""
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
        self._forget(name)
        proc = subprocess.Popen(["bash", "-c", f"exec {self.command(name)}"], cwd=ROOT, env=self.env,
                                stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    @functools.cached_property
    def redis(self) -> Redis:
        """A client of the stack's Redis, made once (readiness checks poll it)."""
        from redis import Redis as RedisClient

        from shared.runtime.redis_conn import redis_url

        return RedisClient.from_url(redis_url(self.settings, self.env))

    def _forget(self, name: str) -> None:
        """Drop the start-up report of the dead process `name` replaces (shared.store.roles), so
        that readiness waits for the new one."""
        old = self.procs.get(name)
        role = name.split(".")[0]
        if old is None or old.poll() is None or role not in ("encode", "query"):
            return
        from redis.exceptions import RedisError

        from shared.store import roles

        try:
            roles.forget(self.redis, role, old.pid)
        except RedisError:
            pass  # the entry lapses within roles.EXPIRY_S

    def names(self) -> list[str]:
        names = ["api", "encode", "query"]
        names += [f"shard.{i + 1}" for i in range(self.settings.shard_slots)]
        names += [f"replica.{i + 1}" for i in range(self.settings.shard_slots * self.settings.shard_replicas)]
        return names

    def start_redis(self) -> None:
        """Start the embedded Redis (without `REDIS_URL`) and wait until it answers."""
        if not self.settings.redis_url:
            from shared.runtime.embedded_redis import wait_until_up
            from shared.runtime.redis_conn import embedded_port

            wait_until_up(embedded_port(self.env), proc=self.start_process("redis"), data_dir=self.settings.data_dir)

    def start(self) -> None:
        try:
            self.settings.refuse_open_listen()
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        self.start_redis()
        for name in self.names():
            self.start_process(name)

    def signal(self, name: str, sig: int = signal.SIGKILL, group: bool = True) -> None:
        """Send `sig` to the process `name` (with `group`, to every process of its group: a
        SIGKILL then takes its children too, gunicorn's workers say, as a machine crash would)."""
        proc = self.procs[name]
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            proc.wait()

    def waiting_for(self) -> str | None:
        """What the stack still waits for (None: ready): the API's /readyz answers 200 (Redis,
        an encode and a query worker whose models are loaded and whose consumers run, every
        slot of every collection served) and every shard slot has its owner."""
        from redis.exceptions import RedisError

        from shared.store import keys

        try:
            resp = requests.get(f"{self.api_url}/readyz", timeout=2)
        except requests.RequestException:
            return "the API to listen"
        if resp.status_code != 200:
            try:
                return resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                return f"the API's /readyz ({resp.status_code})"
        try:
            owned = [self.redis.exists(keys.slot_owner(s)) for s in range(self.settings.shard_slots)]
        except RedisError:
            return "Redis"
        unowned = [s for s, held in enumerate(owned) if not held]
        return f"owners of shard slot(s) {unowned}" if unowned else None

    def wait_ready(self, timeout_s: float | None = 120.0, progress: Callable[[str], None] | None = None,
                   restarts: int = 0) -> None:
        """Until `waiting_for` is None. `progress` hears what the stack waits for whenever that
        changes (and every PROGRESS_EVERY_S). A process that exits is restarted up to `restarts`
        times in all, after which RuntimeError; TimeoutError after `timeout_s` (None: never)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        started = time.monotonic()
        said, said_at = None, 0.0
        while deadline is None or time.monotonic() < deadline:
            for name, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    if restarts <= 0:
                        raise RuntimeError(f"process {name} exited with code {proc.returncode}")
                    restarts -= 1
                    if progress is not None:
                        progress(f"{name} exited with code {proc.returncode}; restarting it")
                    self.start_process(name)
            waiting = self.waiting_for()
            if waiting is None:
                return
            now = time.monotonic()
            stages = _ELAPSED.sub("", waiting)  # a new stage is news; a second more at one is not
            if progress is not None and (stages != said or now - said_at >= PROGRESS_EVERY_S):
                progress(f"waiting for {waiting} ({now - started:.0f} s)")
                said, said_at = stages, now
            time.sleep(0.25)
        raise TimeoutError(f"the stack was not ready within {timeout_s}s: waiting for {self.waiting_for()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM every worker (then Redis last), SIGKILL what is left after the timeout.

        SIGTERM goes to each process itself, not its group: a Celery worker's main process then
        waits for its pool to finish the task in hand (warm shutdown) instead of losing the pool
        process to the signal first."""
        order = [n for n in self.procs if n != "redis"] + (["redis"] if "redis" in self.procs else [])
        for group in ([n for n in order if n != "redis"], ["redis"]):
            for name in group:
                if name in self.procs and self.procs[name].poll() is None:
                    self.signal(name, signal.SIGTERM, group=False)
            deadline = time.monotonic() + timeout_s
            for name in group:
                if name not in self.procs:
                    continue
                try:
                    self.procs[name].wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.signal(name, signal.SIGKILL)


def main() -> None:
    stack = Stack()
    setup_logging(stack.settings.log_level)
    stopping = False

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        nonlocal stopping
        if not stopping:
            stopping = True
            print("\nmmsearch: stopping...", flush=True)
            stack.stop()
            sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    stack.start()
    try:
        # However long the models take to load and compile: stop only for a crash loop.
        stack.wait_ready(timeout_s=None, progress=lambda line: print(f"mmsearch: {line}", flush=True),
                         restarts=START_RESTARTS)
    except RuntimeError as exc:
        print(f"mmsearch: {exc}; stopping (a process keeps crashing: see its log above)", file=sys.stderr)
        stack.stop()
        sys.exit(1)
    print(f"mmsearch is up: API {stack.api_url}/v1  web page {stack.api_url}/  "
          f"OpenAPI {stack.api_url}/openapi.json  (Ctrl-C stops)\n"
          f"mmsearch: in another terminal, put the client on your PATH with "
          f"'export PATH=\"{Path(sys.executable).parent}:$PATH\"', then try 'mmsearch demo'", flush=True)
    while True:
        for name, proc in stack.procs.items():
            if proc.poll() is not None and not stopping:
                print(f"mmsearch: {name} exited with code {proc.returncode}; restarting it", flush=True)
                stack.start_process(name)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
