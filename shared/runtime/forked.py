"""Run a function in a forked child process, so that C code holding the GIL stalls nobody.

hnswlib's `save_index` holds the GIL for its whole run (hundreds of ms for a large graph), and
every other thread of the process (the shard workers' searches) waits meanwhile. Run in a forked
child instead, like Redis's BGSAVE: the child sees the parent's memory as it was at the fork
(copy-on-write), so a caller gets a consistent view by holding its own locks across the fork
only; the parent waits for the child in system calls, without the GIL. The child runs nothing
but the given function (no other thread exists there), reports an exception back through a
pipe, and leaves with `os._exit`, running no exit handlers of the parent's.
"""
from __future__ import annotations

import os
import pickle
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, NoReturn


class ForkFailed(OSError):
    """No child could be forked (out of memory, too many processes): nothing ran."""


class ForkedChildDied(RuntimeError):
    """The child ended without finishing or reporting an error (killed, out of memory...)."""


def run_forked(work: Callable[[], None], consistent: AbstractContextManager[Any] = nullcontext(),
               *, niceness: int = 0) -> None:
    """Run `work()` in a forked child and wait for it; its exception is raised here again.

    `consistent` (a lock's context, say) is held across the fork only: the child's view is the
    memory as it was at that moment. `niceness` is added to the child's (background work that
    should yield the CPU to this process's threads).
    """
    read_end, write_end = os.pipe()
    try:
        with consistent:
            try:
                pid = os.fork()
            except OSError as exc:
                raise ForkFailed(exc.errno, f"cannot fork: {exc.strerror}") from exc
            if pid == 0:
                _child(work, read_end, write_end, niceness)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read()
    _, status = os.waitpid(pid, 0)
    if failure:
        raise _unpickled(failure)
    code = os.waitstatus_to_exitcode(status)
    if code:
        ended = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise ForkedChildDied(f"forked child {pid} ended with {ended} before finishing")


def _child(work: Callable[[], None], read_end: int, write_end: int, niceness: int) -> NoReturn:
    code = 0
    try:
        os.close(read_end)
        if niceness:
            os.nice(niceness)
        work()
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        code = 1
        try:
            report = pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            report = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(report)
        except BaseException:  # noqa: BLE001 - the exit code still says it failed
            pass
    finally:
        os._exit(code)


def _unpickled(report: bytes) -> BaseException:
    try:
        exc = pickle.loads(report)
    except Exception as err:  # noqa: BLE001 - an exception class the parent cannot rebuild
        return ForkedChildDied(f"the forked child failed; its error could not be read back ({err})")
    return exc if isinstance(exc, BaseException) else ForkedChildDied(f"the forked child reported {exc!r}")
