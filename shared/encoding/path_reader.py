"""Reading a `{"path": ...}` image: only a regular file inside MMSEARCH_INGEST_ROOT.

The path is resolved again inside the ingest root (the API already did), and only regular
files are read: the file is checked with stat before it is opened, opened non-blocking
without following a final symlink, and checked again on the open descriptor, so a FIFO or a
device node never blocks or feeds a worker. Messages name the path relative to the root,
never an internal path.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from shared.encoding.source_errors import SourceError
from shared.runtime.config import Settings

READ_BYTES = 2**20  # per os.read


def _descriptor_path(fd: int) -> Path | None:
    """Where an open descriptor really points (Linux /proc), or None where unknown."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def read_path(path: str, settings: Settings) -> bytes:
    """The bytes of a regular file inside the ingest root (see the module docstring)."""
    if settings.ingest_root is None:
        raise SourceError("forbidden_path", "path images need MMSEARCH_INGEST_ROOT")
    root = settings.ingest_root.resolve()
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        raise SourceError("forbidden_path", "the path cannot be resolved") from None
    if target == root or not target.is_relative_to(root):
        raise SourceError("forbidden_path", "path is outside the ingest root")
    shown = str(target.relative_to(root))[:200]
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            raise SourceError("forbidden_path", f"{shown} is not a regular file")
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(target, flags)
    except FileNotFoundError:
        raise SourceError("not_found", f"no file {shown} in the ingest root") from None
    except OSError as exc:
        raise SourceError("forbidden_path", f"cannot open {shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        real = _descriptor_path(fd)
        if not stat.S_ISREG(info.st_mode) or (real is not None and not real.is_relative_to(root)):
            raise SourceError("forbidden_path", f"{shown} is not a regular file inside the ingest root")
        limit = settings.max_image_bytes
        if info.st_size > limit:
            raise SourceError("payload_too_large", f"{shown} is {info.st_size} bytes; at most {limit} allowed")
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, min(READ_BYTES, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise SourceError("payload_too_large", f"{shown} is larger than {limit} bytes")
        return bytes(data)
    except OSError as exc:
        raise SourceError("fetch_failed", f"cannot read {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)
