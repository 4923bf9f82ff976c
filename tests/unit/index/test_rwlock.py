"""Tests of the readers-writer lock that keeps hnswlib writes apart from searches."""
from __future__ import annotations

import threading
import time

from shared.index.rwlock import RWLock


def test_rwlock_excludes_writers_from_readers_and_each_other():
    lock = RWLock()
    state = {"readers": 0, "writers": 0, "max_readers": 0}
    guard = threading.Lock()
    violations: list[str] = []

    def read() -> None:
        for _ in range(200):
            with lock.read():
                with guard:
                    state["readers"] += 1
                    state["max_readers"] = max(state["max_readers"], state["readers"])
                    if state["writers"]:
                        violations.append("read during write")
                time.sleep(0.0002)
                with guard:
                    state["readers"] -= 1

    def write() -> None:
        for _ in range(100):
            with lock.write():
                with guard:
                    state["writers"] += 1
                    if state["writers"] > 1 or state["readers"]:
                        violations.append("write not exclusive")
                time.sleep(0.0002)
                with guard:
                    state["writers"] -= 1

    threads = [threading.Thread(target=f, daemon=True) for f in [read] * 4 + [write] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not violations
    assert state["max_readers"] > 1  # readers do share


def test_rwlock_prefers_writers_but_does_not_starve_readers():
    lock = RWLock()
    events: list[str] = []
    lock.acquire_read()
    writer_in = threading.Event()

    def writer() -> None:
        with lock.write():
            events.append("writer")
            writer_in.set()

    def late_reader() -> None:
        with lock.read():
            events.append("late reader")

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    time.sleep(0.05)  # the writer now waits for the first reader
    r = threading.Thread(target=late_reader, daemon=True)
    r.start()
    time.sleep(0.05)
    assert events == []  # the late reader queues behind the waiting writer
    lock.release_read()
    w.join(5)
    r.join(5)
    assert events == ["writer", "late reader"]

    # A writer that re-takes the lock in a loop still lets waiting readers in between batches.
    stop = threading.Event()

    def bulk_writer() -> None:
        while not stop.is_set():
            with lock.write():
                time.sleep(0.002)

    waits: list[float] = []

    def reader() -> None:
        for _ in range(20):
            started = time.monotonic()
            with lock.read():
                waits.append(time.monotonic() - started)

    b = threading.Thread(target=bulk_writer, daemon=True)
    b.start()
    r = threading.Thread(target=reader, daemon=True)
    r.start()
    r.join(5)
    starved = r.is_alive()
    stop.set()
    b.join(5)
    assert not starved, f"a reader got the lock only {len(waits)} times in 5 s"
    assert max(waits) < 0.5, waits
