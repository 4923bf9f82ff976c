"""The text progress bar that follows ingest jobs' counters on stderr (the client's `progress=True`, the CLI)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class ProgressBar:
    """A one-line text progress bar drawn from job counters: done/failed/total, items/s, ETA.

    The rate is measured over the last `window_s` seconds of counter readings. On a terminal
    the line is redrawn in place; elsewhere (logs, pipes) a line is written every
    `log_every_s` seconds, and the final line always.
    """

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    width: int = 30
    log_every_s: float = 10.0
    window_s: float = 15.0
    label: str = "ingest"
    _samples: list[tuple[float, int]] = field(default_factory=list)
    _start: float | None = None
    _last_draw: float = 0.0
    _tty: bool | None = None

    def _interval(self) -> float:
        if self._tty is None:
            self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        return 0.2 if self._tty else self.log_every_s

    def due(self) -> bool:
        """Whether an update now would be drawn (callers skip fetching counters otherwise)."""
        return time.monotonic() - self._last_draw >= self._interval()

    def rate(self) -> float:
        """Items per second over the recent readings."""
        if len(self._samples) < 2:
            return 0.0
        (t0, p0), (t1, p1) = self._samples[0], self._samples[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0

    def update(self, done: int, failed: int, total: int, state: str = "", final: bool = False) -> None:
        now = time.monotonic()
        processed = done + failed
        self._start = now if self._start is None else self._start
        self._samples.append((now, processed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.pop(0)
        if not final and now - self._last_draw < self._interval():
            return
        self._last_draw = now
        rate = self.rate()
        remaining = max(total - processed, 0)
        if final:
            timing = f"in {_fmt_duration(now - self._start)}"
        else:
            timing = f"ETA {_fmt_duration(remaining / rate if rate > 0 else math.inf)}"
        filled = int(round((processed / total if total else 1.0) * self.width))
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {processed}/{total}  "
                f"ok {done}  failed {failed}  {rate:.1f} items/s  {timing}" + (f"  {state}" if state else ""))
        if self._tty:
            self.stream.write("\r" + line + ("\n" if final else "\x1b[K"))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
