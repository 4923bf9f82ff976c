"""A readers-writer lock: many readers at once, or one writer.

Writer-preferring: once a writer waits, readers that arrive later queue behind it, so a steady
stream of searches cannot starve a bulk writer. Readers are not starved either: when a writer
releases, every reader that was waiting at that moment is let in before the next writer may
start, so a reader waits for at most one write batch (plus those already holding the lock).
Not reentrant: a thread holding the lock must not acquire it again.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager


class RWLock:
    """Readers-writer lock; use `with lock.read():` or `with lock.write():`."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0            # readers holding the lock
        self._writer = False         # a writer holds the lock
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._write_releases = 0     # bumped on every write release
        self._admitted = 0           # readers waiting at the last write release, not yet in

    def _leave_read_queue(self, ticket: int) -> None:
        self._readers_waiting -= 1
        if ticket != self._write_releases:
            self._admitted -= 1

    def acquire_read(self) -> None:
        with self._cond:
            ticket = self._write_releases
            self._readers_waiting += 1
            try:
                while self._writer or (self._writers_waiting and ticket == self._write_releases):
                    self._cond.wait()
            except BaseException:  # interrupted: no writer may wait for this reader any more
                self._leave_read_queue(ticket)
                self._cond.notify_all()
                raise
            self._leave_read_queue(ticket)
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            if self._readers <= 0:
                raise RuntimeError("release_read without a matching acquire_read")
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers or self._admitted:
                    self._cond.wait()
            except BaseException:  # interrupted: readers held back by this writer may go
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            if not self._writer:
                raise RuntimeError("release_write without a matching acquire_write")
            self._writer = False
            self._write_releases += 1
            self._admitted = self._readers_waiting
            self._cond.notify_all()

    def read(self) -> AbstractContextManager[None]:
        """Hold the lock shared for the `with` block."""
        return _holding(self.acquire_read, self.release_read)

    def write(self) -> AbstractContextManager[None]:
        """Hold the lock exclusively for the `with` block."""
        return _holding(self.acquire_write, self.release_write)


@contextmanager
def _holding(acquire: Callable[[], None], release: Callable[[], None]) -> Iterator[None]:
    """`acquire()` before the `with` block, `release()` after it, however it ends."""
    acquire()
    try:
        yield
    finally:
        release()
