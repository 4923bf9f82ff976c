"""`shared.runtime.forked.run_forked`: the work runs in another process, on a copy of this one's memory,
and its failures come back here."""
from __future__ import annotations

import errno
import os
import signal
import threading
from pathlib import Path

import pytest

from shared.runtime.forked import ForkedChildDied, ForkFailed, run_forked


def test_the_work_runs_in_a_child_on_a_copy_of_the_memory(tmp_path: Path):
    seen: list[int] = []
    out = tmp_path / "pid"

    def work() -> None:
        seen.append(1)
        out.write_text(str(os.getpid()))

    run_forked(work)
    assert int(out.read_text()) != os.getpid()
    assert seen == []  # the child's changes stay in the child


def test_an_exception_in_the_child_is_raised_here_with_its_type():
    def work() -> None:
        raise KeyError("missing thing")

    with pytest.raises(KeyError, match="missing thing"):
        run_forked(work)


def test_an_exception_that_does_not_pickle_still_fails_the_call():
    class Local(Exception):  # defined in a function: pickle cannot find the class by name
        pass

    def work() -> None:
        raise Local("odd")

    with pytest.raises(RuntimeError, match="Local: odd"):
        run_forked(work)


def test_a_child_killed_before_finishing_is_an_error():
    with pytest.raises(ForkedChildDied, match=f"signal {int(signal.SIGKILL)}"):
        run_forked(lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_the_lock_is_held_across_the_fork_only():
    lock = threading.Lock()

    def work() -> None:
        assert lock.locked()  # the child's copy, taken while the parent held it

    run_forked(work, lock)
    assert not lock.locked()


def test_the_child_runs_at_the_niceness_asked_for(tmp_path: Path):
    out = tmp_path / "nice"
    run_forked(lambda: out.write_text(str(os.nice(0))), niceness=5)
    assert int(out.read_text()) == min(os.nice(0) + 5, 19)


def test_a_failed_fork_runs_nothing_and_leaks_no_descriptor(monkeypatch):
    def no_fork() -> int:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    ran: list[int] = []
    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", no_fork)
    with pytest.raises(ForkFailed, match="cannot fork"):
        run_forked(lambda: ran.append(1))
    assert ran == [] and len(os.listdir("/proc/self/fd")) == before
