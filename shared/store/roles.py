"""What each encode and query worker process is doing while it starts, and whether it serves.

Each such process writes one field of the hash `mms:roles` (its process id -> JSON: role,
stage, since, ready, expires) at each start-up stage ("loading image model efficientnet_lite0",
"compiling image model for batch 8", ...) and once ready, and renews it every
`HEARTBEAT_S` seconds; a field past its expiry belongs to a process that died and is ignored
(and dropped by the next writer). A supervisor that sees a process die removes its entry at once
(`forget`); and a reader that shares the process's machine and process-id namespace (the
entry's `machine`) sees a killed process gone at once, without waiting for its expiry: its `pid`
no longer exists. The API's /readyz and its gate on searches and ingests read
the hash in one round trip: a role counts when one of its processes is ready; otherwise the
reason names the slowest starter's stage and how long it has been at it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import redis

from shared.store import keys

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
EXPIRY_S = 10.0  # a process silent this long is gone
READY = "ready"
ROLE_NAMES = {"encode": "encode worker", "query": "query worker"}


def this_machine() -> str:
    """Where a process id means the same process: host name and pid namespace ("" where that
    cannot be told, and then no reader checks a pid)."""
    try:
        return f"{socket.gethostname()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _gone(machine: str, pid: int) -> bool:
    """Whether the process `pid` of `machine` is known to have exited (False when not this machine's)."""
    if not machine or machine != this_machine():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        pass
    return False


@dataclass(frozen=True)
class RoleProcess:
    """One worker process's latest report."""

    process: str
    role: str
    stage: str
    since: float
    ready: bool
    expires: float


def process_id(role: str, pid: int) -> str:
    """The field of a worker process in `mms:roles`."""
    return f"{role}-{socket.gethostname()}-{pid}"


def forget(r: redis.Redis, role: str, pid: int) -> None:
    """Remove the entry of a process known to have died (its supervisor restarts it)."""
    r.hdel(keys.ROLES, process_id(role, pid))


class RoleReporter:
    """The reports of this process, playing `role`; `start` begins the heartbeat."""

    def __init__(self, r: redis.Redis, role: str, process: str | None = None, pid: int | None = None) -> None:
        self.r = r
        self.role = role
        self.pid = os.getpid() if pid is None else pid
        self.machine = this_machine()
        self.process = process or process_id(role, self.pid)
        self.stage_name = "starting"
        self.since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def stage(self, stage: str) -> None:
        """Report a new start-up stage (READY once it serves). Never raises: while Redis is
        away the report waits for the next heartbeat (and the old one lapses meanwhile)."""
        self.stage_name, self.since = stage, time.time()
        self._write()

    def _write(self) -> None:
        now = time.time()
        body = {"role": self.role, "stage": self.stage_name, "since": self.since,
                "ready": self.stage_name == READY, "expires": now + EXPIRY_S, "machine": self.machine,
                "pid": self.pid}
        try:
            self.r.hset(keys.ROLES, self.process, json.dumps(body))
        except redis.exceptions.RedisError as exc:
            log.warning("%s: start-up stage %r not reported (%s)", self.role, self.stage_name, exc)

    def start(self) -> None:
        """Write the current stage now and again every HEARTBEAT_S seconds, in a daemon thread."""
        self._write()
        self._thread = threading.Thread(target=self._beat, name="role-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()
            try:
                drop_expired(self.r)
            except redis.exceptions.RedisError:
                pass  # Redis away: dropped on a later beat

    def withdraw(self) -> None:
        """Stop the heartbeat and remove this process's entry (a clean stop)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=HEARTBEAT_S)  # so no beat writes the entry back
        self.r.hdel(keys.ROLES, self.process)


def processes(r: redis.Redis, now: float | None = None) -> list[RoleProcess]:
    """The live processes' latest reports (expired ones and those of exited processes left out)."""
    now = time.time() if now is None else now
    out = []
    for process, raw in r.hgetall(keys.ROLES).items():
        try:
            body = json.loads(raw)
            entry = RoleProcess(process.decode(), str(body["role"]), str(body["stage"]),
                                float(body["since"]), bool(body["ready"]), float(body["expires"]))
            gone = _gone(str(body.get("machine", "")), int(body.get("pid", 0)))
        except (ValueError, KeyError, TypeError):
            continue
        if entry.expires > now and not gone:
            out.append(entry)
    return out


def drop_expired(r: redis.Redis) -> None:
    """Remove the entries of processes that stopped reporting."""
    now = time.time()
    live = {p.process for p in processes(r, now)}
    stale = [f for f in r.hkeys(keys.ROLES) if f.decode() not in live]
    if stale:
        r.hdel(keys.ROLES, *stale)


def not_ready(entries: list[RoleProcess], roles: tuple[str, ...], now: float | None = None) -> dict[str, str]:
    """role -> why it cannot serve yet, for each of `roles` without a ready process."""
    now = time.time() if now is None else now
    reasons = {}
    for role in roles:
        mine = [e for e in entries if e.role == role]
        if any(e.ready for e in mine):
            continue
        name = ROLE_NAMES.get(role, role)
        if not mine:
            reasons[role] = f"{name}: none running"
        else:
            oldest = min(mine, key=lambda e: e.since)
            reasons[role] = f"{name}: {oldest.stage}, {now - oldest.since:.0f} s"
    return reasons
