"""The one logging set-up of every mmsearch process, in text (default) or JSON lines.

`setup_logging(level)` installs one stderr handler on the root logger. Its format comes from
`MMSEARCH_LOG_FORMAT`: `text` (default, for people reading `make up`) or `json` (one JSON
object per line, for log shippers). Either way every record carries the context bound in the
current thread/task with `bind()` or `log_context()`: the API binds `request_id` for each
request, the workers bind `job_id` while they process a job's task. Text lines show them as
`[request_id=... job_id=...]`; JSON lines as fields.

JSON fields: `ts` (ISO 8601, UTC), `level`, `logger`, `pid`, `message`, then `request_id` /
`job_id` when bound, any `extra={...}` fields of the call, and `exc_info` (the formatted
traceback) for exceptions.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
from typing import Any, Iterator

FORMAT_ENV = "MMSEARCH_LOG_FORMAT"
CONTEXT_FIELDS = ("request_id", "job_id")

_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"mmsearch_{name}", default=None) for name in CONTEXT_FIELDS}

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "ctx", *CONTEXT_FIELDS}


def bind(**fields: str | None) -> dict[str, contextvars.Token]:
    """Bind context fields (request_id, job_id) for the current thread/task; None unbinds."""
    tokens = {}
    for name, value in fields.items():
        if name not in _context:
            raise ValueError(f"unknown log context field {name!r} (known: {', '.join(CONTEXT_FIELDS)})")
        tokens[name] = _context[name].set(None if value is None else str(value))
    return tokens


def unbind(tokens: dict[str, contextvars.Token]) -> None:
    """Restore what `bind` replaced."""
    for name, token in tokens.items():
        _context[name].reset(token)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    tokens = bind(**fields)
    try:
        yield
    finally:
        unbind(tokens)


def current_context() -> dict[str, str]:
    """The bound context fields that have a value."""
    return {name: var.get() for name, var in _context.items() if var.get() is not None}


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (record.request_id, record.job_id, record.ctx)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = current_context()
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name))
        present = [(n, getattr(record, n)) for n in CONTEXT_FIELDS if getattr(record, n, None)]
        record.ctx = (" [" + " ".join(f"{n}={v}" for n, v in present) + "]") if present else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")  # "Task ... received", "... succeeded in"


class TaskLinesFilter(logging.Filter):
    """Drops Celery's INFO lines about each task (received, succeeded with its result): one
    pair per task is noise at any real rate; warnings and errors about tasks still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name not in TASK_LOGGERS


def quiet_task_lines() -> None:
    """Leave Celery's per-task INFO lines out of this process's log (the handler of setup_logging)."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_mmsearch", False):
            handler.addFilter(TaskLinesFilter())


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s:%(ctx)s %(message)s"


def make_handler(fmt: str | None = None) -> logging.Handler:
    """A stderr handler in `fmt` ('text' or 'json'; default: MMSEARCH_LOG_FORMAT, else text)."""
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"{FORMAT_ENV} must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    handler._mmsearch = True  # type: ignore[attr-defined] - marks the handler installed here
    return handler


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Log to stderr at `level`, in text or JSON (`fmt`, else MMSEARCH_LOG_FORMAT).

    Calling it again replaces the handler it installed before; handlers others installed on
    the root logger (pytest's, say) are left alone.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mmsearch", False)]:
        root.removeHandler(old)
    root.addHandler(make_handler(fmt))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
